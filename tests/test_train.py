"""Tests for jaxsep.train: the config, schedules, weight-decay mask, and the training loop on
tiny synthetic data (overfitting, exact resume after a finished epoch or a SIGTERM inside
one, non-finite loss, evaluation of a saved run).

Every loop test uses one tiny configuration (MobileNetV1 at width 0.25, 256 synthetic 32x32
images, batch 32) so that this process compiles its train step once: the compiled step does
not depend on the learning rate, schedule, epochs or run folder. The 4-device test runs in a
subprocess (the device count is fixed when JAX starts). Slower tests (the command in a
subprocess, bfloat16, the benchmark, real CIFAR-10) are in test_train_slow.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsep import models
from jaxsep import train
from jaxsep.train import TIMING_FIELDS, TrainConfig
from jaxsep.train import loop as train_loop


def tiny_config(out: Path | str | None, **changes) -> TrainConfig:
    """The configuration every loop test shares (changing the model, batch, data size,
    optimizer, weight decay, augmentation or dtype compiles another step)."""
    values = dict(
        model="mobilenet_v1",
        width=0.25,
        dataset="synthetic",
        max_train_examples=256,  # 8 steps per epoch
        max_test_examples=40,  # not a multiple of the eval batch: the last batch is padded
        batch_size=32,
        epochs=2,
        lr=0.05,
        schedule="constant",  # so that a 1-epoch run is the first epoch of a 2-epoch run
        warmup_epochs=0.5,
        dropout=0.1,  # resume must reproduce dropout's randomness
        augment=False,  # (augmentation's determinism is tested in test_data.py)
        out=None if out is None else str(out),
        quiet=True,
    )
    values.update(changes)
    return TrainConfig(**values)


def metric_lines(out: Path) -> list[dict]:
    """metrics.jsonl without its timing fields."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_FIELDS} for line in lines]


def assert_same_state(out_a: Path, out_b: Path) -> None:
    tree_a, meta_a = train.load_checkpoint(out_a)
    tree_b, meta_b = train.load_checkpoint(out_b)
    leaves_a = jax.tree_util.tree_flatten_with_path(tree_a)[0]
    leaves_b = jax.tree_util.tree_flatten_with_path(tree_b)[0]
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    for (path, a), (_, b) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert meta_a["global_step"] == meta_b["global_step"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, dict]:
    """Two epochs, uninterrupted: what every resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = train.train_and_evaluate(tiny_config(out))
    return out, summary


# --------------------------------------------------------------------------------------------
# TrainConfig


def test_config_json_round_trip(tmp_path):
    config = TrainConfig(model="mobilenet_v2", width=1, epochs=3, lr=0.2, resolution=24)
    assert isinstance(config.width, float)  # ints are stored as floats
    assert TrainConfig.from_json(config.to_json()) == config
    (tmp_path / "config.json").write_text(config.to_json())
    assert TrainConfig.load(tmp_path / "config.json") == config


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(model="resnet50"), ["model", "mobilenet_v1", "resnet50"]),
        (dict(width=0.0), ["width", "> 0", "0.0"]),
        (dict(width=-1.0), ["width", "> 0", "-1.0"]),
        (dict(epochs=0), ["epochs", ">= 1", "0"]),
        (dict(batch_size=0), ["batch_size", ">= 1"]),
        (dict(optimizer="adam"), ["optimizer", "sgd", "adamw", "adam"]),
        (dict(schedule="step"), ["schedule", "cosine", "step"]),
        (dict(label_smoothing=1.0), ["label_smoothing", "< 1,"]),
        (dict(cutout=-1), ["cutout", ">= 0", "-1"]),
        (dict(momentum=1.5), ["momentum"]),
        (dict(compute_dtype="float16"), ["compute_dtype", "bfloat16", "float16"]),
        (dict(epochs=2, warmup_epochs=2.0), ["warmup_epochs", "< epochs"]),
        (dict(lr=float("nan")), ["lr", "finite"]),
    ],
)
def test_config_rejects_bad_values(changes, words):
    with pytest.raises(ValueError) as error:
        TrainConfig(**changes)
    message = str(error.value)
    assert message.startswith("TrainConfig: ")
    for word in words:
        assert word in message


def test_config_type_errors_and_unknown_fields():
    with pytest.raises(TypeError, match="epochs must be an int, but got float 1.5"):
        TrainConfig(epochs=1.5)
    with pytest.raises(TypeError, match="augment must be a bool"):
        TrainConfig(augment="yes")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_optimizer_defaults():
    assert TrainConfig().resolved_lr == 0.1
    assert TrainConfig().resolved_weight_decay == 5e-4
    adamw = TrainConfig(optimizer="adamw")
    assert (adamw.resolved_lr, adamw.resolved_weight_decay) == (1e-3, 0.05)
    assert TrainConfig(optimizer="adamw", lr=3e-3).resolved_lr == 3e-3


def test_flags_cover_every_field():
    import argparse

    parser = argparse.ArgumentParser()
    train.add_train_arguments(parser)
    args = parser.parse_args(
        ["--model", "mobilenet_v1", "--width", "0.5", "--conv", "separable", "--epochs", "30",
         "--batch-size", "128", "--data-dir", "DIR", "--out", "runs/x", "--seed", "3",
         "--no-augment", "--max-train-examples", "100", "--resume"]
    )
    config = train.config_from_args(args)
    assert config == TrainConfig(
        model="mobilenet_v1", width=0.5, conv="separable", epochs=30, batch_size=128,
        data_dir="DIR", out="runs/x", seed=3, augment=False, max_train_examples=100,
    )
    assert args.resume is True
    flags = parser.format_help()
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in flags, field.name


# --------------------------------------------------------------------------------------------
# Schedules and the weight-decay mask


def test_cosine_schedule_with_warmup():
    config = TrainConfig(epochs=10, lr=0.4, warmup_epochs=2.0)
    rate = train.learning_rate_schedule(config, steps_per_epoch=5)
    assert [rate(t) for t in range(3)] == pytest.approx([0.04, 0.08, 0.12])
    assert rate(9) == pytest.approx(0.4)  # end of warm-up: the peak
    assert rate(10) == pytest.approx(0.4)  # cosine starts at the peak
    assert rate(30) == pytest.approx(0.2)  # halfway through the cosine part
    assert 0 < rate(49) < 1e-3
    rates = [rate(t) for t in range(10, 50)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_constant_and_onecycle_schedules():
    constant = train.learning_rate_schedule(
        TrainConfig(epochs=2, lr=0.1, schedule="constant"), steps_per_epoch=4
    )
    assert {constant(t) for t in range(8)} == {0.1}
    onecycle = train.learning_rate_schedule(
        TrainConfig(epochs=10, lr=1.0, schedule="onecycle"), steps_per_epoch=10
    )
    rates = [onecycle(t) for t in range(100)]
    assert rates[0] == pytest.approx(1.0 / 25)  # PyTorch's OneCycleLR defaults
    assert max(rates) == pytest.approx(1.0) and rates.index(max(rates)) == 30
    assert rates[-1] == pytest.approx(1.0 / 25 / 1e4)


def test_weight_decay_mask_kinds():
    model = nnx.eval_shape(
        lambda: models.create("mobilenet_v1", variant="cifar", width_multiplier=0.25)
    )
    kinds = train.parameter_kinds(model)
    assert kinds[("blocks", 0, "spatial", "conv", "kernel")] == "depthwise"
    assert kinds[("blocks", 0, "pointwise", "conv", "kernel")] == "weight"
    assert kinds[("blocks", 0, "spatial", "norm", "scale")] == "norm"
    assert kinds[("blocks", 0, "spatial", "norm", "bias")] == "norm"
    assert kinds[("stem", "conv", "kernel")] == "weight"
    assert kinds[("classifier", "kernel")] == "weight"
    assert kinds[("classifier", "bias")] == "bias"
    assert sum(kind == "depthwise" for kind in kinds.values()) == 13

    def decayed(**options) -> set:
        mask = train.weight_decay_mask(model, **options)
        flat = nnx.to_flat_state(mask)
        return {tuple(path) for path, leaf in flat if leaf.get_value()}

    default = decayed()
    assert default == {p for p, k in kinds.items() if k == "weight"}
    assert decayed(decay_depthwise=True) == {p for p, k in kinds.items() if k in ("weight", "depthwise")}
    assert decayed(decay_depthwise=True, decay_norm_and_bias=True) == set(kinds)


def test_weight_decay_mask_finds_grouped_depthwise():
    """A grouped 3x3 with one channel per group (and Flax's nnx.Conv spelled that way) is a
    depthwise layer too; a genuinely grouped one is not."""
    model = nnx.eval_shape(
        lambda: models.create("mobilenet_v1", variant="cifar", width_multiplier=0.25,
                              conv="grouped", groups=8)
    )
    kinds = train.parameter_kinds(model)
    assert kinds[("blocks", 0, "spatial", "conv", "kernel")] == "depthwise"  # 8 channels, 8 groups
    assert kinds[("blocks", 1, "spatial", "conv", "kernel")] == "weight"  # 16 channels, 8 groups
    flax_conv = nnx.eval_shape(
        lambda: nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=nnx.Rngs(0))
    )
    assert train.parameter_kinds(flax_conv) == {("kernel",): "depthwise", ("bias",): "bias"}


def test_train_inputs_crop_flip_normalize_then_cutout():
    from jaxsep import data
    from jaxsep.train import steps

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (steps.DATA_AXIS,))
    spec = steps.StepSpec(
        batch_size=16, num_classes=10, seed=0, augment=True, cutout=0, resolution=None,
        compute_dtype="float32", label_smoothing=0.0, optimizer="sgd", weight_decay=0.0,
        momentum=0.9, nesterov=True, adam_b1=0.9, adam_b2=0.999, decay_mask=(), mesh=mesh,
    )
    images = jax.random.randint(jax.random.key(0), (16, 32, 32, 3), 0, 256).astype(jnp.uint8)
    key = data.batch_key(0, 2, 5)
    plain = np.asarray(steps.train_inputs(spec, images, key))
    augment_key = jax.random.split(key)[0]
    np.testing.assert_array_equal(plain, data.normalize(data.augment(images, augment_key)))
    # Cutout comes after normalization, so the square holds zeros, the dataset mean.
    cut = np.asarray(steps.train_inputs(dataclasses.replace(spec, cutout=8), images, key))
    changed = np.any(cut != plain, axis=-1)
    assert 0 < changed.sum(axis=(1, 2)).min() and changed.sum(axis=(1, 2)).max() <= 64
    np.testing.assert_array_equal(cut[changed], 0.0)
    np.testing.assert_array_equal(cut[~changed], plain[~changed])
    whole = steps.train_inputs(dataclasses.replace(spec, cutout=64), images, key)
    np.testing.assert_array_equal(whole, np.zeros_like(plain))


def test_sgd_direction_matches_pytorch_formula():
    """L2 decay added to the gradient, then Nesterov momentum (torch.optim.SGD)."""
    params = {"w": np.array([1.0, -2.0], np.float32), "b": np.array([0.5], np.float32)}
    grads = {"w": np.array([0.1, 0.2], np.float32), "b": np.array([0.3], np.float32)}
    transform = train.direction_transform(
        optimizer="sgd", weight_decay=0.1, momentum=0.9, nesterov=True,
        mask={"w": True, "b": False},
    )
    state = transform.init(params)
    direction, state = transform.update(grads, state, params)
    g_w = grads["w"] + 0.1 * params["w"]
    np.testing.assert_allclose(direction["w"], g_w + 0.9 * g_w, rtol=1e-6)  # buf = g
    np.testing.assert_allclose(direction["b"], grads["b"] * 1.9, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The loop


def test_reference_run_files(reference_run):
    out, summary = reference_run
    assert json.loads((out / "config.json").read_text()) == tiny_config(out).to_dict()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert list(lines[0]) == list(train.EPOCH_FIELDS)
    for line in lines:
        assert 0 <= line["train_accuracy"] <= 1 and 0 <= line["test_accuracy"] <= 1
        assert math.isfinite(line["train_loss"]) and line["images_per_second"] > 0
        # Accuracy over exactly the 40 test examples (the padded 8 are masked out).
        assert round(line["test_accuracy"] * 40, 6) == round(line["test_accuracy"] * 40)
    assert lines[1]["global_step"] == 16
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["final_test_accuracy"] == lines[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(line["test_accuracy"] for line in lines)
    model = nnx.eval_shape(
        lambda: models.create("mobilenet_v1", variant="cifar", width_multiplier=0.25)
    )
    assert summary["params"] == train_loop.cost.count_params(model)
    assert summary["macs"] > 1e6
    assert summary["device"]["platform"] == "cpu"
    assert summary["num_train"] == 256 and summary["num_test"] == 40
    assert sorted(p.name for p in (out / "best").iterdir() if p.name.isdigit()) == [
        str(summary["best_epoch"])
    ]


def test_rerun_of_a_finished_run_changes_nothing(reference_run):
    out, summary = reference_run
    before = metric_lines(out)
    again = train.train_and_evaluate(tiny_config(out))
    assert metric_lines(out) == before
    assert again["final_test_accuracy"] == summary["final_test_accuracy"]


def test_resume_after_an_epoch_boundary_is_exact(reference_run, tmp_path):
    out = tmp_path / "run"
    train.train_and_evaluate(tiny_config(out, epochs=1))
    assert len(metric_lines(out)) == 1
    train.train_and_evaluate(tiny_config(out, epochs=2), resume=True)
    assert metric_lines(out) == metric_lines(reference_run[0])
    assert_same_state(out, reference_run[0])


@pytest.mark.parametrize("stop_after", [3, 8], ids=["mid-epoch", "end-of-epoch"])
def test_resume_after_sigterm_is_exact(reference_run, tmp_path, monkeypatch, stop_after):
    out = tmp_path / "run"
    monkeypatch.setenv(train.SIGTERM_HOOK_ENV, str(stop_after))
    with pytest.raises(train.TrainingInterrupted) as stopped:
        train.train_and_evaluate(tiny_config(out))
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
    assert stopped.value.checkpoint == str(out / "checkpoints" / str(stop_after))
    _, meta = train.load_checkpoint(out)
    assert (meta["epoch"], meta["step_in_epoch"]) == (0, stop_after)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.delenv(train.SIGTERM_HOOK_ENV)
    train.train_and_evaluate(tiny_config(out))  # rerunning the same command resumes
    assert metric_lines(out) == metric_lines(reference_run[0])
    assert_same_state(out, reference_run[0])


def test_changed_configuration_is_refused(reference_run):
    out = reference_run[0]
    with pytest.raises(ValueError, match=r"different configuration \(lr: 0.05 \(saved\) vs 0.1"):
        train.train_and_evaluate(tiny_config(out, lr=0.1))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    schedule = train_loop.learning_rate_schedule

    def poisoned(config, steps_per_epoch):
        rate = schedule(config, steps_per_epoch)
        return lambda step: float("nan") if step >= 4 else rate(step)  # the 5th update

    monkeypatch.setattr(train_loop, "learning_rate_schedule", poisoned)
    with pytest.raises(train.NonFiniteLossError) as error:
        train.train_and_evaluate(tiny_config(out, checkpoint_every_steps=2))
    message = str(error.value)
    assert "epoch 1, step 5 (global step 5)" in message
    assert str(out / "checkpoints" / "4") in message and "lower --lr" in message
    assert error.value.checkpoint == str(out / "checkpoints" / "4")
    tree, meta = train.load_checkpoint(out)
    assert meta["global_step"] == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tree))
    assert not (out / "metrics.jsonl").exists() and not (out / "summary.json").exists()


def test_steps_are_compiled_with_jaxsep_compiler_options(tmp_path, monkeypatch):
    # The train step is compiled with jaxsep.compiler_options(): an option XLA does not know
    # must reach XLA's compiler and be refused there.
    asked = []

    def options():
        asked.append(True)
        return {"xla_jaxsep_test_no_such_option": 1}

    monkeypatch.setattr(train_loop, "compiler_options", options)
    with pytest.raises(Exception, match="xla_jaxsep_test_no_such_option"):
        train.train_and_evaluate(tiny_config(tmp_path / "run", epochs=1))
    assert asked


def test_restore_best_and_save_best_round_trip(reference_run, tmp_path):
    out, summary = reference_run
    stored, stored_meta = train.load_checkpoint(out, which="best")
    target = jax.tree.map(jnp.zeros_like, stored)  # structure and dtypes only
    tree, meta = train.restore_best(out, target)
    assert meta["test_accuracy"] == summary["best_test_accuracy"] == stored_meta["test_accuracy"]
    jax.tree.map(np.testing.assert_array_equal, tree, stored)
    copy = tmp_path / "copy"
    train.save_best(copy, tree, {"epoch": meta["epoch"], "test_accuracy": 0.5})
    again, again_meta = train.restore_best(copy, target)
    assert again_meta["epoch"] == meta["epoch"] and again_meta["test_accuracy"] == 0.5
    jax.tree.map(np.testing.assert_array_equal, again, stored)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        train.restore_best(tmp_path / "nothing", target)
    assert not (tmp_path / "nothing").exists()  # nothing created on the way


def test_evaluate_run_reloads_the_best_checkpoint(reference_run):
    out, summary = reference_run
    result = train.evaluate_run(out)
    assert result["test_accuracy"] == summary["best_test_accuracy"]
    assert result["epoch"] == summary["best_epoch"] and result["num_test"] == 40
    last = train.evaluate_run(out, which="last")
    assert last["test_accuracy"] == summary["final_test_accuracy"]


def test_overfits_256_examples():
    """The tiny model (same compiled step: dropout on, augmentation off) drives the train
    loss on 256 examples near zero."""
    config = tiny_config(None, epochs=12, lr=0.1, schedule="cosine", warmup_epochs=0.0)
    summary = train.train_and_evaluate(config)
    assert summary["final_train_loss"] < 0.02, summary
    assert summary["final_test_accuracy"] > 0.9  # synthetic test images: the same patterns


def test_bad_setups_fail_before_compute(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="out must be a writable folder"):
        train.train_and_evaluate(tiny_config(blocker / "run"))
    with pytest.raises(ValueError, match="out must be a folder"):
        train.train_and_evaluate(tiny_config(blocker))
    with pytest.raises(ValueError, match="cannot build model 'mobilenet_v2'.*conv"):
        train.train_and_evaluate(tiny_config(None, model="mobilenet_v2", conv="standard"))
    with pytest.raises(FileNotFoundError, match="data_dir '/nonexistent' does not exist"):
        train.train_and_evaluate(tiny_config(None, dataset="cifar10", data_dir="/nonexistent"))
    with pytest.raises(ValueError, match="batch_size must be at most the number of train"):
        train.train_and_evaluate(tiny_config(None, batch_size=512))
    with pytest.raises(ValueError, match="no checkpoint .* to resume from"):
        train.train_and_evaluate(tiny_config(tmp_path / "new"), resume=True)
    assert not (tmp_path / "new" / "config.json").exists()


# --------------------------------------------------------------------------------------------
# The command line (in this process, so it reuses the compiled step)


def config_argv(config: TrainConfig) -> list[str]:
    """``jaxsep train`` flags for ``config`` (fields at their defaults are left out)."""
    argv = []
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def cli_main(argv: list[str]) -> int:
    from jaxsep import cli

    return cli.main(argv)


def test_cli_train_sigterm_resume_and_eval(reference_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", *config_argv(tiny_config(out))]
    assert TrainConfig(**{**tiny_config(None).to_dict(), "out": str(out)}) == tiny_config(out)
    monkeypatch.setenv(train.SIGTERM_HOOK_ENV, "10")  # epoch 2, step 2
    assert cli_main(argv) == 143
    assert "SIGTERM: stopped at epoch 2, step 2 of 8" in capsys.readouterr().err
    monkeypatch.delenv(train.SIGTERM_HOOK_ENV)
    assert cli_main(argv + ["--resume"]) == 0
    assert metric_lines(out) == metric_lines(reference_run[0])
    assert_same_state(out, reference_run[0])

    capsys.readouterr()
    assert cli_main(["eval", "--run", str(out)]) == 0
    best = json.loads((out / "summary.json").read_text())["best_test_accuracy"]
    printed = capsys.readouterr().out
    assert f"test accuracy {100 * best:.2f}%" in printed and "best checkpoint" in printed


def test_cli_reports_bad_configuration(tmp_path, capsys):
    assert cli_main(["train", "--width", "0", "--out", str(tmp_path / "a")]) == 2
    assert "jaxsep train: error: TrainConfig: width must be > 0, but got 0.0" in (
        capsys.readouterr().err
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["train", "--dataset", "synthetic", "--out", str(blocker / "run")]
    assert cli_main(argv) == 2
    assert "out must be a writable folder" in capsys.readouterr().err
    assert cli_main(["eval", "--run", str(tmp_path / "missing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Data parallelism over 4 (CPU) devices, in a subprocess: the device count is fixed when JAX
# starts.

_STOP_AFTER = """
import json, os, sys
import jax
from jaxsep import train

config = train.TrainConfig.from_json(sys.argv[1])
if jax.device_count() > 1:
    try:
        train.train_and_evaluate(config.replace(batch_size=30, out=None))
    except ValueError as error:
        print("BATCH ERROR:", error)
for stop_after in (1, 2):
    os.environ[train.SIGTERM_HOOK_ENV] = str(stop_after)
    try:
        train.train_and_evaluate(config)
    except train.TrainingInterrupted as stopped:
        print("STOPPED:", stopped.checkpoint)
print("DEVICES:", jax.device_count())
"""


def run_two_steps(out: Path, devices: int) -> str:
    """Runs the tiny config for one step, then resumes it for a second, on ``devices`` CPU
    devices in a subprocess (the device count is fixed when JAX starts); returns stdout."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _STOP_AFTER, tiny_config(out).to_json()],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"DEVICES: {devices}" in result.stdout
    return result.stdout


def test_four_devices_match_one(reference_run, tmp_path, monkeypatch):
    one, four = tmp_path / "one", tmp_path / "four"
    printed = run_two_steps(four, devices=4)
    assert (
        "BATCH ERROR: TrainConfig: batch_size must be divisible by the number of devices, "
        "but 30 is not divisible by 4" in printed
    )
    for stop_after in (1, 2):  # the same on one device, in this process (compiled already)
        monkeypatch.setenv(train.SIGTERM_HOOK_ENV, str(stop_after))
        with pytest.raises(train.TrainingInterrupted):
            train.train_and_evaluate(tiny_config(one))
    # The same computation: only the order of floating-point sums differs (BatchNorm
    # statistics and gradients are reduced over 4 shards of 8 examples, not one batch of 32).
    # Measured: the first loss agrees to 1e-7 relative, the parameters after one update to
    # 2e-5 absolute (the update itself moves them by up to 1e-2).
    # From there the training dynamics at initialization amplify any rounding difference: on
    # one device, perturbing the initial parameters by 1e-7 (relative) changes the second
    # step's loss by 1.4e-3 with this config, so that loss gets a tolerance of 1e-3, and later
    # steps (which match neither across device counts nor across summation orders) are not
    # compared.
    tree_1, meta_1 = train.load_checkpoint(one, step=1)
    tree_4, meta_4 = train.load_checkpoint(four, step=1)
    assert meta_1["global_step"] == meta_4["global_step"] == 1
    np.testing.assert_allclose(tree_4["sums"]["loss"], tree_1["sums"]["loss"], rtol=1e-6)
    assert tree_4["sums"]["correct"] == tree_1["sums"]["correct"]
    for a, b in zip(jax.tree.leaves(tree_4["params"]), jax.tree.leaves(tree_1["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    tree_1, meta_1 = train.load_checkpoint(one, step=2)
    tree_4, meta_4 = train.load_checkpoint(four, step=2)  # resumed on 4 devices
    assert meta_1["global_step"] == meta_4["global_step"] == 2
    np.testing.assert_allclose(tree_4["sums"]["loss"], tree_1["sums"]["loss"], rtol=1e-3)


def test_init_from_starts_at_a_runs_best_parameters(reference_run, tmp_path, monkeypatch):
    reference = reference_run[0]
    out = tmp_path / "run"
    # A learning rate far below any parameter's rounding step: the first update keeps them.
    monkeypatch.setenv(train.SIGTERM_HOOK_ENV, "1")
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(tiny_config(out, lr=1e-30, init_from=str(reference)))
    best, _ = train.load_checkpoint(reference, which="best")
    after_one_step, _ = train.load_checkpoint(out, step=1)
    for a, b in zip(jax.tree.leaves(after_one_step["params"]), jax.tree.leaves(best["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-20)
    with pytest.raises(FileNotFoundError, match="init_from must be a run folder with a best"):
        train.train_and_evaluate(tiny_config(None, init_from=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match=r"parameters of another model \(137 arrays, 221114 "):
        train.train_and_evaluate(tiny_config(None, width=0.5, init_from=str(reference)))
