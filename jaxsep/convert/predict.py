"""Classify images with a converted model, preprocessed as its source does (``jaxsep predict``).

The preprocessing is the source's eval transform, recorded in the folder's ``config.json``
by ``jaxsep convert``: resize the shorter side to ``resize`` (both sides with
``crop_mode="squash"``) with PIL's ``interpolation``, crop the centre ``crop`` x ``crop``
(torchvision's rounding of the offsets), scale to [0, 1], subtract ``mean`` and divide by
``std`` per channel. Images are read with Pillow (the ``images`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from jaxsep import _validation as v

__all__ = ["class_names", "predict", "preprocess"]

CLASS_NAMES_FILE = "imagenet_classes.txt"  # the 1000 ImageNet-1k names, in class order
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CROP_MODES = ("center", "squash")


@cache
def class_names() -> tuple[str, ...]:
    """The ImageNet-1k class names, index by index (torchvision's wording)."""
    text = resources.files("jaxsep.convert").joinpath(CLASS_NAMES_FILE).read_text("utf-8")
    return tuple(text.splitlines())


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "predict: reading images needs Pillow: pip install pillow (or jaxsep[images])"
        ) from None
    return Image


def preprocess(image: str | os.PathLike, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """One image file as the model's input: ``(crop, crop, 3)`` float32, normalized.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an image Pillow can read, or a bad ``preprocessing``.
    """
    Image = _pillow()
    path = Path(image).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"predict: no image file {str(path)!r}")
    resize, crop = int(preprocessing["resize"]), int(preprocessing["crop"])
    interpolation = preprocessing["interpolation"]
    mode = preprocessing.get("crop_mode", "center")
    if interpolation not in INTERPOLATIONS or mode not in CROP_MODES or not 0 < crop <= resize:
        raise ValueError(f"predict: bad preprocessing {dict(preprocessing)!r}")
    resample = getattr(Image.Resampling, interpolation.upper())
    try:
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"predict: {str(path)!r} is not an image Pillow can read ({error})"
        ) from None
    width, height = picture.size
    if mode == "squash":
        size = (resize, resize)
    elif width <= height:  # the shorter side becomes resize, as torchvision's Resize(int)
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    picture = picture.resize(size, resample)
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    picture = picture.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(picture, dtype=np.float32) / 255.0
    mean = np.asarray(preprocessing["mean"], np.float32)
    std = np.asarray(preprocessing["std"], np.float32)
    return (pixels - mean) / std


def predict(
    run: str | os.PathLike, images: Sequence[str | os.PathLike], *, top: int = 5, **overrides: Any
) -> list[list[tuple[int, str, float]]]:
    """The ``top`` classes of each image: ``(index, name, probability)``, most likely first.

    ``run`` is a folder written by ``jaxsep convert`` (its ``config.json`` holds the
    preprocessing); ``overrides`` go to :func:`jaxsep.models.load` (e.g. ``impl="xla"``).
    Names are ImageNet's for a 1000-class model, else the class index as text.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxsep import models
    from jaxsep.models._saved import read_config

    top = v.check_int("predict", "top", top)
    config = read_config(run)
    if "preprocessing" not in config:
        raise ValueError(
            f"predict: {str(run)!r} records no preprocessing (not written by jaxsep convert)"
        )
    batch = np.stack([preprocess(image, config["preprocessing"]) for image in images])
    model = models.load(run, **overrides)
    logits = nnx.jit(lambda model, x: model(x))(model, jnp.asarray(batch))
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    names = class_names() if probabilities.shape[-1] == len(class_names()) else None
    results = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:top]
        results.append(
            [(int(i), names[i] if names else str(int(i)), float(row[i])) for i in best]
        )
    return results
