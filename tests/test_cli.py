"""Tests for the command line: ``jaxsep info`` via ``main`` and via ``python -m jaxsep``, and
what ``main`` prints when CIFAR-10 can be neither found nor downloaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

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
