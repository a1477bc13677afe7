"""The zoo's models at initialization: how large the classifier's input is, and how far one
SGD step of the shared recipe moves them (experiment 12, ShuffleNetV1's divergent start).

With the zoo's recipe (SGD, learning rate 0.1 from the first step) ShuffleNetV1 diverges in
its first steps at both widths and every other family does not. A linear classifier's step
on the logits grows with the square of its input's norm, and ShuffleNetV1 ends on a ReLU of
residual sums, where the other families end on a 1x1 convolution with BatchNorm (or a
BatchNorm-ed bottleneck). This script measures, for every point of ``experiments/zoo.toml``
built exactly as the sweep builds it (its configuration, seed 0, train mode):

* the classifier's input (global-average-pooled features): RMS over all entries and mean L2
  norm per image;
* the classifier kernel's relative step ``lr * |grad| / |kernel|`` at the recipe's rate;
* the cross-entropy loss on the batch before and after one plain SGD step (learning rate
  0.1, no momentum or weight decay: the first step of the recipe) on that same batch, both
  forward passes with the same random masks (stochastic depth).

The batch: 128 standard-normal 32x32 RGB images (the harness normalizes CIFAR-10 per
channel, so real inputs have about this scale) with random labels, from fixed seeds. No
timing: the numbers depend only on the arithmetic.

    python experiments/feature_scale.py                 # writes results/feature_scale.{json,md}
    python experiments/feature_scale.py --quick --out /tmp/f   # two small models, smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxsep
from jaxsep import models, sweep
from jaxsep._io import atomic_write
from jaxsep.train.model_from_config import model_kwargs

from _timing import device_description

HERE = Path(__file__).resolve().parent
ZOO = HERE / "zoo.toml"
LEARNING_RATE = 0.1  # the zoo recipe's
BATCH = 128
QUICK_POINTS = ("model=shufflenet_v1,width=0.5", "model=shufflenet_v2,width=0.5")


# The classifier's input of the forward pass being traced (set by _Capture, read by the
# loss function within the same trace).
_CAPTURED: dict[str, jax.Array] = {}


class _Capture(nnx.Module):
    """Wraps the classifier, handing its input (the pooled features) to ``_CAPTURED``."""

    def __init__(self, classifier: nnx.Module):
        self.classifier = classifier

    def __call__(self, features: jax.Array) -> jax.Array:
        _CAPTURED["features"] = features
        return self.classifier(features)


def measure(config, images: jax.Array, labels: jax.Array) -> dict:
    """The features' scale, the classifier's relative step and the loss around one SGD step
    for the model of ``config`` (a :class:`jaxsep.train.TrainConfig`) at initialization."""
    model = models.create(config.model, rngs=nnx.Rngs(jax.random.key(config.seed)),
                          **model_kwargs(config))
    model.classifier = _Capture(model.classifier)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(LEARNING_RATE), wrt=nnx.Param)

    def loss_fn(net):
        logits = net(images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, _CAPTURED.pop("features")

    @nnx.jit
    def first_step(model, optimizer):
        # The second forward pass draws the same random masks as the first (EfficientNet's
        # stochastic depth is on in train mode), so that the two losses differ by the step.
        keys = jax.tree.map(jnp.copy, nnx.state(model, nnx.RngState))
        (loss, features), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        kernel = model.classifier.classifier.kernel[...]
        kernel_grad = grads["classifier"]["classifier"]["kernel"][...]
        optimizer.update(model, grads)
        nnx.update(model, keys)
        loss_after, _ = loss_fn(model)
        return {
            "feature_dim": jnp.asarray(features.shape[-1]),
            "feature_rms": jnp.sqrt(jnp.mean(jnp.square(features))),
            "feature_norm": jnp.mean(jnp.linalg.norm(features, axis=-1)),
            "classifier_relative_step": LEARNING_RATE * jnp.linalg.norm(kernel_grad)
            / jnp.linalg.norm(kernel),
            "loss_before": loss,
            "loss_after_one_step": loss_after,
        }

    values = first_step(model, optimizer)
    return {key: float(value) for key, value in values.items()}


def markdown(rows: list[dict], device: str) -> str:
    lines = [
        "# The zoo's models at initialization: classifier input and one SGD step",
        "",
        "`python experiments/feature_scale.py`; each model built as `experiments/zoo.toml` "
        "builds it (seed 0, train mode); a batch of 128 standard-normal 32x32 images with "
        f"random labels; one plain SGD step at learning rate {LEARNING_RATE} on that batch. "
        f"Device: {device}; jaxsep {jaxsep.__version__}, jax {jax.__version__}.",
        "",
        "| point | features | feature RMS | mean feature norm | classifier lr·|g|/|w| "
        "| loss before | loss after one step |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['point']} | {int(row['feature_dim'])} | {row['feature_rms']:.3f} "
            f"| {row['feature_norm']:.2f} | {row['classifier_relative_step']:.3f} "
            f"| {row['loss_before']:.3f} | {row['loss_after_one_step']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two width-0.5 ShuffleNets only (a smoke test)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="folder for feature_scale.json and .md (default: %(default)s)")
    args = parser.parse_args(argv)
    zoo = sweep.load_sweep(ZOO)
    points = [zoo.point(label) for label in QUICK_POINTS] if args.quick else zoo.points
    images = jax.random.normal(jax.random.key(0), (BATCH, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(1), (BATCH,), 0, 10)
    rows = []
    for point in points:
        row = {"point": point.label, **measure(point.config, images, labels)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    device = device_description()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "feature_scale.json", json.dumps(
        {"learning_rate": LEARNING_RATE, "batch": BATCH, "device": device,
         "jax": jax.__version__, "jaxsep": jaxsep.__version__, "rows": rows}, indent=1) + "\n")
    atomic_write(args.out / "feature_scale.md", markdown(rows, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
