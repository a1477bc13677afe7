"""Tests for jaxsep.train: the config, schedules, weight-decay mask, and the training loop on
tiny synthetic data (overfitting, exact resume after a finished epoch or a stop inside one,
stops by a signal or by a hook, hooks, non-finite loss, evaluation of a saved run).

Every loop test uses tiny_config() (conftest.py) or a config that compiles the same steps,
so that this process compiles its train step once; the reference run is trained once per
session (conftest.reference_run). The 4-device test runs in a subprocess (the device count is
fixed when JAX starts). The command line is tested in test_cli.py; slower tests (other
compiled steps, the command in a subprocess, real CIFAR-10) are in test_train_slow.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import SendSignal, assert_same_state, metric_lines, tiny_config
from jaxsep import models
from jaxsep import train
from jaxsep.train import TrainConfig, hooks, run_folder
from jaxsep.train import loop as train_loop


# --------------------------------------------------------------------------------------------
# TrainConfig


def test_config_json_round_trip(tmp_path):
    config = TrainConfig(model="mobilenet_v2", width=1, epochs=3, lr=0.2, resolution=24)
    assert isinstance(config.width, float)  # ints are stored as floats
    assert TrainConfig.from_json(config.to_json()) == config
    (tmp_path / "config.json").write_text(config.to_json())
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_configs_with_model_args_are_hashable_and_equal_by_value():
    a = TrainConfig(model_args={"padding": "symmetric", "bn_epsilon": 1e-3})
    b = TrainConfig(model_args={"bn_epsilon": 1e-3, "padding": "symmetric"})
    assert a == b and hash(a) == hash(b) and {a: "run"}[b] == "run"
    assert a != TrainConfig() and len({a, b, TrainConfig()}) == 2


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


def test_run_log_lines_shown_unless_the_application_chose(capsys):
    """visible_logs shows jaxsep.train's INFO lines on stderr when logging is unconfigured,
    and keeps an application's own level for that logger."""
    from jaxsep.train import runtime

    logger = runtime.logger
    assert logger.level == 0  # NOTSET: nobody chose
    with runtime.visible_logs():
        logger.info("shown %d", 1)
    logger.setLevel("WARNING")
    try:
        with runtime.visible_logs():
            logger.info("hidden")
    finally:
        logger.setLevel(0)
    err = capsys.readouterr().err
    assert "shown 1" in err and "hidden" not in err


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


def test_run_folder_states(tmp_path):
    """The one rule train and sweep share (no training: the files alone decide)."""
    out = tmp_path / "run"
    config = tiny_config(out)
    assert run_folder.state(out, config) == "new"  # no folder
    out.mkdir()
    (out / "config.json").write_text("not JSON")  # a start stopped before its first checkpoint
    (out / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a save cut short
    assert run_folder.state(out, config) == "new"
    (out / "checkpoints" / "8").mkdir()
    with pytest.raises(run_folder.RunFolderError, match="cannot read the existing"):
        run_folder.state(out, config)
    (out / "config.json").unlink()
    with pytest.raises(run_folder.RunFolderError, match="checkpoints but no config.json"):
        run_folder.state(out, config)
    (out / "config.json").write_text(config.to_json())
    assert run_folder.state(out, config) == "partial"
    (out / "summary.json").write_text(json.dumps({"epochs": 2}))
    assert run_folder.state(out, config) == "finished"
    assert run_folder.state(out, config.replace(quiet=False, data_dir="elsewhere")) == "finished"
    assert run_folder.state(out, config.replace(epochs=3)) == "partial"  # extends the run
    with pytest.raises(run_folder.ForeignRunError, match=r"\(lr: 0.05 \(saved\) vs 0.1 "
                                                         r"\(given\)\)") as foreign:
        run_folder.state(out, config.replace(lr=0.1))
    assert foreign.value.differences == {"lr": (0.05, 0.1)}


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


def test_rerun_of_a_finished_run_changes_nothing(reference_run, tmp_path):
    out, summary = reference_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)  # the session's reference run stays as it was
    again = train.train_and_evaluate(tiny_config(copy))
    assert metric_lines(copy) == metric_lines(out)
    assert again["final_test_accuracy"] == summary["final_test_accuracy"]


def test_resume_after_an_epoch_boundary_is_exact(reference_run, tmp_path):
    out = tmp_path / "run"
    train.train_and_evaluate(tiny_config(out, epochs=1))
    assert len(metric_lines(out)) == 1
    train.train_and_evaluate(tiny_config(out, epochs=2), resume=True)
    assert metric_lines(out) == metric_lines(reference_run[0])
    assert_same_state(out, reference_run[0])


@pytest.mark.parametrize("stop_after", [3, 8], ids=["mid-epoch", "end-of-epoch"])
def test_resume_after_sigterm_is_exact(reference_run, tmp_path, stop_after):
    """A real SIGTERM (sent by a hook right after a step) and a hook's stop request save the
    same checkpoint and stop alike; rerunning the same command resumes either exactly."""
    by_signal, by_request = tmp_path / "signal", tmp_path / "request"
    with pytest.raises(train.TrainingInterrupted) as stopped:
        train.train_and_evaluate(tiny_config(by_signal), hooks=[SendSignal(stop_after)])
    with pytest.raises(train.TrainingInterrupted) as requested:
        train.train_and_evaluate(tiny_config(by_request), hooks=[hooks.StopAtStep(stop_after)])
    for error, out in ((stopped.value, by_signal), (requested.value, by_request)):
        assert error.signum == signal.SIGTERM and error.exit_code == 143
        assert error.checkpoint == str(out / "checkpoints" / str(stop_after))
        assert str(error) == (f"SIGTERM: stopped at epoch 1, step {stop_after} of 8; checkpoint "
                              f"saved to {error.checkpoint}; rerun the same command to resume")
        _, meta = train.load_checkpoint(out)
        assert (meta["epoch"], meta["step_in_epoch"]) == (0, stop_after)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert_same_state(by_signal, by_request)
    train.train_and_evaluate(tiny_config(by_signal))  # rerunning the same command resumes
    assert metric_lines(by_signal) == metric_lines(reference_run[0])
    assert_same_state(by_signal, reference_run[0])


class Recorder(hooks.Hook):
    """Records every call; stops the run from end_epoch after epoch ``stop_after_epoch``."""

    def __init__(self, stop_after_epoch: int | None = None):
        self.calls: list[tuple] = []
        self.stop_after_epoch = stop_after_epoch

    def start_epoch(self, loop):
        self.calls.append(("start_epoch", loop.epoch, loop.step_in_epoch, loop.global_step))

    def after_step(self, step, loop):
        assert math.isfinite(float(step.loss))
        self.calls.append(("after_step", step.epoch, step.step, step.global_step,
                           step.learning_rate, step.steps_per_epoch))

    def end_epoch(self, metrics, loop):
        self.calls.append(("end_epoch", metrics))
        if metrics["epoch"] == self.stop_after_epoch:
            loop.request_stop()

    def close(self, loop):
        self.calls.append(("close",))


def test_hooks_see_every_step_and_may_stop_between_epochs(reference_run, tmp_path):
    """Over an interrupted and resumed run, hooks see every step once, in order, and each
    epoch's metrics line; a stop requested at an epoch's end stops before the next epoch
    (its end saved) and resumes exactly. Plain callables are after_step hooks."""
    out = tmp_path / "run"
    first, second, plain = Recorder(), Recorder(stop_after_epoch=1), []
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(tiny_config(out), hooks=[first, hooks.StopAtStep(5)])
    with pytest.raises(train.TrainingInterrupted) as between:
        train.train_and_evaluate(tiny_config(out), hooks=[second])
    assert between.value.checkpoint == str(out / "checkpoints" / "8")
    assert str(between.value).startswith("SIGTERM: stopped after epoch 1 of 2; checkpoint")
    train.train_and_evaluate(tiny_config(out), hooks=[lambda step, loop: plain.append(step)])
    assert metric_lines(out) == metric_lines(reference_run[0])
    assert_same_state(out, reference_run[0])

    steps = [c for c in first.calls + second.calls if c[0] == "after_step"]
    steps += [("after_step", s.epoch, s.step, s.global_step, s.learning_rate, s.steps_per_epoch)
              for s in plain]
    assert [c[3] for c in steps] == list(range(1, 17))
    assert [(c[1], c[2]) for c in steps] == [(e, k) for e in (1, 2) for k in range(1, 9)]
    assert {c[5] for c in steps} == {8}
    rates = [0.0125, 0.025, 0.0375] + [0.05] * 13  # a warm-up of half an epoch, then constant
    assert [c[4] for c in steps] == pytest.approx(rates)
    assert first.calls[0] == ("start_epoch", 1, 0, 0) and first.calls[-1] == ("close",)
    assert second.calls[0] == ("start_epoch", 1, 5, 5)  # resumed inside epoch 1
    (ended,) = [c[1] for c in second.calls if c[0] == "end_epoch"]
    assert {k: v for k, v in ended.items() if k not in train.TIMING_FIELDS} == (
        metric_lines(reference_run[0])[0])


def test_stop_before_the_first_step(reference_run, tmp_path, monkeypatch):
    """SIGTERM while the steps compile stops the run before its first step, with a word and
    nothing saved; --resume then has nothing to resume, and the same command starts afresh."""
    out = tmp_path / "run"
    compiler_options = train_loop.compiler_options

    def signalled():  # called just before the train step compiles
        os.kill(os.getpid(), signal.SIGTERM)
        return compiler_options()

    monkeypatch.setattr(train_loop, "compiler_options", signalled)
    with pytest.raises(train.TrainingInterrupted) as stopped:
        train.train_and_evaluate(tiny_config(out))
    assert stopped.value.exit_code == 143 and stopped.value.checkpoint is None
    assert str(stopped.value).startswith(
        "stopped by SIGTERM before the first step; nothing to save; rerun the same command "
        "to start")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert (out / "config.json").exists() and not run_folder.has_checkpoint(out)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="no checkpoint .* to resume from .* rerun without"):
        train.train_and_evaluate(tiny_config(out), resume=True)
    train.train_and_evaluate(tiny_config(out))
    assert metric_lines(out) == metric_lines(reference_run[0])
    assert_same_state(out, reference_run[0])


def test_profile_and_log_hooks(tmp_path):
    lines = []
    train.train_and_evaluate(
        tiny_config(None, epochs=1),
        hooks=[hooks.Profile(tmp_path / "trace", 2, 3), hooks.LogEvery(4, log=lines.append)],
    )
    assert [line.split(" (")[0] for line in lines] == ["step 4", "step 8"]
    assert all("loss " in line and "lr 0.05" in line for line in lines)
    assert list((tmp_path / "trace").rglob("*.xplane.pb"))  # one trace of steps 2-3
    with pytest.raises(ValueError, match="Profile: last must be >= first"):
        hooks.Profile(tmp_path, 3, 2)
    with pytest.raises(ValueError, match="StopAtStep: global_step must be >= 1, but got 0"):
        hooks.StopAtStep(0)
    with pytest.raises(TypeError, match="hooks must be Hook objects or callables"):
        train.train_and_evaluate(tiny_config(None), hooks=[42])


def test_the_test_seam_is_gone_but_its_name_stays():
    with pytest.warns(DeprecationWarning, match="StopAtStep"):
        assert train.SIGTERM_HOOK_ENV == "JAXSEP_TEST_SIGTERM_AT_STEP"
    with pytest.warns(DeprecationWarning):
        from jaxsep.train.loop import SIGTERM_HOOK_ENV  # noqa: F401


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
    config = tiny_config(None, epochs=12, lr=0.1, schedule="cosine", warmup_epochs=0.0,
                         eval_every=12)
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


def test_init_from_starts_at_a_runs_best_parameters(reference_run, tmp_path):
    reference = reference_run[0]
    out = tmp_path / "run"
    # A learning rate far below any parameter's rounding step: the first update keeps them.
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(tiny_config(out, lr=1e-30, init_from=str(reference)),
                                 hooks=[hooks.StopAtStep(1)])
    best, _ = train.load_checkpoint(reference, which="best")
    after_one_step, _ = train.load_checkpoint(out, step=1)
    for a, b in zip(jax.tree.leaves(after_one_step["params"]), jax.tree.leaves(best["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-20)
    with pytest.raises(FileNotFoundError, match="init_from must be a run folder with a best"):
        train.train_and_evaluate(tiny_config(None, init_from=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match=r"does not fit this run's model; the folder holds "
                       r"mobilenet_v1 x0.25, this run is mobilenet_v1 x0.5: .*must have shape"):
        train.train_and_evaluate(tiny_config(None, width=0.5, init_from=str(reference)))
