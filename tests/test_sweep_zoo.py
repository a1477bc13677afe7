"""Tests for the zoo sweep (``experiments/zoo.toml``) and what it adds to sweeps: the time to
an accuracy from a metrics file, Spearman's rank correlation, the inference latency measured
once per finished point and kept in its folder and record, the speed columns and figure.

The fast tiny sweep uses conftest.tiny_config's model and data, so it trains with the steps
the session compiled once (its latency compiles two small inference programs). Every model of
the zoo training a step (seven train steps to compile) runs with ``-m slow``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from jaxsep import sweep as jsweep
from jaxsep.sweep import speed as jspeed
from jaxsep.sweep.measures import average_ranks

from test_sweep import TINY, run_sweep_cli, write

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "experiments" / "zoo.toml"
ZOO_MODELS = {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
              "shufflenet_v1", "shufflenet_v2", "efficientnet_b0"}


# --------------------------------------------------------------------------------------------
# Time to an accuracy


METRICS = [  # a hand-written metrics.jsonl: epoch 2 not evaluated, epoch 3 exactly at 80%
    {"epoch": e, "global_step": 10 * e, "test_accuracy": a, "epoch_seconds": t,
     "elapsed_seconds": w}
    for e, a, t, w in ((1, 0.55, 100.0, 130.0), (2, None, 110.5, 250.0), (3, 0.80, 90.0, 999.0),
                       (4, 0.79, 95.0, 1100.0), (5, 0.851, 120.0, 1300.0))
]


def test_time_to_accuracy_from_a_metrics_file(tmp_path):
    from jaxsep.sweep.report import _metrics

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    metrics = _metrics(tmp_path)
    assert metrics == METRICS
    # training seconds (epoch_seconds), not the wall clock (elapsed_seconds)
    assert jsweep.time_to_accuracy(metrics, 0.80) == 300.5  # at or above: epoch 3
    assert jsweep.time_to_accuracy(metrics, 0.85) == 515.5
    assert jsweep.time_to_accuracy(metrics, 0.50) == 100.0
    assert jsweep.time_to_accuracy(metrics, 0.86) is None
    assert jsweep.time_to_accuracy([], 0.5) is None
    # with a step time measured apart: steps until that evaluation (epoch 3: 30) times it
    assert jsweep.time_to_accuracy(metrics, 0.80, step_seconds=0.5) == 15.0
    assert jsweep.time_to_accuracy(metrics, 0.85, step_seconds=0.5) == 25.0
    assert jsweep.time_to_accuracy(metrics, 0.86, step_seconds=0.5) is None
    with pytest.raises(ValueError, match=r"time_to_accuracy: step_seconds must be > 0, but got 0"):
        jsweep.time_to_accuracy(metrics, 0.8, step_seconds=0)
    assert _metrics(tmp_path / "missing") == []
    with pytest.raises(ValueError, match=r"time_to_accuracy: target must be <= 1, but got 80"):
        jsweep.time_to_accuracy(metrics, 80)


# --------------------------------------------------------------------------------------------
# Spearman


def test_average_ranks_share_ties():
    np.testing.assert_array_equal(average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
    np.testing.assert_array_equal(average_ranks([5, 5, 5]), [2, 2, 2])


def test_spearman_hand_case():
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 3, 2, 4 -> centred: (-1.5, 0, 0, 1.5), (-1.5, .5, -.5, 1.5)
    # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert jsweep.spearman([1, 2, 2, 4], [10, 30, 20, 40]) == pytest.approx(3 / math.sqrt(10),
                                                                             rel=1e-12)
    assert jsweep.spearman([1, 2, 3], [3, 2.5, -1]) == pytest.approx(-1.0)
    assert jsweep.spearman([1, 10, 100], [2, 3, 4]) == pytest.approx(1.0)  # ranks, not values
    assert jsweep.spearman([1, 2, 3], [7, 7, 7]) is None  # undefined: one side constant
    assert jsweep.spearman([1], [2]) is None
    with pytest.raises(ValueError, match="same length, but got 2 and 3"):
        jsweep.spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        jsweep.spearman([1, float("nan")], [1, 2])


def test_correlations_of_multiply_adds_with_measured_time():
    def row(macs, b1, b128, speed, status="finished"):
        return {"status": status, "macs": macs, "latency_ms_batch1": b1,
                "latency_ms_batch128": b128, "images_per_second": speed}

    rows = [row(1, 3.0, 10.0, 300.0), row(2, 2.0, 20.0, 200.0), row(3, 1.0, 30.0, 100.0),
            row(4, 9.0, 1.0, 1.0, status="partial (1/8 epochs)"),  # not finished: left out
            row(5, None, None, 50.0)]  # no latency: only in the training-time pair
    result = {words: (rho, n) for words, rho, n in jsweep.correlations(rows)}
    assert result == {
        "inference latency at batch 1": (pytest.approx(-1.0), 3),
        "inference latency at batch 128": (pytest.approx(1.0), 3),
        "training time per image": (pytest.approx(1.0), 4),  # 1 / images per second
    }


def test_pareto_front_hand_case():
    points = [("slow-good", 10.0, 0.90), ("fast-poor", 1.0, 0.60), ("dominated", 5.0, 0.55),
              ("tie-cost-worse", 1.0, 0.50), ("mid", 4.0, 0.80), ("same-acc-dearer", 6.0, 0.80),
              ("cheap-start", 0.5, 0.60)]
    front = jsweep.pareto_front(points)
    # fast-poor costs more than cheap-start for the same accuracy: off the front too
    assert [name for name, _, _ in front] == ["cheap-start", "mid", "slow-good"]
    assert [a for _, _, a in front] == sorted(a for _, _, a in front)
    assert jsweep.pareto_front([]) == []
    with pytest.raises(ValueError, match="'x'.*NaN"):
        jsweep.pareto_front([("x", float("nan"), 0.5)])


def test_front_text_names_the_points_worth_their_cost():
    def row(label, seconds, b1, accuracy, status="finished"):
        return {"label": label, "status": status, "train_seconds": seconds,
                "latency_ms_batch1": b1, "best_test_accuracy": accuracy}

    rows = [row("a", 600.0, 2.0, 0.75), row("b", 1800.0, 1.0, 0.82),
            row("c", 7200.0, 5.0, 0.83), row("d", 900.0, 3.0, 0.70),
            row("e", 60.0, 0.5, 0.99, status="partial (1/8 epochs)"),  # not finished
            row("f", None, None, 0.95)]  # not measured
    text = jsweep.front_text(rows)
    assert "by training time: a (0:10, 75.00%), b (0:30, 82.00%), c (2:00, 83.00%);" in text
    assert "by inference latency at batch 1: b (1 ms, 82.00%), c (5 ms, 83.00%)." in text
    assert jsweep.front_text([]).endswith("by training time: -; by inference latency at "
                                          "batch 1: -.")


# --------------------------------------------------------------------------------------------
# The zoo sweep file


def test_zoo_file_points_one_recipe_two_presets():
    for preset, epochs in (("cpu", 8), ("full", 200)):
        sweep = jsweep.load_sweep(ZOO, preset=preset)
        assert sweep.measure_speed and len(sweep.points) == 14
        configs = [p.config for p in sweep.points]
        assert {c.model for c in configs} == ZOO_MODELS
        assert {(c.model, c.width) for c in configs} == {
            (m, w) for m in ZOO_MODELS for w in (1.0, 0.5)}
        assert all(c.variant == "cifar" and c.epochs == epochs for c in configs)
        shared, varying = jsweep._shared_and_varying(sweep)
        assert varying == ["model", "width"]  # one recipe


@pytest.mark.slow
def test_zoo_points_build_and_the_second_width_cuts_costs():
    """Every point builds (abstractly: 14 model traces, ~15 s on two cores)."""
    sweep = jsweep.load_sweep(ZOO, preset="cpu")
    costs = {(p.config.model, p.config.width): jsweep.point_costs(p.config)
             for p in sweep.points}  # every point builds (abstractly)
    for model in ZOO_MODELS:
        (params_1, macs_1), (params_half, macs_half) = costs[model, 1.0], costs[model, 0.5]
        assert params_half < params_1 and 2 < macs_1 / macs_half < 5


def test_measure_speed_must_be_a_bool():
    data = {"sweep": {"name": "demo", "measure_speed": "yes"}, "presets": {"cpu": {}}}
    with pytest.raises(jsweep.SweepError, match="measure_speed must be true or false, but got "
                                                 "'yes'"):
        jsweep.sweep_from_dict(data)
    data["sweep"]["measure_speed"] = True
    assert jsweep.sweep_from_dict(data).measure_speed
    data["sweep"]["speed"] = True
    with pytest.raises(jsweep.SweepError, match=r"unknown key\(s\) \['speed'\].*measure_speed"):
        jsweep.sweep_from_dict(data)


# --------------------------------------------------------------------------------------------
# A tiny sweep that measures latency


def _tiny_speed() -> str:
    """test_sweep's tiny sweep with one point (its [base] and cpu preset: conftest.tiny_config's
    model and data), named "speed", measuring latency."""
    text = TINY.format(warmup=0.5)
    base = text[:text.index("[grid]")]
    preset = text[text.index("[presets.cpu]"):text.index("[presets.full]")]
    head = 'name = "speed"\nmeasure_speed = true\n'
    return re.sub(r'name = "tiny"\ndescription = .*\n', head, base) + preset


TINY_SPEED = _tiny_speed()
LABEL = "base"


@pytest.fixture(scope="module")
def speed(tmp_path_factory):
    """The tiny sweep trained once, its latency measured for real (one round per batch)."""
    folder = tmp_path_factory.mktemp("speed")
    path = write(folder, TINY_SPEED, "speed.toml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jspeed, "ROUNDS", 1)
        patch.setattr(jspeed, "BLOCK_S", 0.05)
        # 3 + 4 + 1 steps of 32: tiny_config's 256 images, so the session's compiled step
        patch.setattr(jspeed, "WARMUP_STEPS", 3)
        patch.setattr(jspeed, "TIMED_STEPS", 4)
        code, log = run_sweep_cli(path, folder)
    sweep = jsweep.load_sweep(path, runs_dir=folder / "runs", results_dir=folder / "results")
    return {"folder": folder, "path": path, "code": code, "log": log, "sweep": sweep,
            "point": sweep.point(LABEL)}


def test_speed_is_measured_after_training_and_recorded(speed):
    assert speed["code"] == 0, speed["log"]
    point = speed["point"]
    assert any(f"{LABEL}: inference latency batch 1: " in line for line in speed["log"])
    # the measuring run's own harness lines (no run folder: "(no out)") are not shown
    assert not any("(no out)" in line for line in speed["log"]), speed["log"]
    record = json.loads((point.out / "speed.json").read_text())
    assert (point.record / "speed.json").read_bytes() == (point.out / "speed.json").read_bytes()
    assert sorted(record["batches"]) == ["1", "128"]
    assert record["model"] == "mobilenet_v1" and record["resolution"] == 32
    assert record["model_options"]["width_multiplier"] == 0.25
    for entry in record["batches"].values():
        assert entry["ms"] > 0 and len(entry["round_ms"]) == 1 and entry["calls"] >= 3
        assert entry["compile_seconds"] > 0
    # a batch of 128 images takes longer than one image
    assert record["batches"]["128"]["ms"] > record["batches"]["1"]["ms"]
    assert len(record["load_average_before"]) == 3
    train = record["train"]  # the harness's train step, timed apart on synthetic data
    assert train["batch_size"] == 32 and train["warmup_steps"] == 3
    assert len(train["step_ms_all"]) == 4 and min(train["step_ms_all"]) > 0
    assert train["step_ms"] == pytest.approx(float(np.median(train["step_ms_all"])))
    assert train["images_per_second"] == pytest.approx(32e3 / train["step_ms"])
    assert "median over 4 steps after 3 warm-up steps" in train["method"]


def test_speed_columns_and_figure(speed):
    results = speed["folder"] / "results"
    with open(results / "speed_cpu.csv", newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert list(row) == list(jsweep.CSV_FIELDS)
    record = json.loads((speed["point"].out / "speed.json").read_text())
    assert float(row["latency_ms_batch1"]) == record["batches"]["1"]["ms"]
    assert float(row["latency_ms_batch128"]) == record["batches"]["128"]["ms"]
    # training speed and time: the step measured apart, not the run's own clock
    assert float(row["images_per_second"]) == pytest.approx(record["train"]["images_per_second"])
    assert float(row["train_seconds"]) == pytest.approx(8 * record["train"]["step_ms"] / 1e3)
    assert row["seconds_to_80"] == row["seconds_to_85"] == ""  # synthetic data: not reached
    markdown = (results / "speed_cpu.md").read_text()
    assert "| b1 ms | b128 ms | status |" in markdown and "| to 80% | to 85% |" in markdown
    assert "Spearman rank correlation of multiply-adds with measured time: inference latency " \
           "at batch 1 - (n=1)" in markdown  # one point: undefined
    assert "1-minute load average before measuring" in markdown
    assert "optimizer steps times that step time" in markdown
    label = speed["point"].label  # the one point is the whole front
    assert f"by training time: {label} (" in markdown
    assert f"by inference latency at batch 1: {label} (" in markdown
    assert any(line.startswith("jaxsep sweep: Spearman rank correlation of multiply-adds")
               for line in speed["log"])  # the command states it too
    figure = "![test accuracy against multiply-adds and measured time](speed_cpu_speed.png)"
    assert figure in markdown
    png = (results / "speed_cpu_speed.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def _refuse_to_measure(point):
    raise AssertionError(f"measured {point.label} again")


def test_latency_record_is_reused_on_resume(speed, monkeypatch):
    point = speed["point"]
    before = (point.out / "speed.json").read_bytes()
    monkeypatch.setattr(jspeed, "measure_speed", _refuse_to_measure)
    code, log = run_sweep_cli(speed["path"], speed["folder"])
    assert code == 0, log
    assert any("finished before, skipped" in line for line in log)
    assert (point.out / "speed.json").read_bytes() == before
    # a fresh checkout: the record alone, no run folder
    runs, moved = speed["folder"] / "runs", speed["folder"] / "runs.moved"
    runs.rename(moved)
    try:
        code, log = run_sweep_cli(speed["path"], speed["folder"])
        assert code == 0, log
        assert any("recorded in" in line for line in log) and not runs.exists()
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        moved.rename(runs)
    # a run folder that lost its speed.json gets the record's back, not a new measurement
    (point.out / "speed.json").unlink()
    code, log = run_sweep_cli(speed["path"], speed["folder"])
    assert code == 0, log
    assert (point.out / "speed.json").read_bytes() == before


def _fake_speed(calls, b1_ms, b128_ms, step_ms):
    """A stand-in for measure_speed: records each point it is asked for, returns fixed
    figures (batch 32, tiny_config's)."""
    def fake(point):
        calls.append(point.label)
        return {"batches": {"1": {"ms": b1_ms}, "128": {"ms": b128_ms}},
                "device": {"kind": "cpu"}, "processor": "test", "cpu_count": 2,
                "load_average_before": [0.5, 0.5, 0.5],
                "train": {"step_ms": step_ms, "images_per_second": 32e3 / step_ms}}

    return fake


def test_missing_latency_is_measured_once(speed, monkeypatch):
    point = speed["point"]
    saved = (point.out / "speed.json").read_bytes()
    calls = []

    monkeypatch.setattr(jspeed, "measure_speed", _fake_speed(calls, 1.5, 40.0, 100.0))
    try:
        for folder in (point.out, point.record):
            (folder / "speed.json").unlink()
        for _ in range(2):  # measured by the first run only
            code, log = run_sweep_cli(speed["path"], speed["folder"])
            assert code == 0, log
        assert calls == [LABEL]
        for folder in (point.out, point.record):
            assert json.loads((folder / "speed.json").read_text())["batches"]["1"]["ms"] == 1.5
        # --collect-only measures nothing
        (point.out / "speed.json").unlink()
        (point.record / "speed.json").unlink()
        code, log = run_sweep_cli(speed["path"], speed["folder"], "--collect-only")
        assert code == 0 and calls == [LABEL]
    finally:
        for folder in (point.out, point.record):
            (folder / "speed.json").write_bytes(saved)


def test_measure_remeasures_every_finished_point(speed, monkeypatch):
    """``--measure``: every finished point measured again in one sitting, overwriting its
    speed.json in the run folder and the record; nothing trained."""
    point = speed["point"]
    saved = (point.out / "speed.json").read_bytes()
    calls = []

    monkeypatch.setattr(jspeed, "measure_speed", _fake_speed(calls, 2.5, 50.0, 200.0))
    try:
        code, log = run_sweep_cli(speed["path"], speed["folder"], "--measure")
        assert code == 0, log
        assert calls == [LABEL] and any("measuring its speed" in line for line in log)
        assert not any("training" in line and "epochs in" in line for line in log)
        for folder in (point.out, point.record):
            assert json.loads((folder / "speed.json").read_text())["train"]["step_ms"] == 200.0
        with open(speed["folder"] / "results" / "speed_cpu.csv", newline="") as file:
            (row,) = list(csv.DictReader(file))
        assert float(row["images_per_second"]) == 160.0
        assert float(row["train_seconds"]) == pytest.approx(8 * 0.2)
        # bad combinations: exit 2 with one line, nothing measured
        code, log = run_sweep_cli(speed["path"], speed["folder"], "--measure", "--collect-only")
        assert code == 2 and "--measure and --collect-only exclude each other" in log[-1]
        plain = write(speed["folder"], TINY_SPEED.replace("measure_speed = true\n", ""),
                      "plain.toml")
        code, log = run_sweep_cli(plain, speed["folder"], "--measure")
        assert code == 2 and "does not measure speed; set measure_speed = true" in log[-1]
        assert calls == [LABEL]
    finally:
        for folder in (point.out, point.record):
            (folder / "speed.json").write_bytes(saved)


# --------------------------------------------------------------------------------------------
# Every model of the zoo trains a step


@pytest.mark.slow
def test_every_zoo_model_trains_a_step(tmp_path, monkeypatch):
    """zoo.toml's recipe and models at width 0.5 on 32 synthetic images (two steps of 16):
    seven train steps to compile (minutes on two cores). The latency is faked (its real
    measurement is tested above), ordered against multiply-adds on purpose."""
    data = tomllib.loads(ZOO.read_text())
    data["base"].update(dataset="synthetic", max_train_examples=32, max_test_examples=16,
                        batch_size=16)
    data["grid"]["width"] = [0.5]
    data["presets"]["cpu"]["epochs"] = 1
    zoo = jsweep.sweep_from_dict(data, runs_dir=tmp_path / "runs",
                                 results_dir=tmp_path / "results")

    def fake(point):
        macs = jsweep.point_costs(point.config)[1]
        return {"batches": {"1": {"ms": 1e9 / macs}, "128": {"ms": macs / 1e6}},
                "device": {"kind": "cpu"}, "processor": "test", "cpu_count": 2,
                "load_average_before": None,
                "train": {"step_ms": macs / 1e6, "images_per_second": 16e9 / macs}}

    monkeypatch.setattr(jspeed, "measure_speed", fake)
    outcomes = jsweep.run_sweep(zoo, quiet=True, log=lambda line: None)
    assert [o.action for o in outcomes] == ["trained"] * 7
    collected = jsweep.collect(zoo, log=lambda line: None)
    assert {r["model"] for r in collected.rows} == ZOO_MODELS
    for row in collected.rows:
        assert row["status"] == "finished" and row["images_per_second"] > 0
        assert row["latency_ms_batch128"] == pytest.approx(row["macs"] / 1e6)
    result = {words: (rho, n) for words, rho, n in jsweep.correlations(collected.rows)}
    assert result["inference latency at batch 1"] == (pytest.approx(-1.0), 7)
    assert result["inference latency at batch 128"] == (pytest.approx(1.0), 7)
    assert result["training time per image"] == (pytest.approx(1.0), 7)
    assert collected.png is not None and collected.speed_png is not None
    markdown = collected.markdown.read_text()
    assert "inference latency at batch 1 -1.00 (n=7)" in markdown
