"""Parity of converted models with timm and torchvision, to the logit (``pytest -m parity``).

For every supported name: the source model with random weights, every BatchNorm's affine
parameters and every bias random too, and BatchNorm statistics measured on a calibration batch
(cumulative averages) and then perturbed, so that a swapped or misplaced tensor changes the
output and the output depends on the input. Its state dict is converted and the logits on a
random batch compared: ``max |jaxsep - torch| <= 1e-4 * max |torch|`` in float32, eval mode,
with the depthwise convolutions lowered as "taps" and as "xla" (the names the issue lists; the
other widths and depths as "xla"). One model per family and source also runs in train mode
(batch statistics; dropout and stochastic depth off) and compares every stage's output, so
that a failure says where. Inputs are 64x64 (an even size at every stride-2 layer, where TF
"SAME" and symmetric padding differ).

Needs the ``parity`` extra: ``pip install -e ".[test,parity]"`` (see docs/convert.md).
"""

from __future__ import annotations

import functools
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsep import convert
from jaxsep.convert import predict
from jaxsep.convert.api import SOURCES

pytestmark = pytest.mark.parity

RESOLUTION = 64
BATCH = 2
CALIBRATION_BATCH = 8
# Train mode normalizes by the batch's statistics: over 2 x 2 x 2 values at the last stage for
# a batch of 2, which leaves little for rounding to hide in; 4 images halve the error.
TRAIN_BATCH = 4
RTOL = 1e-4  # of max |torch logits|, float32
FROM = {"timm": convert.from_timm, "torchvision": convert.from_torchvision}

# Every name, with both lowerings for the names the issue lists and "xla" for the other widths
# and depths of those families, which test the channel rules more than the lowering. Models run
# eagerly: XLA compiles each operation once per shape, and the sources share most shapes
# (timm's and torchvision's EfficientNet-B5 are one architecture), where compiling each whole
# model costs up to a minute for the largest.
LISTED = {
    ("timm", "mobilenetv1_100"),
    ("timm", "mobilenetv2_100"),
    ("timm", "mobilenetv3_large_100"),
    ("timm", "mobilenetv3_small_100"),
    ("timm", "efficientnet_b0"),
    ("timm", "tf_efficientnet_lite0"),
    ("torchvision", "mobilenet_v2"),
    ("torchvision", "mobilenet_v3_large"),
    ("torchvision", "mobilenet_v3_small"),
    ("torchvision", "shufflenet_v2_x1_0"),
    ("torchvision", "efficientnet_b0"),
}
CASES = [
    (library, name, impl)
    for library, names in SOURCES.items()
    for name in names
    for impl in (("taps", "xla") if (library, name) in LISTED else ("xla",))
]


def _torch():
    try:
        import timm  # noqa: F401
        import torch
        import torchvision  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"the parity tests need torch, torchvision and timm: pip install -e "
            f'".[test,parity]" ({error})'
        ) from error
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    return torch


def source_model(library: str, name: str, seed: int = 0):
    """The timm/torchvision model with random weights and perturbed BatchNorm statistics, in
    eval mode."""
    torch = _torch()
    import timm
    import torchvision

    torch.manual_seed(seed)
    if library == "timm":
        model = timm.create_model(name, pretrained=False)
    else:
        model = torchvision.models.get_model(name, weights=None)
    calibrate(model, seed)
    return model


def calibrate(model, seed: int) -> None:
    """Random BatchNorm affine parameters and biases; then BatchNorm statistics measured on a
    calibration batch with those weights, and perturbed.

    Random networks have near-constant channels (variance ~1e-4 of the layer's mean); their
    large gains would amplify float32 rounding through the depth of an EfficientNet until
    1e-4 is not a fair bound, so every variance gets a floor of 0.1 x the layer's mean (as a
    trained network's statistics are conditioned).
    """
    torch = _torch()
    generator = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for norm in norms:
            c = norm.num_features
            norm.weight.copy_(1 + 0.3 * torch.randn(c, generator=generator))
            norm.bias.copy_(0.2 * torch.randn(c, generator=generator))
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and bias is not None:
                bias.copy_(0.1 * torch.randn(bias.shape, generator=generator))
        momenta = [norm.momentum for norm in norms]
        model.eval()  # dropout and stochastic depth off; only BatchNorm measures
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: exactly the calibration batch's
            norm.train()
        model(torch.randn(CALIBRATION_BATCH, 3, RESOLUTION, RESOLUTION, generator=generator))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            c = norm.num_features
            var = norm.running_var
            norm.running_mean += 0.1 * var.sqrt() * torch.randn(c, generator=generator)
            var *= torch.exp(0.2 * (2 * torch.rand(c, generator=generator) - 1))
            var += 0.1 * var.mean()
    model.eval()


def images(seed: int = 2, batch: int = BATCH) -> np.ndarray:
    """``(N, 3, H, W)`` float32, the torch layout."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, RESOLUTION, RESOLUTION)).astype(np.float32)


def nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def relative_error(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


@functools.lru_cache(maxsize=1)  # the cases of one name run in a row; big models go after
def reference(library: str, name: str):
    """The source model, its state dict and its eval logits."""
    torch = _torch()
    model = source_model(library, name)
    x = images()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return model, model.state_dict(), logits


@pytest.mark.parametrize(
    "library, name, impl", CASES, ids=[f"{l}:{n}-{i}" for l, n, i in CASES]
)
def test_eval_logits_match(library, name, impl):
    model, state, want = reference(library, name)
    converted = FROM[library](name, state, impl=impl)
    error = relative_error(converted(nhwc(images())), want)
    print(f"PARITY {library}:{name} impl={impl} eval max-rel-error {error:.2e}")
    assert error <= RTOL


@pytest.mark.parametrize("wrong", [{"padding": "same"}, {"bn_epsilon": 1e-3}])
def test_the_bound_catches_a_wrong_setting(wrong):
    """The test would see the two silent errors of a port: TF padding for PyTorch's, or
    another BatchNorm eps."""
    _, state, want = reference("timm", "mobilenetv2_100")
    converted = convert.from_timm("mobilenetv2_100", state, impl="xla", **wrong)
    assert relative_error(converted(nhwc(images())), want) > 10 * RTOL


# ---------------------------------------------------------------------------------------------
# One model per family: train mode, and every stage's output.


def _timm_stages(model, head: str | None = "bn2"):
    stages = [model.bn1] + [block for stage in model.blocks for block in stage]
    return stages + ([getattr(model, head)] if head else [])


def _tv_efficientnet_stages(model):
    features = list(model.features)
    return [features[0], *(block for stage in features[1:-1] for block in stage), features[-1]]


def _tv_shufflenet_stages(model):
    units = [unit for stage in (model.stage2, model.stage3, model.stage4) for unit in stage]
    return [model.conv1, *units, model.conv5]


def _jaxsep_stages(model, x):
    """The stem's, every block's and the head's outputs (the max pool is not a stage)."""
    outputs = [model.stem(x)]
    x = outputs[0]
    if getattr(model, "use_max_pool", False):
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in model.blocks:
        x = block(x)
        outputs.append(x)
    if getattr(model, "head", None) is not None:
        outputs.append(model.head(x))
    return outputs


NO_DROP_PATH = {"drop_path_rate": 0.0}
# family -> (library, name, the source's stage modules, jaxsep's extra arguments in train mode)
FAMILIES = {
    "timm-mobilenetv1": ("timm", "mobilenetv1_100", functools.partial(_timm_stages, head=None),
                         {}),
    "timm-mobilenetv2": ("timm", "mobilenetv2_100", _timm_stages, {}),
    "timm-mobilenetv3": ("timm", "mobilenetv3_large_100",
                         functools.partial(_timm_stages, head=None), {}),
    "timm-efficientnet": ("timm", "efficientnet_b0", _timm_stages, NO_DROP_PATH),
    "timm-tf_efficientnet_lite": ("timm", "tf_efficientnet_lite0", _timm_stages, NO_DROP_PATH),
    "torchvision-mobilenet_v2": ("torchvision", "mobilenet_v2", lambda m: list(m.features), {}),
    "torchvision-mobilenet_v3": ("torchvision", "mobilenet_v3_small",
                                 lambda m: list(m.features), {}),
    "torchvision-efficientnet": ("torchvision", "efficientnet_b0", _tv_efficientnet_stages,
                                 NO_DROP_PATH),
    "torchvision-shufflenet_v2": ("torchvision", "shufflenet_v2_x1_0", _tv_shufflenet_stages,
                                  {}),
}


def _no_dropout(model) -> None:
    """Dropout and stochastic depth off in train mode (both are random, so not comparable)."""
    torch = _torch()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):  # timm's DropPath
            module.drop_prob = 0.0
        if type(module).__name__ == "StochasticDepth":  # torchvision's
            module.p = 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_train_mode_logits_match(family):
    torch = _torch()
    library, name, _, train_kwargs = FAMILIES[family]
    model, state, _ = reference(library, name)
    converted = FROM[library](name, state, dropout_rate=0.0, **train_kwargs)
    train_model = source_model(library, name)
    _no_dropout(train_model)
    train_model.train()
    x = images(seed=5, batch=TRAIN_BATCH)
    with torch.no_grad():
        want = train_model(torch.from_numpy(x)).numpy()
    converted.train()
    error = relative_error(converted(nhwc(x)), want)
    print(f"PARITY {library}:{name} train max-rel-error {error:.2e}")
    assert error <= RTOL


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_matches(family):
    torch = _torch()
    library, name, source_stages, _ = FAMILIES[family]
    model, state, _ = reference(library, name)
    captured = []
    hooks = [
        module.register_forward_hook(lambda _, __, out: captured.append(out.numpy()))
        for module in source_stages(model)
    ]
    x = images()
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for hook in hooks:
            hook.remove()
    ours = _jaxsep_stages(FROM[library](name, state, impl="xla"), nhwc(x))
    assert len(ours) == len(captured)
    for index, (got, want) in enumerate(zip(ours, captured)):
        error = relative_error(got, want.transpose(0, 2, 3, 1))
        assert error <= RTOL, f"stage {index}: max-rel-error {error:.2e}"


# ---------------------------------------------------------------------------------------------
# Preprocessing: the recorded transforms are the sources'.


@pytest.mark.parametrize("library", SOURCES)
def test_preprocessing_is_the_sources(library):
    _torch()
    import timm
    import torchvision

    for name, source in SOURCES[library].items():
        mine = source.preprocessing
        if library == "timm":
            cfg = timm.models.get_pretrained_cfg(name)
            size = cfg.input_size[-1]
            want = dict(
                resize=math.floor(size / cfg.crop_pct), crop=size, crop_mode=cfg.crop_mode,
                interpolation=cfg.interpolation, mean=list(cfg.mean), std=list(cfg.std),
            )
        else:
            t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            want = dict(
                resize=t.resize_size[0], crop=t.crop_size[0], crop_mode="center",
                interpolation=t.interpolation.value, mean=list(t.mean), std=list(t.std),
            )
        assert dict(mine) == want, name


def test_preprocess_matches_the_sources_transforms(tmp_path):
    _torch()
    import timm
    import torchvision
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (300, 260, 3), np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    transforms = {
        ("torchvision", "mobilenet_v2"):
            torchvision.models.get_model_weights("mobilenet_v2").DEFAULT.transforms(),
        ("timm", "mobilenetv1_100"): timm.data.create_transform(
            **timm.data.resolve_data_config({}, model=timm.create_model("mobilenetv1_100"))
        ),
    }
    for (library, name), transform in transforms.items():
        with Image.open(path) as image:
            want = transform(image.convert("RGB")).numpy().transpose(1, 2, 0)
        got = predict.preprocess(path, SOURCES[library][name].preprocessing)
        # Both resize and crop with PIL in 8 bits: only the float normalization can round.
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Files: what the safetensors package and torch.save write, end to end through the CLI.


def test_load_state_dict_reads_what_safetensors_and_torch_write(tmp_path):
    torch = _torch()
    from safetensors.torch import save_file

    from jaxsep.convert import load_state_dict

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "half": torch.randn(5, generator=generator).half(),
        "brain": torch.randn(2, 3, generator=generator).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(7),
        "ints": torch.arange(-3, 3, dtype=torch.int32),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    torch.save(tensors, tmp_path / "model.pth")
    nested = {"state_dict": {f"module.{k}": v for k, v in tensors.items()}, "epoch": 3}
    torch.save(nested, tmp_path / "checkpoint.pth.tar")
    for file in ("model.safetensors", "model.pth", "checkpoint.pth.tar"):
        loaded = load_state_dict(tmp_path / file)
        assert sorted(loaded) == sorted(tensors), file
        for name, tensor in tensors.items():
            want = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
            assert str(loaded[name].dtype) == str(tensor.dtype).replace("torch.", ""), name
            np.testing.assert_array_equal(loaded[name].astype(want.dtype), want, err_msg=name)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*no mapping of names to tensors"):
        load_state_dict(tmp_path / "list.pth")


def test_cli_convert_of_a_torchvision_file_gives_its_logits(tmp_path):
    torch = _torch()
    from safetensors.torch import save_file

    from jaxsep import cli, models

    model, state, want = reference("torchvision", "mobilenet_v3_small")
    save_file(dict(state), tmp_path / "mobilenet_v3_small.safetensors")
    out = tmp_path / "run"
    assert cli.main(["convert", "--from", "torchvision:mobilenet_v3_small", "--checkpoint",
                     str(tmp_path / "mobilenet_v3_small.safetensors"), "--out", str(out)]) == 0
    loaded = models.load(out)
    assert relative_error(loaded(nhwc(images())), want) <= RTOL
    torch.save(state, tmp_path / "weights.pth")
    assert cli.main(["convert", "--from", "torchvision:mobilenet_v3_small", "--checkpoint",
                     str(tmp_path / "weights.pth"), "--out", str(tmp_path / "run2")]) == 0
    assert relative_error(models.load(tmp_path / "run2")(nhwc(images())), want) <= RTOL
