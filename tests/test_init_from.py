"""``train --init-from`` a saved model folder (``jaxsep.models.save``, ``jaxsep convert``) and
``jaxsep eval --run`` of one. The models are tiny_config's (MobileNetV1 x0.25), so the one
train step compiled here is the suite's shared one."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import cli_main, tiny_config
from flax import nnx

from jaxsep import models, train
from jaxsep.train import hooks, init_from
from jaxsep.train.model_from_config import abstract_model
from jaxsep.train.setup import load_dataset, preflight, setup as build_setup

TINY = dict(width_multiplier=0.25, variant="cifar", dropout_rate=0.1)


def random_model(name: str = "mobilenet_v1", seed: int = 0, **kwargs):
    """An abstract model filled with random values (BatchNorm statistics too, variances
    positive), without the per-shape sampler compiles of eager construction."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.create(name, **kwargs)))

    def fill(path, leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        if not jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating):
            return jax.numpy.zeros(leaf.shape, leaf.dtype)
        values = rng.normal(0.0, 0.1, leaf.shape)
        if any(getattr(k, "key", None) == "var" for k in path):
            values = 1.0 + np.abs(values)
        return jax.numpy.asarray(values, leaf.dtype)

    model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
    model.eval()
    return model


def save_random(folder, num_classes: int, **extra_kwargs):
    kwargs = {**TINY, "num_classes": num_classes, **extra_kwargs}
    model = random_model(**kwargs)
    models.save(model, folder, name="mobilenet_v1", model_kwargs=kwargs,
                extra={"source": "test:random", "preprocessing": dict(
                    resize=36, crop=32, crop_mode="center", interpolation="bilinear",
                    mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])})
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{classes: (folder, model)}``: the same random weights saved with a 7-class and a
    10-class head."""
    root = tmp_path_factory.mktemp("saved")
    return {n: (root / f"c{n}", save_random(root / f"c{n}", n)) for n in (7, 10)}


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(tree))[0]}


def initial(config):
    """The run's variables before its first step: what the loop starts from."""
    config = init_from.resolve(config)
    abstract, devices, _, _ = preflight(config, None, None)
    setup = build_setup(config, abstract, devices)
    params, batch_stats, record = init_from.initial_variables(
        config, setup.params, setup.batch_stats, setup.spec.replicated)
    return setup, params, batch_stats, record


@pytest.mark.parametrize("classes", [7, 10])
def test_init_from_a_saved_model_copies_the_body_and_renews_a_head_of_other_classes(
        saved, classes):
    folder, model = saved[classes]
    setup, params, batch_stats, record = initial(tiny_config(None, init_from=str(folder)))
    want_params = flat(nnx.state(model, nnx.Param))
    want_stats = flat(nnx.state(model, nnx.BatchStat))
    got_params, fresh = flat(params), flat(setup.params)
    head = {"['classifier']['bias']", "['classifier']['kernel']"}
    for path, value in got_params.items():
        if classes != 10 and path in head:  # a new head: the run's own initialization
            np.testing.assert_array_equal(value, fresh[path])
            assert value.shape[-1] == 10 and want_params[path].shape[-1] == 7
        else:
            np.testing.assert_array_equal(value, want_params[path], err_msg=path)
    assert got_params.keys() == want_params.keys()
    for path, value in flat(batch_stats).items():
        np.testing.assert_array_equal(value, want_stats[path], err_msg=path)
    assert record["new_head"] == (["params/classifier/bias", "params/classifier/kernel"]
                                  if classes != 10 else [])
    assert record["kind"] == "model" and record["source"] == "test:random"


def test_train_init_from_a_saved_model_with_other_classes(saved, tmp_path):
    folder, _ = saved[7]
    out = tmp_path / "run"
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(tiny_config(out, init_from=str(folder)),
                                 hooks=[hooks.StopAtStep(2)])
    stored, meta = train.load_checkpoint(out, step=2)
    assert jax.tree.leaves(stored["params"]["classifier"]["kernel"])[0].shape[-1] == 10
    assert meta["initialized_from"]["folder"] == str(folder.absolute())
    assert json.loads((out / "config.json").read_text())["init_from"] == str(folder)
    summary = train.train_and_evaluate(tiny_config(out, init_from=str(folder)))  # resumes
    assert summary["initialized_from"]["new_head"] == ["params/classifier/bias",
                                                       "params/classifier/kernel"]


def test_init_from_a_saved_model_that_does_not_fit(saved, tmp_path):
    folder, _ = saved[7]
    with pytest.raises(ValueError, match=r"init_from .* does not fit this run's model; the "
                       r"folder holds mobilenet_v1 x0.25, this run is mobilenet_v1 x0.5: "
                       r"batch_stats/blocks/0/pointwise/norm/mean must have shape \(32,\), but "
                       r"the folder's has shape \(16,\)"):
        train.train_and_evaluate(tiny_config(None, width=0.5, init_from=str(folder)))
    with pytest.raises(ValueError, match=r"this run is mobilenet_v2 x0.25: batch_stats/blocks/0/"
                       r"depthwise/norm/mean \(shape \(8,\)\) is not in the folder"):
        train.train_and_evaluate(tiny_config(None, model="mobilenet_v2", dropout=None,
                                             init_from=str(folder)))
    not_a_model = tmp_path / "x"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"format": "jaxsep.model", "version": 9}')
    with pytest.raises(ValueError, match="has format version 9"):
        train.train_and_evaluate(tiny_config(None, init_from=str(not_a_model)))


def test_a_saved_models_architecture_arguments_carry_over(tmp_path):
    folder = tmp_path / "m"
    save_random(folder, 7, padding="symmetric", activation="relu6")
    config = init_from.resolve(tiny_config(None, dropout=None, init_from=str(folder)))
    assert config.model_args == {"activation": "relu6", "padding": "symmetric"}
    assert config.dropout == 0.1  # the folder's, as none was given
    given = init_from.resolve(tiny_config(None, init_from=str(folder),
                                          model_args={"activation": "relu"}))
    assert given.model_args == {"activation": "relu", "padding": "symmetric"}
    assert init_from.check(config, abstract_model(config)).model == "mobilenet_v1"
    assert train.TrainConfig.from_json(config.to_json()) == config


def test_num_classes_and_model_args_fields():
    config = tiny_config(None, num_classes=7, model_args={"padding": "symmetric"})
    assert train.TrainConfig.from_json(config.to_json()) == config
    assert train.TrainConfig(model_args={}).model_args is None
    with pytest.raises(ValueError, match="num_classes must be >= 2, but got 1"):
        tiny_config(None, num_classes=1)
    with pytest.raises(ValueError, match=r"model_args must be free of keywords that other "
                       r"fields set \(\['num_classes'\]\)"):
        tiny_config(None, model_args={"num_classes": 3})
    with pytest.raises(TypeError, match=r"model_args\['padding'\] must be a JSON scalar"):
        tiny_config(None, model_args={"padding": [1, 1]})
    assert load_dataset(tiny_config(None, num_classes=7)).num_classes == 7


def write_images(root, classes, per_class: int = 3, seed: int = 0) -> None:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (40, 48) if i % 2 else (48, 36)  # resized and cropped to 32 x 32
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_eval_a_saved_model_on_an_image_folder(saved, tmp_path, capsys):
    from jaxsep.convert.predict import preprocess

    folder, model = saved[10]
    images = tmp_path / "images"
    write_images(images, ["0", "3", "9"])
    assert cli_main(["eval", "--run", str(folder), "--data-dir", str(images), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The same, computed directly: integer folder names are the class indices.
    config = json.loads((folder / "config.json").read_text())
    files = [(images / c / f"{i}.{'png' if i % 2 else 'jpg'}", int(c))
             for c in ("0", "3", "9") for i in range(3)]
    x = np.stack([preprocess(path, config["preprocessing"]) for path, _ in files])
    # One compiled forward: eagerly, each layer's lowering would compile on its own.
    logits = np.asarray(nnx.jit(lambda m, a: m(a))(model, jax.numpy.asarray(x)))
    labels = np.array([label for _, label in files])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert result["num_images"] == 9 and result["num_classes"] == 10
    assert result["top1"] == np.mean(top5[:, 0] == labels)
    assert result["top5"] == np.mean(np.any(top5 == labels[:, None], axis=1))
    assert result["source"] == "test:random"
    assert cli_main(["eval", "--run", str(folder), "--data-dir", str(images)]) == 0
    assert "top-1" in capsys.readouterr().out


def test_eval_a_saved_model_bad_input(saved, tmp_path, capsys):
    folder, _ = saved[10]
    named = tmp_path / "named"
    write_images(named, ["cat", "dog"], per_class=1)
    for argv, message in [
        ([], "needs --data-dir"),
        (["--data-dir", str(tmp_path / "none")], "is not a folder"),
        (["--data-dir", str(named)], "has 2 class folders, but the model has 10 classes"),
        (["--data-dir", str(named), "--which", "last"], "--which applies to run folders"),
    ]:
        assert cli_main(["eval", "--run", str(folder), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert cli_main(["eval", "--run", str(tmp_path), "--data-dir", str(named)]) == 2
    assert "not a run folder" in capsys.readouterr().err
