"""Tests for the command line: ``jaxsep info`` via ``main`` and via ``python -m jaxsep``;
what ``main`` prints when CIFAR-10 can be neither found nor downloaded; ``jaxsep train`` /
``eval`` / ``sweep`` in this process (they reuse the session's compiled steps,
conftest.reference_run): a stop and a resume, a stop before the first step, and bad input at
every entry point, on the command line and through the API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import (
    SendSignal,
    add_hooks,
    assert_same_state,
    cli_main,
    config_argv,
    metric_lines,
    tiny_config,
)
from jaxsep import cli

ROOT = Path(__file__).resolve().parents[1]


def totals(text: str) -> tuple[int, int]:
    params = re.search(r"Total params: ([\d,]+)", text).group(1)
    macs = re.search(r"Total multiply-adds: ([\d,]+)", text).group(1)
    return int(params.replace(",", "")), int(macs.replace(",", ""))


def test_info_prints_the_table_and_totals(capsys):
    assert cli.main(["info", "mobilenet_v1", "--variant", "cifar", "--width", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "Input shape: (1, 32, 32, 3)" in out
    assert "blocks.0.spatial.conv" in out and "DepthwiseConv" in out
    params, _ = totals(out)
    assert params == 215_642  # width 0.25: 470,072 with 1000 classes; 256 * 990 + 990 fewer


def test_info_options_reach_the_model(capsys):
    assert cli.main(["info", "mobilenet_v1", "--conv", "standard", "--resolution", "160"]) == 0
    out = capsys.readouterr().out
    assert "Input shape: (1, 160, 160, 3)" in out
    assert totals(out)[0] == 29_294_088
    assert cli.main(["info", "shufflenet_v1", "--groups", "8", "--variant", "cifar"]) == 0
    assert "Input shape: (1, 32, 32, 3)" in capsys.readouterr().out


def test_info_errors(capsys):
    assert cli.main(["info", "mobilenet_v1", "--conv", "grouped"]) == 2
    assert "conv='grouped' needs groups" in capsys.readouterr().err
    assert cli.main(["info", "mobilenet_v2", "--conv", "standard"]) == 2
    assert "mobilenet_v2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "resnet50"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main([])


def test_console_script_entry_point():
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["jaxsep"] == "jaxsep.cli:main"


def test_python_dash_m_prints_the_paper_totals():
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    result = subprocess.run(
        [sys.executable, "-m", "jaxsep", "info", "mobilenet_v1", "--variant", "imagenet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    params, macs = totals(result.stdout)
    assert params == 4_231_976  # 4.21 M without BatchNorm's scale and bias: the paper's 4.2 M
    assert macs == pytest.approx(569e6, rel=0.02)
    assert "Params without normalization: 4,210,088" in result.stdout


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("verbose", [None, "jaxsep --verbose train", "jaxsep train --verbose"])
def test_train_without_data_or_network_says_so_in_one_line(monkeypatch, tmp_path, capsys, verbose):
    monkeypatch.setenv("JAXSEP_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    args = ["train", "--model", "mobilenet_v1", "--width", "0.25", "--out", str(tmp_path / "run")]
    if verbose == "jaxsep --verbose train":
        args = ["--verbose", *args]
    elif verbose == "jaxsep train --verbose":
        args = [*args, "--verbose"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("jaxsep train: error: could not download CIFAR-10")
    assert "Temporary failure in name resolution" in lines[-1]
    assert str(tmp_path / "cache") in lines[-1]
    assert "--dataset synthetic" in lines[-1] and "--data-dir" in lines[-1]
    if verbose is None:
        assert len(lines) == 1 and "Traceback" not in err
    else:
        assert "Traceback" in err and "URLError" in err and "DataUnavailableError" in err


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    def crash(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_run_info", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info", "mobilenet_v1"])


# --------------------------------------------------------------------------------------------
# train and eval


def test_train_sigterm_resume_and_eval(reference_run, tmp_path, monkeypatch, capsys):
    from jaxsep.train import TrainConfig

    out = tmp_path / "run"
    argv = ["train", *config_argv(tiny_config(out))]
    assert TrainConfig(**{**tiny_config(None).to_dict(), "out": str(out)}) == tiny_config(out)
    with monkeypatch.context() as patch:
        add_hooks(patch, SendSignal(10))  # a real SIGTERM after epoch 2, step 2
        assert cli_main(argv) == 143
    assert ("jaxsep train: SIGTERM: stopped at epoch 2, step 2 of 8; checkpoint saved to "
            f"{out / 'checkpoints' / '10'}; rerun the same command to resume") in (
        capsys.readouterr().err)
    assert cli_main(argv + ["--resume"]) == 0
    assert metric_lines(out) == metric_lines(reference_run[0])
    assert_same_state(out, reference_run[0])

    capsys.readouterr()
    assert cli_main(["eval", "--run", str(out)]) == 0
    best = json.loads((out / "summary.json").read_text())["best_test_accuracy"]
    printed = capsys.readouterr().out
    assert f"test accuracy {100 * best:.2f}%" in printed and "best checkpoint" in printed
    assert cli_main(["eval", "--run", str(out), "--which", "last", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 2 and result["checkpoint"] == str(out / "checkpoints" / "16")


def test_train_stopped_before_its_first_step(reference_run, tmp_path, monkeypatch, capsys):
    """SIGTERM while compiling: one line saying so, exit 143 and nothing saved; --resume then
    says there is nothing to resume (exit 2); the same command starts the run afresh. The
    help says what 143 means in both cases."""
    from jaxsep.train import loop, run_folder

    out = tmp_path / "run"
    argv = ["train", *config_argv(tiny_config(out))]
    compiler_options = loop.compiler_options

    def signalled():  # called just before the train step compiles
        os.kill(os.getpid(), signal.SIGTERM)
        return compiler_options()

    with monkeypatch.context() as patch:
        patch.setattr(loop, "compiler_options", signalled)
        assert cli_main(argv) == 143
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        "jaxsep train: stopped by SIGTERM before the first step; nothing to save; rerun the "
        "same command to start (without --resume: there is no checkpoint to resume from)")
    assert "received SIGTERM: stopping before the first step (nothing to save yet)" in err
    assert not run_folder.has_checkpoint(out)
    assert cli_main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("jaxsep train: error: resume: there is no "
                                               "checkpoint in")
    assert "rerun without --resume" in err[0]
    assert cli_main(argv) == 0
    assert metric_lines(out) == metric_lines(reference_run[0])
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "stopped before the first step, nothing was saved" in help_text
    assert "rerun without --resume to start it afresh" in help_text


# --------------------------------------------------------------------------------------------
# Bad input: every entry point reports it the same way, before any compute. The command line:
# exit status 2 and one line "jaxsep COMMAND: error: ...", no traceback. The API: a named
# ValueError (SweepError is one) or TypeError.

_SWEEP = """
[sweep]
name = "bad"
[base]
model = "mobilenet_v1"
{extra}
[presets.cpu]
"""


def _bad_inputs(tmp_path: Path, reference: Path) -> dict[str, tuple[list[str], str]]:
    blocker = tmp_path / "file"
    blocker.write_text("")
    no_best = tmp_path / "no_best"
    no_best.mkdir()
    (no_best / "config.json").write_text((reference / "config.json").read_text())
    for name, extra in (("unknown", "learning_rate = 0.1"), ("invalid", "width = 0")):
        (tmp_path / f"{name}.toml").write_text(_SWEEP.format(extra=extra))
    (tmp_path / "broken.toml").write_text("[sweep\n")
    runs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    return {
        "train-field": (["train", "--width", "0", "--out", str(tmp_path / "a")],
                        "TrainConfig: width must be > 0, but got 0.0"),
        "train-out": (["train", "--dataset", "synthetic", "--out", str(blocker / "run")],
                      "TrainConfig: out must be a writable folder"),
        "train-model": (["train", "--model", "mobilenet_v2", "--conv", "standard",
                         "--dataset", "synthetic", "--out", str(tmp_path / "b")],
                        "TrainConfig: cannot build model 'mobilenet_v2'"),
        "train-data": (["train", "--data-dir", "/nonexistent", "--out", str(tmp_path / "c")],
                       "TrainConfig: data_dir '/nonexistent' does not exist"),
        "train-changed": (["train", *config_argv(tiny_config(reference, lr=0.1))],
                          "already holds a run with a different configuration (lr: 0.05 "
                          "(saved) vs 0.1 (given))"),
        "eval-missing": (["eval", "--run", str(tmp_path / "missing")],
                         "evaluate_run: " + repr(str(tmp_path / "missing"))
                         + " is not a run folder (no config.json)"),
        "eval-no-checkpoint": (["eval", "--run", str(no_best)],
                               "evaluate_run: no checkpoint in"),
        "sweep-missing": (["sweep", str(tmp_path / "missing.toml")], "does not exist"),
        "sweep-toml": (["sweep", str(tmp_path / "broken.toml")], "not valid TOML"),
        "sweep-field": (["sweep", str(tmp_path / "unknown.toml"), *runs],
                        "[base] has unknown TrainConfig field(s) ['learning_rate']"),
        "sweep-value": (["sweep", str(tmp_path / "invalid.toml"), "--dry-run", *runs],
                        "point 'base': TrainConfig: width must be > 0, but got 0"),
    }


@pytest.mark.parametrize("case", [
    "train-field", "train-out", "train-model", "train-data", "train-changed", "eval-missing",
    "eval-no-checkpoint", "sweep-missing", "sweep-toml", "sweep-field", "sweep-value",
])
def test_bad_input_on_the_command_line(case, reference_run, tmp_path, capsys):
    argv, message = _bad_inputs(tmp_path, reference_run[0])[case]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith(f"jaxsep {argv[0]}: error: ") and message in line, err


def test_bad_flags_are_usage_errors(capsys):
    for argv in (["train"], ["train", "--out", "x", "--width", "wide"], ["eval"],
                 ["eval", "--run", "x", "--which", "first"], ["sweep"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_bad_input_through_the_api(reference_run, tmp_path):
    from jaxsep import sweep, train

    with pytest.raises(ValueError, match=r"^TrainConfig: width must be > 0, but got 0.0$"):
        train.TrainConfig(width=0)
    with pytest.raises(TypeError, match=r"^TrainConfig: epochs must be an int, but got str"):
        train.TrainConfig(epochs="3")
    with pytest.raises(TypeError, match="config must be a TrainConfig, but got dict"):
        train.train_and_evaluate({"model": "mobilenet_v1"})
    with pytest.raises(ValueError, match="resume must be None, True or False, but got 'yes'"):
        train.train_and_evaluate(tiny_config(None), resume="yes")
    with pytest.raises(ValueError, match="different configuration"):
        train.train_and_evaluate(tiny_config(reference_run[0], lr=0.1))
    with pytest.raises(ValueError, match=r"evaluate_run: which must be one of \('best', "
                                         r"'last'\), but got 'first'"):
        train.evaluate_run(reference_run[0], which="first")
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        train.evaluate_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="load_checkpoint: which must be one of"):
        train.load_checkpoint(reference_run[0], which="first")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        train.load_checkpoint(tmp_path / "missing")
    with pytest.raises(sweep.SweepError, match="does not exist") as error:
        sweep.load_sweep(tmp_path / "missing.toml")
    assert isinstance(error.value, ValueError)
    with pytest.raises(sweep.SweepError, match=r"unknown TrainConfig field\(s\) \['lr_max'\]"):
        sweep.sweep_from_dict({"sweep": {"name": "x"}, "base": {"lr_max": 1},
                               "presets": {"cpu": {}}})
    demo = sweep.sweep_from_dict({"sweep": {"name": "x"}, "presets": {"cpu": {}}},
                                 runs_dir=tmp_path)
    with pytest.raises(sweep.SweepError, match=r"--only: sweep 'x' has no point\(s\)"):
        sweep.run_sweep(demo, only=["nope"])
