"""Tests of jaxsep.convert that need no torch: every name's mapping covers its model, the
round trip through a source-named state dict, bad state dicts, the folder, the CLI.

The state dicts here come from jaxsep models through the inverse mapping (``export``); the
logits against timm and torchvision themselves are in tests/test_convert_parity.py.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsep import cli, convert, models
from jaxsep.convert import _mapping
from jaxsep.convert._convert import export
from jaxsep.convert.api import SOURCES
from jaxsep.convert.predict import class_names, preprocess
from jaxsep.models._saved import fill_random_streams
from test_convert_files import write_safetensors

# One name per naming scheme and family, and the depth rules (B1's repeats, Lite's fixed first
# and last stages); tests/test_convert_parity.py converts every name.
MAPPED = [
    ("timm", "mobilenetv1_100"),
    ("timm", "mobilenetv2_035"),
    ("timm", "mobilenetv3_large_100"),
    ("timm", "mobilenetv3_small_050"),
    ("timm", "efficientnet_b1"),
    ("timm", "tf_efficientnet_lite1"),
    ("torchvision", "mobilenet_v2"),
    ("torchvision", "mobilenet_v3_small"),
    ("torchvision", "shufflenet_v2_x0_5"),
    ("torchvision", "efficientnet_b1"),
]
FROM = {"timm": convert.from_timm, "torchvision": convert.from_torchvision}
SMALL = ("timm", "mobilenetv2_035")  # a small model for the round trips
# One compiled forward for all models of one structure (the eager one dispatches op by op).
forward = nnx.jit(lambda model, x: model(x))


def source_model(library: str, name: str, seed: int = 0, **kwargs) -> nnx.Module:
    """A jaxsep model of a source's architecture with random weights and statistics (drawn by
    NumPy into an abstract model: much faster than the model's own initializers)."""
    source = SOURCES[library][name]
    model = nnx.eval_shape(lambda: models.create(source.model, **{**source.kwargs, **kwargs}))
    rng = np.random.default_rng(seed)
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, (nnx.Param, nnx.BatchStat)):
            shape = variable.shape
            if path[-1] == "var":
                values = rng.uniform(0.5, 1.5, shape)
            else:  # ~ unit-variance activations: weights scaled by the fan-in
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 10
                values = rng.standard_normal(shape) / np.sqrt(fan_in)
            variable.set_value(jnp.asarray(values, jnp.float32))
    fill_random_streams(model)
    model.eval()
    return model


@pytest.mark.parametrize("library, name", MAPPED, ids=[f"{l}:{n}" for l, n in MAPPED])
def test_every_name_maps_every_variable_once(library, name):
    source = SOURCES[library][name]
    model = nnx.eval_shape(lambda: models.create(source.model, **source.kwargs))
    expected = _mapping.targets(source.pairs(model))
    mapped = {id(t.variable) for t in expected.values()}
    assert len(mapped) == len(expected)  # no variable gets two source tensors
    variables = [
        path for path, leaf in nnx.iter_graph(model)
        if isinstance(leaf, (nnx.Param, nnx.BatchStat)) and id(leaf) not in mapped
    ]
    assert variables == []  # every parameter and statistic has a source tensor
    assert source.kwargs["padding"] in ("same", "symmetric")
    assert set(source.preprocessing) == {
        "resize", "crop", "crop_mode", "interpolation", "mean", "std"
    }


def test_round_trip_through_source_names_keeps_every_variable():
    library, name = SMALL
    model = source_model(library, name)
    state = export(SOURCES[library][name], model)
    assert "conv_stem.weight" in state and state["conv_stem.weight"].shape == (16, 3, 3, 3)
    converted = convert.from_timm(name, state)
    want = nnx.state(model, nnx.Param, nnx.BatchStat)
    got = nnx.state(converted, nnx.Param, nnx.BatchStat)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert converted.stem.norm.use_running_average  # eval mode
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    np.testing.assert_array_equal(forward(converted, x), forward(model, x))


def test_torch_layouts_are_transposed_to_jaxsep_layouts():
    model = source_model("torchvision", "mobilenet_v2", width_multiplier=0.35)
    state = export(SOURCES["torchvision"]["mobilenet_v2"], model)
    stem, dw = model.stem.conv.kernel[...], model.blocks[1].depthwise.conv.kernel[...]
    expand, classifier = model.blocks[1].expand.conv.kernel[...], model.classifier.kernel[...]
    # OIHW <- HWIO, depthwise (C, 1, kh, kw) <- (kh, kw, 1, C), (O, C, 1, 1) <- (C, O), (O, C)
    np.testing.assert_array_equal(state["features.0.0.weight"][5, 2, 0, 1], stem[0, 1, 2, 5])
    np.testing.assert_array_equal(state["features.2.conv.1.0.weight"][7, 0, 2, 0], dw[2, 0, 0, 7])
    np.testing.assert_array_equal(state["features.2.conv.0.0.weight"][9, 3, 0, 0], expand[3, 9])
    np.testing.assert_array_equal(state["classifier.1.weight"][4, 6], classifier[6, 4])
    np.testing.assert_array_equal(
        state["features.0.1.running_var"], model.stem.norm.var[...]
    )


def small_state() -> dict[str, np.ndarray]:
    library, name = SMALL
    return export(SOURCES[library][name], source_model(library, name))


def test_unknown_name_lists_the_supported_names():
    with pytest.raises(ValueError, match=r"from_timm: name must be one of \[.*'mobilenetv2_100'"
                       r".*\], but got 'mobilenetv9_100'"):
        convert.from_timm("mobilenetv9_100", {})
    with pytest.raises(ValueError, match=r"from_torchvision: name must be one of .*'mobilenet_v2'"):
        convert.from_torchvision("mobilenetv2_100", {})


def test_a_missing_key_is_named_with_its_shape():
    state = small_state()
    del state["blocks.1.0.conv_dw.weight"]
    with pytest.raises(ValueError, match=r"from_timm\('mobilenetv2_035'\).*missing 1 key.*"
                       r"'blocks.1.0.conv_dw.weight' \(expected shape \(48, 1, 3, 3\)\)"):
        convert.from_timm(SMALL[1], state)


def test_an_unexpected_key_is_named_with_its_shape():
    state = small_state()
    state["blocks.9.0.conv_dw.weight"] = np.zeros((8, 1, 3, 3), np.float32)
    state["bn1.num_batches_tracked"] = np.array(3)  # PyTorch's counter is accepted, not used
    with pytest.raises(ValueError, match=r"1 unexpected key.*'blocks.9.0.conv_dw.weight' "
                       r"\(shape \(8, 1, 3, 3\)\)"):
        convert.from_timm(SMALL[1], state)


def test_a_wrong_shape_names_the_key_the_expected_and_the_given_shape():
    state = small_state()
    state["conv_head.weight"] = state["conv_head.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"'conv_head.weight' must have shape \(1280, 112, 1, 1\)"
                       r", but got \(1280, 111, 1, 1\)"):
        convert.from_timm(SMALL[1], state)


def test_num_classes_is_read_off_the_classifier():
    library, name = SMALL
    model = source_model(library, name, num_classes=7)
    converted = convert.from_timm(name, export(SOURCES[library][name], model))
    assert converted.classifier.out_features == 7
    with pytest.raises(ValueError, match=r"'classifier.weight' must have shape \(5, 1280\), but "
                       r"got \(7, 1280\)"):
        convert.from_timm(name, export(SOURCES[library][name], model), num_classes=5)


def test_a_state_dict_that_is_not_a_mapping_is_a_type_error():
    with pytest.raises(TypeError, match="state_dict must be a mapping.*list"):
        convert.from_timm(SMALL[1], [("conv_stem.weight", np.zeros(1))])


def test_source_names():
    assert "timm:mobilenetv2_100" in convert.source_names()
    assert convert.source_names("torchvision") == sorted(SOURCES["torchvision"])
    with pytest.raises(ValueError, match="library must be one of"):
        convert.source_names("keras")


# ---------------------------------------------------------------------------------------------
# The folder and the command line.


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A timm-named safetensors file of SMALL, and the jaxsep model it came from."""
    library, name = SMALL
    model = source_model(library, name, seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    write_safetensors(path, export(SOURCES[library][name], model))
    return path, model


def test_cli_convert_writes_a_folder_models_load_reads_back(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    out = tmp_path / "run"
    assert cli.main(["convert", "--from", "timm:" + SMALL[1], "--checkpoint", str(path),
                     "--out", str(out)]) == 0
    assert "mobilenet_v2(" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "mobilenet_v2"
    assert config["source"] == "timm:" + SMALL[1]
    assert config["model_kwargs"]["padding"] == "symmetric"
    assert config["model_kwargs"]["num_classes"] == 1000
    assert config["preprocessing"]["resize"] == 256 and config["preprocessing"]["crop"] == 224
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3)), jnp.float32)
    np.testing.assert_array_equal(forward(models.load(out), x), forward(model, x))
    loaded = models.load(out, impl="xla")  # runtime arguments are given at load
    assert loaded.blocks[1].depthwise.conv.impl == "xla"


def _fails_with_one_line(argv, capsys, pattern):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert pattern in err, err


def test_cli_convert_bad_input_exits_2_with_one_line(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = str(tmp_path / "run")
    _fails_with_one_line(["convert", "--from", "timm:nope", "--checkpoint", str(path), "--out",
                          out], capsys, "name must be one of")
    _fails_with_one_line(["convert", "--from", "mobilenet_v2", "--checkpoint", str(path),
                          "--out", out], capsys, "'timm:NAME' or 'torchvision:NAME'")
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    _fails_with_one_line(["convert", "--from", "timm:" + SMALL[1], "--checkpoint", str(text),
                          "--out", out], capsys, "notes.txt' is not a safetensors file")
    _fails_with_one_line(["convert", "--from", "timm:mobilenetv2_100", "--checkpoint", str(path),
                          "--out", out], capsys, "must have shape")
    _fails_with_one_line(["convert", "--from", "timm:" + SMALL[1], "--checkpoint",
                          str(tmp_path / "absent.safetensors"), "--out", out], capsys,
                         "no checkpoint file")
    assert not (tmp_path / "run").exists()  # nothing written on failure
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    _fails_with_one_line(["convert", "--from", "timm:" + SMALL[1], "--checkpoint", str(path),
                          "--out", out], capsys, "is not an empty folder")


def test_models_load_of_a_folder_that_is_not_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        models.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 3}))
    with pytest.raises(ValueError, match="format must be 'jaxsep.model'"):
        models.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# Preprocessing and predict.

PREPROCESSING = dict(resize=8, crop=4, crop_mode="center", interpolation="bilinear",
                     mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])


def test_preprocess_resizes_the_shorter_side_crops_the_centre_and_normalizes(tmp_path):
    from PIL import Image

    pixels = np.zeros((16, 32, 3), np.uint8)  # 16 high, 32 wide -> 8 x 16 -> centre 4 x 4
    pixels[:, 14:18] = 255  # a white band in the middle columns
    path = tmp_path / "band.png"
    Image.fromarray(pixels).save(path)
    x = preprocess(path, {**PREPROCESSING, "interpolation": "nearest"})
    assert x.shape == (4, 4, 3) and x.dtype == np.float32
    # nearest: resized column j is column 2j + 1, so the band is columns 7-8 of the 16-wide
    # resize, and columns 1-2 of the crop (which starts at column (16 - 4) / 2 = 6)
    np.testing.assert_allclose(x[:, 1:3, 0], 1.0)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[:, 0, 0], -1.0)  # (0 - 0.5) / 0.5
    np.testing.assert_allclose(x[:, :, 2], np.where(x[:, :, 0] > 0, 1.0, 0.0))


def test_preprocess_squash_resizes_both_sides(tmp_path):
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.fromarray(np.full((10, 40, 3), 51, np.uint8)).save(path)
    x = preprocess(path, {**PREPROCESSING, "crop_mode": "squash", "resize": 4})
    np.testing.assert_allclose(x[..., 0], (0.2 - 0.5) / 0.5, rtol=1e-6)


def test_preprocess_without_pillow_asks_for_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="needs Pillow: pip install pillow"):
        preprocess(tmp_path / "x.png", PREPROCESSING)


def test_imagenet_class_names_are_bundled():
    names = class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[207] == "golden retriever"
    assert names[999] == "toilet tissue"


def test_cli_predict_prints_the_top_classes(checkpoint, tmp_path, capsys):
    from PIL import Image

    path, model = checkpoint
    out = tmp_path / "run"
    assert cli.main(["convert", "--from", "timm:" + SMALL[1], "--checkpoint", str(path),
                     "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    config["preprocessing"].update(resize=40, crop=32)  # small, for speed
    (out / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    files = [tmp_path / "noise.png", tmp_path / "tall.jpg"]
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(files[0])
    Image.fromarray(rng.integers(0, 256, (90, 40, 3), np.uint8)).save(files[1])
    capsys.readouterr()
    assert cli.main(["predict", "--run", str(out), *map(str, files), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and lines[0] == str(files[0]) and lines[4] == str(files[1])
    batch = jnp.asarray(np.stack([preprocess(f, config["preprocessing"]) for f in files]))
    logits = np.asarray(forward(model, batch))
    for printed, row in ((lines[1:4], logits[0]), (lines[5:8], logits[1])):
        for line, index in zip(printed, np.argsort(-row)[:3]):
            assert line.endswith(f"{class_names()[index]} ({index})"), (line, index)
    _fails_with_one_line(["predict", "--run", str(out), str(tmp_path / "absent.jpg")], capsys,
                         "no image file")
    _fails_with_one_line(["predict", "--run", str(out), str(out / "config.json")], capsys,
                         "not an image")
    _fails_with_one_line(["predict", "--run", str(tmp_path), str(files[0])], capsys,
                         "not a saved model")
