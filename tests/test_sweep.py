"""Tests for jaxsep.sweep (``jaxsep sweep``): the sweep file, the dry run's counts against
``jaxsep info``, and a tiny sweep on synthetic data that is interrupted, resumed, skipped
when finished, refused when its file changes and collected; and the records of its finished
points, which alone (no run folders) skip the points and give the same results.

The tiny sweep's points differ only in what its compiled steps do not depend on (learning
rate and schedule), and its model and data are conftest.tiny_config's, so it trains with the
steps the session compiled once. A sweep of three models with a factorized point
(conversion, fine-tuning) compiles three more and runs with ``-m slow``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import add_hooks
from jaxsep import cli, sweep as jsweep
from jaxsep.train import TrainConfig
from jaxsep.train.hooks import StopAtStep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

TINY = """
[sweep]
name = "tiny"
description = "Two learning rates and a cosine schedule on a handful of synthetic images."

[base]
model = "mobilenet_v1"
dataset = "synthetic"
max_train_examples = 256
max_test_examples = 40
batch_size = 32
dropout = 0.1
augment = false
lr = 0.05
schedule = "constant"
warmup_epochs = {warmup}

[grid]
lr = [0.05, 0.02]

[[points]]
label = "cosine"
schedule = "cosine"
warmup_epochs = 0.0

[presets.cpu]
width = 0.25
epochs = 1

[presets.full]
width = 1.0
epochs = 200
"""
LABELS = ["lr=0.05", "lr=0.02", "cosine"]

# Three models: standard convolutions, separable ones, and the factorization of the first.
FACTORIZED = """
[sweep]
name = "factorized"

[base]
model = "mobilenet_v1"
dataset = "synthetic"
max_train_examples = 64
max_test_examples = 32
batch_size = 32
augment = false
impl = "xla"
lr = 0.05
schedule = "constant"

[grid]
conv = ["standard", "separable"]

[[points]]
label = "factorized-M2"
init_from = "conv=standard"
factorize = 2
lr = 0.01

[presets.cpu]
width = 0.125
epochs = 1
"""
FACTORIZED_LABELS = ["conv=standard", "conv=separable", "factorized-M2"]


def write(folder: Path, text: str, name: str = "tiny.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def sweep_args(path: Path, folder: Path, *more: str) -> list[str]:
    return ["sweep", str(path), "--runs-dir", str(folder / "runs"),
            "--results-dir", str(folder / "results"), "--quiet", *more]


def parse_dry_run(text: str) -> dict[str, tuple[int, int, str]]:
    """point -> (params, multiply-adds, state) from the dry run's table."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())  # cells hold single spaces at most
        if len(cells) == 8 and re.fullmatch(r"[\d,]+", cells[5]):
            label, *_, params, macs, state = cells
            rows[label] = (int(params.replace(",", "")), int(macs.replace(",", "")), state)
    return rows


def info_totals(capsys, *args: str) -> tuple[int, int]:
    assert cli.main(["info", *args]) == 0
    out = capsys.readouterr().out
    params = re.search(r"Total params: ([\d,]+)", out).group(1)
    macs = re.search(r"Total multiply-adds: ([\d,]+)", out).group(1)
    return int(params.replace(",", "")), int(macs.replace(",", ""))


# --------------------------------------------------------------------------------------------
# The sweep file


def test_points_labels_and_precedence(tmp_path):
    data = {
        "sweep": {"name": "demo"},
        "base": {"model": "mobilenet_v1", "epochs": 5, "width": 0.5, "lr": 0.2},
        "grid": {"conv": ["standard", "separable"], "resolution": [32, 16]},
        "points": [{"label": "v2", "model": "mobilenet_v2"}, {"seed": 3}],
        "presets": {"cpu": {"epochs": 2, "grid": {"resolution": [24]}}, "full": {}},
    }
    sweep = jsweep.sweep_from_dict(data, runs_dir=tmp_path)
    assert sweep.id == "demo_cpu"
    assert sweep.labels == ["conv=standard,resolution=24", "conv=separable,resolution=24",
                            "v2", "seed=3"]
    first = sweep.points[0].config
    assert (first.conv, first.resolution, first.epochs, first.width, first.lr) == (
        "standard", 24, 2, 0.5, 0.2)  # grid over preset over base
    assert first.out == str(tmp_path / "demo_cpu" / "conv=standard,resolution=24")
    assert sweep.point("v2").config.model == "mobilenet_v2"
    assert sweep.point("seed=3").config.conv is None  # explicit points start from base+preset
    full = jsweep.sweep_from_dict(data, preset="full", runs_dir=tmp_path)
    assert full.id == "demo_full" and len(full.points) == 6 and full.points[0].config.epochs == 5


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(extra={}), ["unknown section", "extra"]),
        (lambda d: d["base"].update(learning_rate=0.1), ["[base]", "unknown", "learning_rate"]),
        (lambda d: d["base"].update(out="x"), ["[base]", "must not set", "out"]),
        (lambda d: d["presets"].pop("cpu"), ["preset must be one of", "full", "'cpu'"]),
        (lambda d: d["grid"].update(width=[]), ["width", "non-empty list"]),
        (lambda d: d["points"].append({"label": "a b", "seed": 1}), ["label", "'a b'"]),
        (lambda d: d["points"].append({"label": "conv=standard"}), ["two points", "conv=standard"]),
        (lambda d: d["points"].append({"init_from": "nope", "factorize": 2}),
         ["init_from must name a point listed before it", "'nope'"]),
        (lambda d: d["points"].append({"init_from": "conv=separable", "factorize": 2}),
         ["conv='standard'", "conv='separable'"]),
        (lambda d: d["points"].append({"init_from": "conv=standard", "factorize": 2,
                                       "width": 0.25}), ["width must equal", "0.25"]),
        (lambda d: d["points"].append({"init_from": "conv=standard"}), ["needs both"]),
        (lambda d: d["base"].update(epochs=0), ["point 'conv=standard'", "epochs must be >= 1"]),
    ],
)
def test_bad_sweep_files(change, words):
    data = {
        "sweep": {"name": "demo"},
        "base": {"model": "mobilenet_v1", "width": 0.5},
        "grid": {"conv": ["standard", "separable"]},
        "points": [],
        "presets": {"cpu": {}, "full": {}},
    }
    change(data)
    with pytest.raises(jsweep.SweepError) as error:
        jsweep.sweep_from_dict(data)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name)
def test_experiment_files_load_for_both_presets(path):
    for preset in ("cpu", "full"):
        sweep = jsweep.load_sweep(path, preset=preset)
        shared, _ = jsweep._shared_and_varying(sweep)
        for key in ("seed", "augment", "schedule", "batch_size", "optimizer"):
            assert key in shared, f"{path.name} {preset}: {key} differs between points"
    full = jsweep.load_sweep(path, preset="full")
    for point in full.points:
        config = point.config
        if point.factorize is None:
            assert (config.epochs, config.batch_size, config.lr, config.weight_decay) == (
                200, 128, 0.1, 5e-4)
        assert config.schedule == "cosine" and config.augment and config.dataset == "cifar10"


# --------------------------------------------------------------------------------------------
# Dry run


def test_dry_run_counts_equal_info(tmp_path, capsys):
    text = """
[sweep]
name = "counts"
[base]
model = "mobilenet_v1"
width = 0.25
[grid]
conv = ["standard", "separable"]
resolution = [32, 24]
[[points]]
label = "grouped"
conv = "grouped"
groups = 2
[[points]]
label = "v2"
model = "mobilenet_v2"
width = 0.5
resolution = 16
[presets.cpu]
"""
    path = write(tmp_path, text)
    assert cli.main(sweep_args(path, tmp_path, "--dry-run")) == 0
    rows = parse_dry_run(capsys.readouterr().out)
    assert len(rows) == 6 and all(state == "new" for *_, state in rows.values())
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    cases = {
        "conv=standard,resolution=32": ["mobilenet_v1", "--conv", "standard", "--width", "0.25"],
        "conv=separable,resolution=24": ["mobilenet_v1", "--width", "0.25", "--resolution", "24"],
        "grouped": ["mobilenet_v1", "--conv", "grouped", "--groups", "2", "--width", "0.25"],
        "v2": ["mobilenet_v2", "--width", "0.5", "--resolution", "16"],
    }
    for label, args in cases.items():
        assert rows[label][:2] == info_totals(capsys, *args, "--variant", "cifar"), label


def test_cli_errors(tmp_path, capsys):
    path = write(tmp_path, TINY.format(warmup=0.5))
    assert cli.main(sweep_args(path, tmp_path, "--preset", "gpu", "--dry-run")) == 2
    assert "presets ['cpu', 'full'], but got 'gpu'" in capsys.readouterr().err
    assert cli.main(sweep_args(path, tmp_path, "--only", "nope")) == 2
    assert "has no point(s) ['nope']" in capsys.readouterr().err
    assert cli.main(sweep_args(tmp_path / "missing.toml", tmp_path)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(sweep_args(path, tmp_path, "--retrain", "nope")) == 2
    assert "--retrain: sweep 'tiny' has no point(s) ['nope']" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A tiny sweep, trained once


def run_sweep_cli(path: Path, folder: Path, *more: str) -> tuple[int, list[str]]:
    """``jaxsep sweep`` in this process: (exit status, stderr lines)."""
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main(sweep_args(path, folder, *more))
    return code, err.getvalue().splitlines()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Runs the tiny sweep three times: stopped (as by SIGTERM) after the first point's first
    step; again (resumes it and trains the rest); and once more (skips everything)."""
    folder = tmp_path_factory.mktemp("sweep")
    path = write(folder, TINY.format(warmup=0.5))
    sweep = jsweep.load_sweep(path, runs_dir=folder / "runs", results_dir=folder / "results")
    calls = []
    for stop in (True, False, False):
        states = [jsweep.point_state(p) for p in sweep.points]
        mtimes = {p.label: _mtime(p.out / "summary.json") for p in sweep.points}
        with pytest.MonkeyPatch.context() as patch:
            if stop:
                add_hooks(patch, StopAtStep(1))
            code, log = run_sweep_cli(path, folder)
        calls.append({"code": code, "states_before": states, "log": log, "mtimes": mtimes})
    return {"folder": folder, "path": path, "sweep": sweep, "calls": calls}


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime_ns if path.exists() else None


def test_interrupted_point_resumes(tiny):
    first, second, _ = tiny["calls"]
    assert first["code"] == 143  # 128 + SIGTERM, after saving a checkpoint
    assert first["states_before"] == ["new", "new", "new"]
    assert any("SIGTERM: stopped at epoch 1, step 1 of 8; checkpoint saved to" in line
               for line in first["log"])
    assert second["states_before"] == ["partial", "new", "new"]
    assert any("lr=0.05: resuming after 0 of 1 epoch " in line for line in second["log"])
    assert second["code"] == 0
    out = tiny["sweep"].point("lr=0.05").out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1] and metrics[0]["global_step"] == 8


def test_finished_points_are_skipped(tiny):
    _, second, third = tiny["calls"]
    assert third["code"] == 0
    assert third["states_before"] == ["finished"] * 3
    assert sum("finished before, skipped" in line for line in third["log"]) == 3
    assert third["mtimes"] == {
        p.label: _mtime(p.out / "summary.json") for p in tiny["sweep"].points
    }  # nothing was rewritten


def test_results_files(tiny, capsys):
    folder = tiny["folder"]
    with open(folder / "results" / "tiny_cpu.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["label"] for r in rows] == LABELS
    assert list(rows[0]) == list(jsweep.CSV_FIELDS)
    assert all(r["status"] == "finished" and r["dataset"] == "synthetic" for r in rows)
    assert all(0.0 <= float(r["best_test_accuracy"]) <= 1.0 for r in rows)
    # the counts the harness measured are the dry run's (and so jaxsep info's)
    assert cli.main(sweep_args(tiny["path"], folder, "--dry-run")) == 0
    dry = parse_dry_run(capsys.readouterr().out)
    for row in rows:
        assert (int(row["params"]), int(row["macs"]), "finished") == dry[row["label"]]
    markdown = (folder / "results" / "tiny_cpu.md").read_text()
    assert markdown.startswith("# tiny (cpu preset)")
    assert "Two learning rates and a cosine schedule" in markdown
    assert "seed=0" in markdown and "augment=false" in markdown and "batch_size=32" in markdown
    assert "Varying between points: lr, schedule, warmup_epochs." in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(LABELS)
    assert "| lr=0.05 | mobilenet_v1 | separable | 0.25 | 32 |" in markdown
    assert "![test accuracy against parameters and multiply-adds](tiny_cpu.png)" in markdown
    png = (folder / "results" / "tiny_cpu.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_changed_sweep_file_is_refused(tiny, tmp_path, capsys):
    folder = tiny["folder"]
    changed = write(tmp_path, TINY.format(warmup=0.25))  # same name and runs folder
    assert cli.main(sweep_args(changed, folder)) == 2
    err = capsys.readouterr().err
    assert "holds a run of a different configuration" in err
    assert "warmup_epochs: 0.5 (in the folder) vs 0.25 (in the sweep)" in err


def test_collect_only_without_matplotlib(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    args = sweep_args(tiny["path"], tiny["folder"], "--collect-only")
    args[args.index("--results-dir") + 1] = str(tmp_path)
    assert cli.main(args) == 0
    assert "matplotlib is not installed" in capsys.readouterr().err
    # tiny_cpu/: the records, back-filled into this results folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_cpu", "tiny_cpu.csv", "tiny_cpu.md"]
    assert "tiny_cpu.png" not in (tmp_path / "tiny_cpu.md").read_text()


# --------------------------------------------------------------------------------------------
# Records: the finished points' result files, in the results folder


RECORDED = ["config.json", "metrics.jsonl", "summary.json"]


def _records_only(tiny, folder: Path, labels: list[str]) -> None:
    """Copies the tiny sweep's records of ``labels`` into ``folder/results`` (no run folders)."""
    for label in labels:
        shutil.copytree(tiny["sweep"].point(label).record, folder / "results" / "tiny_cpu" / label)


def test_records_of_finished_points(tiny, capsys):
    folder, sweep = tiny["folder"], tiny["sweep"]
    for point in sweep.points:
        assert point.record == folder / "results" / "tiny_cpu" / point.label
        assert sorted(p.name for p in point.record.iterdir()) == RECORDED  # no checkpoints
        for name in RECORDED:
            assert (point.record / name).read_bytes() == (point.out / name).read_bytes()
    # a point finished before records were kept gets its record when the results are collected
    record = sweep.point("lr=0.02").record
    shutil.rmtree(record)
    assert cli.main(sweep_args(tiny["path"], folder, "--collect-only")) == 0
    capsys.readouterr()
    assert sorted(p.name for p in record.iterdir()) == RECORDED


def test_records_alone_skip_and_give_the_same_results(tiny):
    folder, sweep = tiny["folder"], tiny["sweep"]
    results = folder / "results"
    before = {name: (results / name).read_text() for name in ("tiny_cpu.csv", "tiny_cpu.md")}
    runs, moved = folder / "runs", folder / "runs.moved"
    runs.rename(moved)  # a fresh checkout: the committed records, no run folders
    try:
        assert [jsweep.point_state(p) for p in sweep.points] == ["recorded"] * 3
        code, log = run_sweep_cli(tiny["path"], folder)
        assert code == 0
        assert "\n".join(log).count(f"finished before (recorded in {results / 'tiny_cpu'}") == 3
        assert not runs.exists()  # nothing trained
        assert {name: (results / name).read_text() for name in before} == before
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        moved.rename(runs)


def test_record_of_another_configuration_is_not_finished(tiny, tmp_path):
    changed = write(tmp_path, TINY.format(warmup=0.25))  # "cosine" sets its own warm-up
    sweep = jsweep.load_sweep(changed, runs_dir=tmp_path / "runs",
                              results_dir=tiny["folder"] / "results")
    assert [jsweep.point_state(p) for p in sweep.points] == ["new", "new", "recorded"]
    assert [jsweep.point_state(p, records=False) for p in sweep.points] == ["new"] * 3


def test_retrain_ignores_the_record(tiny, tmp_path, monkeypatch):
    path = write(tmp_path, TINY.format(warmup=0.5))
    _records_only(tiny, tmp_path, LABELS)
    sweep = jsweep.load_sweep(path, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    trained = []
    monkeypatch.setattr("jaxsep.train.train_and_evaluate", lambda c: trained.append(c.out))
    log = []
    outcomes = jsweep.run_sweep(sweep, only=["lr=0.02"], retrain=["lr=0.05"], log=log.append)
    assert [(o.label, o.action) for o in outcomes] == [
        ("lr=0.05", "trained"), ("lr=0.02", "skipped")]  # --retrain joins --only
    assert trained == [str(sweep.point("lr=0.05").out)]
    assert "lr=0.02: finished before (recorded in " in log[-1]
    record = sweep.point("lr=0.05").record  # no finished run: the record stays as it was
    assert (record / "summary.json").read_bytes() == (
        tiny["sweep"].point("lr=0.05").record / "summary.json").read_bytes()


def fake_record(point) -> None:
    """A record that says ``point`` finished (its config and a summary of all its epochs)."""
    point.record.mkdir(parents=True)
    (point.record / "config.json").write_text(point.config.to_json())
    (point.record / "summary.json").write_text(json.dumps({"epochs": point.config.epochs}))


def test_factorized_point_needs_its_source_checkpoint(tmp_path, capsys):
    path = write(tmp_path, FACTORIZED, "factorized.toml")
    sweep = jsweep.load_sweep(path, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    fake_record(sweep.point("conv=standard"))
    for more in ([], ["--only", "factorized-M2"]):
        assert cli.main(sweep_args(path, tmp_path, *more)) == 2
        err = capsys.readouterr().err
        assert "point 'factorized-M2' starts from point 'conv=standard'" in err
        assert "finished only by its record" in err and "--retrain conv=standard" in err
        assert not (tmp_path / "runs").exists()  # stopped before anything was trained
    assert cli.main(sweep_args(path, tmp_path, "--dry-run")) == 0
    assert parse_dry_run(capsys.readouterr().out)["conv=standard"][2] == "recorded"
    assert cli.main(sweep_args(path, tmp_path, "--dry-run", "--retrain", "conv=standard")) == 0
    assert parse_dry_run(capsys.readouterr().out)["conv=standard"][2] == "new"


@pytest.mark.slow
def test_factorized_point(tmp_path):
    """Three models (15-30 s of compiling each): a factorized point converts its source's
    best checkpoint, records the conversion, fine-tunes, and its row reports both."""
    path = write(tmp_path, FACTORIZED, "factorized.toml")
    code, log = run_sweep_cli(path, tmp_path)
    assert code == 0, log
    sweep = jsweep.load_sweep(path, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    point = sweep.point("factorized-M2")
    config = TrainConfig.load(point.out / "config.json")
    assert (config.conv, config.depth_multiplier, config.lr) == ("factorized", 2, 0.01)
    record = json.loads((point.out / "conversion.json").read_text())
    assert record["source"] == "conv=standard" and record["depth_multiplier"] == 2
    assert len(record["relative_errors"]) == 13
    assert all(0 < e < 1 for e in record["relative_errors"])
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert sorted(p.name for p in point.record.iterdir()) == sorted(RECORDED + ["conversion.json"])
    with open(tmp_path / "results" / "factorized_cpu.csv", newline="") as file:
        rows = {r["label"]: r for r in csv.DictReader(file)}
    assert list(rows) == FACTORIZED_LABELS
    row = rows["factorized-M2"]
    assert float(row["converted_test_accuracy"]) == record["test_accuracy"]
    assert float(row["factorize_error"]) == pytest.approx(record["mean_relative_error"])
    assert row["init_from"] == "conv=standard" and row["conv"] == "factorized"
    markdown = (tmp_path / "results" / "factorized_cpu.md").read_text()
    assert "Varying between points: conv, depth_multiplier, lr." in markdown
    assert "| conv=standard | mobilenet_v1 | standard | 0.125 | 32 |" in markdown
    assert "After conversion: the converted model's test accuracy" in markdown


def test_compact_count_labels_the_log_axis_ticks_shortly():
    from jaxsep.sweep import _compact_count

    assert [_compact_count(v) for v in (5, 200, 2e5, 1e6, 2.5e6, 4.6e7, 3e10)] == [
        "5", "200", "200k", "1M", "2.5M", "46M", "30G"
    ]
