"""The benchmark scripts under experiments/ in their ``--quick`` smoke mode (``pytest -m slow``):
they run, write their report files, and the reports hold what the tables claim. Timings are
not checked (bench_train.py's smoke test is in test_train_slow.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str, env: dict | None = None) -> None:
    result = subprocess.run(
        [sys.executable, f"experiments/{script}", "--quick", "--no-torch", *args],
        capture_output=True, text=True, timeout=900, cwd=REPO, env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _report(folder: Path, stem: str) -> tuple[dict, str]:
    name = f"{stem}_{jax.default_backend()}"
    return json.loads((folder / f"{name}.json").read_text()), (folder / f"{name}.md").read_text()


def test_bench_ops_quick_with_autotune(tmp_path):
    """Both layer sets, with measuring on: each row's auto lowering is the cached choice."""
    cache = tmp_path / "autotune.json"
    _run("bench_ops.py", "--layers", "all", "--rounds", "1", "--calls", "2", "--out",
         str(tmp_path), env={"JAXSEP_AUTOTUNE": "1", "JAXSEP_AUTOTUNE_CACHE": str(cache)})
    report, table = _report(tmp_path, "bench_ops")
    assert [r["layer"] for r in report["layers"]] == ["8x8x16 s1", "8x8x16 s2", "1-D NCW B2 16x32 k5"]
    assert report["autotune"] is True and report["autotune_cache"] == str(cache)
    chosen = {tuple(json.loads(key)["x"][0]): entry["impl"]
              for key, entry in json.loads(cache.read_text())["entries"].items()}
    for row in report["layers"]:
        assert row["auto_impl"] == chosen[tuple(row["shape"])]
    assert set(report["totals"]) == {"MobileNetV1-CIFAR layers", "Reported GPU shapes"}
    assert "| 1-D NCW B2 16x32 k5 |" in table and "torch n/a (--no-torch)" in table


def test_bench_grouped_quick(tmp_path):
    _run("bench_grouped.py", "--out", str(tmp_path))  # the suite's JAXSEP_AUTOTUNE=0: the rule
    report, table = _report(tmp_path, "bench_grouped")
    assert report["autotune"] is False
    for row in report["layers"]:
        assert row["auto_impl"] == row["rule_impl"] and row["auto/rule"]["fwd+bwd"] == 1.0
    assert "| mbv1 8x8x16 3x3 s1 | 4 | 4 |" in table and "`auto` by the fixed rules" in table


def test_bench_conv_quick_with_autotune(tmp_path):
    """The stem measures both lowerings and runs the cached choice; the wide layer (648 patch
    channels) has only "xla" to run."""
    cache = tmp_path / "autotune.json"
    _run("bench_conv.py", "--out", str(tmp_path),
         env={"JAXSEP_AUTOTUNE": "1", "JAXSEP_AUTOTUNE_CACHE": str(cache)})
    report, table = _report(tmp_path, "bench_conv")
    stem, wide = report["layers"]
    assert stem["candidates"] == ["xla", "patches"] and wide["candidates"] == ["xla"]
    (entry,) = [e for key, e in json.loads(cache.read_text())["entries"].items()
                if json.loads(key)["x"][0] == [2, 8, 8, 3]]  # the stem's (the step's are 32x32)
    assert stem["auto_impl"] == entry["impl"] and wide["auto_impl"] == "xla"
    for row in report["layers"]:
        assert all(row["ms"][f"{impl} {p}"] > 0 for impl in ("xla", "patches", "auto")
                   for p in ("fwd", "stem", "fwd+bwd"))
    assert "| tiny stem 3->32 | xla, patches |" in table and "torch n/a (--no-torch)" in table
    (step,) = report["steps"]  # a user's step, traced with the fixed rules and with auto
    assert (step["model"], step["width"]) == ("mobilenet_v1", 0.25)
    assert set(step["step_ms"]) == {"fixed rules", "auto"} and step["fixed/auto"] > 0
    assert "| mobilenet_v1 | 0.25 |" in table


def test_bench_infer_quick(tmp_path):
    _run("bench_infer.py", "--out", str(tmp_path))
    report, table = _report(tmp_path, "bench_infer")
    assert [(r["model"], r["batch"]) for r in report["rows"]] == [("mobilenet_v2", 1), ("mobilenet_v2", 2)]
    for row in report["rows"]:
        assert row["ms"]["jaxsep"] > 0 and row["jaxsep/torch"] is None
    assert "| mobilenet_v2 | 1 |" in table and "onnxruntime n/a" in table


def test_bench_startup_cold_then_warm(tmp_path):
    """A cold run compiles and fills the cache; the warm run finds its programs there."""
    flags = ("--model mobilenet_v1 --width 0.25 --epochs 1 --max-train-examples 64 "
             "--max-test-examples 32 --batch-size 32 --resolution 16 --dataset synthetic")
    result = subprocess.run(
        [sys.executable, "experiments/bench_startup.py", "--flags", flags, "--warm-runs", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
        env={**os.environ, "JAXSEP_AUTOTUNE": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report, table = _report(tmp_path, "bench_startup")
    cold, warm = report["runs"]
    assert (cold["kind"], warm["kind"]) == ("cold", "warm")
    assert cold["cache_hits"] == 0 and warm["cache_hits"] >= 2  # init and the train step
    assert "| warm |" in table and report["device"] in table
    for run in report["runs"]:  # the train step was traced, lowered and compiled (or fetched)
        assert sorted(run["train_step_seconds"]) == ["compile", "lower", "trace"]
        assert min(run["train_step_seconds"].values()) > 0


def test_guidelines_quick(tmp_path):
    """The four tables at the arm setting x1 (tiny inputs): every row's ratio to the first row,
    the paper's ratios beside it, and the plot when matplotlib is there."""
    _run("guidelines.py", "--out", str(tmp_path))
    report, table = _report(tmp_path, "guidelines")
    assert [(t["guideline"], t["setting"], t["scale"], t["batch"]) for t in report["tables"]] == [
        (g, "arm", 1, 1) for g in (1, 2, 3, 4)]
    g2 = report["tables"][1]
    assert [r["label"] for r in g2["rows"]] == ["g=1 (c=64)", "g=2 (c=90)", "g=4 (c=128)", "g=8 (c=184)"]
    assert g2["paper_speed"]["arm"] == [40.0, 35.0, 32.9, 27.8]
    for t in report["tables"]:
        first = t["rows"][0]
        assert first["ratio"]["jaxsep"] == 1.0 and t["paper_ratio"]["gpu"][0] == 1.0
        assert all(r["ms"]["jaxsep"] > 0 and "torch" not in r["ms"] for r in t["rows"])
    assert "## G4 (Table 4)" in table and "| 1:12 (9,108) |" in table
    assert "torch n/a (--no-torch)" in table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / f"guidelines_{jax.default_backend()}.png").stat().st_size > 0


def test_feature_scale_quick(tmp_path):
    """Two zoo points built as the sweep builds them: one row each, in the zoo's order, with
    the classifier's input width of each model and self-consistent statistics."""
    result = subprocess.run(
        [sys.executable, "experiments/feature_scale.py", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "feature_scale.json").read_text())
    rows = report["rows"]
    assert [(r["point"], r["feature_dim"]) for r in rows] == [
        ("model=shufflenet_v1,width=0.5", 480), ("model=shufflenet_v2,width=0.5", 1024)]
    for row in rows:
        # the mean per-image norm is at most the root of the mean squared norm, RMS * sqrt(dim)
        assert 0 < row["feature_norm"] <= row["feature_rms"] * row["feature_dim"] ** 0.5 * (1 + 1e-5)
        assert row["classifier_relative_step"] > 0
        assert 2.0 < row["loss_before"] < 2.7  # 10 classes at initialization: about ln 10
    table = (tmp_path / "feature_scale.md").read_text()
    assert "| model=shufflenet_v1,width=0.5 | 480 |" in table


TINY_TRAINED = """
[sweep]
name = "tiny"

[base]
model = "mobilenet_v1"
width = 0.25
dataset = "synthetic"
max_train_examples = 128
max_test_examples = 40
batch_size = 32
epochs = 1
augment = false

[[points]]
label = "only"

[presets.cpu]
"""


def test_step_time_quick(tmp_path):
    """A trained tiny point: every (weights, data) variant timed once, its steps counted,
    the run's own clock read from its metrics."""
    from jaxsep import sweep
    from jaxsep.train import train_and_evaluate

    (tmp_path / "tiny.toml").write_text(TINY_TRAINED)
    point = sweep.load_sweep(tmp_path / "tiny.toml", runs_dir=tmp_path / "runs").point("only")
    train_and_evaluate(point.config)
    result = subprocess.run(
        [sys.executable, "experiments/step_time.py", "--quick", "--sweep",
         str(tmp_path / "tiny.toml"), "--point", "only", "--runs-dir", str(tmp_path / "runs"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report, table = _report(tmp_path / "out", "step_time")
    assert [(v["weights"], v["data"]) for v in report["variants"]] == [
        ("init", "synthetic"), ("trained", "dataset"), ("trained", "synthetic"),
        ("init", "dataset")]
    for variant in report["variants"]:
        assert [len(r) for r in variant["step_s"]] == [3]
        assert 0 < variant["min_s"] <= variant["median_s"] <= variant["max_s"]
    assert [r["epoch"] for r in report["run_clock"]] == [1]
    assert report["run_clock"][0]["step_s"] > 0
    assert "| trained | dataset |" in table


def test_step_time_refuses_an_untrained_point(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TRAINED)
    result = subprocess.run(
        [sys.executable, "experiments/step_time.py", "--sweep", str(tmp_path / "tiny.toml"),
         "--point", "only", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 2
    assert "no trained run in" in result.stderr and "train the point first" in result.stderr
    assert not list(tmp_path.glob("step_time_*"))


def test_bench_host_memory_quick(tmp_path):
    """One process per malloc setting; each reports its steps, faults and CPU seconds."""
    result = subprocess.run(
        [sys.executable, "experiments/bench_host_memory.py", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report, table = _report(tmp_path, "bench_host_memory")
    assert list(report["settings"]) == ["glibc defaults", "2 GiB thresholds", "jaxsep"]
    for name, row in report["settings"].items():
        assert [len(run["step_s"]) for run in row["runs"]] == [2]
        assert row["minor_faults_per_step"] >= 0 and row["peak_rss_gib"] > 0
        assert f"| {name} | " in table
    assert report["settings"]["glibc defaults"]["speedup"] == 1.0
