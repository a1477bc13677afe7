"""Top-1 and top-5 accuracy of a saved model folder on a labelled image folder (``jaxsep eval
--run DIR --data-dir IMAGES`` when DIR was written by ``jaxsep convert`` or
:func:`jaxsep.models.save`).

``IMAGES`` holds one subfolder per class. Subfolder names map to class indices as in
:mod:`jaxsep.data`'s image folders, with one addition: names that are all integers are the
class indices themselves (so a folder may hold some classes only); CIFAR-10's ten names take
CIFAR-10's order; any other names are sorted and numbered from 0, as torchvision's
``ImageFolder`` does (so every class must be there). Each image is preprocessed as
``jaxsep predict`` does, with the source's resize, centre crop and normalization from the
folder's ``config.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxsep import _validation as v
from jaxsep.convert.predict import preprocess

__all__ = ["evaluate_model", "labelled_images"]


def labelled_images(root: str | os.PathLike, num_classes: int) -> tuple[list[Path], np.ndarray]:
    """The images under ``root/<class>/`` and their labels (int32), class by class.

    Raises:
      FileNotFoundError: ``root`` is not a folder.
      ValueError: no class folders or no images, an image outside a class folder, or names
        that do not give classes in ``[0, num_classes)``.
    """
    from jaxsep.data.decode import _natural_sort_key, _order_class_names
    from jaxsep.data.sources import _walk_data_files

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"eval: data_dir {str(root)!r} is not a folder")
    by_class: dict[str, list[str]] = {}
    for relative, _ in _walk_data_files(root):
        parts = relative.split("/")
        if len(parts) != 2:
            raise ValueError(f"eval: {str(root / relative)!r} is not directly inside a class "
                             f"folder (expected {str(root)}/<class>/<image>)")
        by_class.setdefault(parts[0], []).append(relative)
    if not by_class:
        raise ValueError(f"eval: no images in {str(root)!r} (expected <class>/<image> files)")
    names = set(by_class)
    if all(name.isdigit() for name in names):
        indices = {name: int(name) for name in names}
    else:
        ordered = _order_class_names(names, str(root))
        if len(ordered) != num_classes:
            raise ValueError(
                f"eval: {str(root)!r} has {len(ordered)} class folders, but the model has "
                f"{num_classes} classes; named folders are numbered in sorted order, so all "
                "must be there (or name the folders by class index: 0, 1, ...)"
            )
        indices = {name: index for index, name in enumerate(ordered)}
    bad = sorted(name for name, index in indices.items() if index >= num_classes)
    if bad:
        raise ValueError(f"eval: class folders {bad} in {str(root)!r} are not classes of a "
                         f"{num_classes}-class model")
    paths, labels = [], []
    for name in sorted(names, key=lambda n: indices[n]):
        for relative in sorted(by_class[name], key=_natural_sort_key):
            paths.append(root / relative)
            labels.append(indices[name])
    return paths, np.asarray(labels, np.int32)


def evaluate_model(
    folder: str | os.PathLike, data_dir: str | os.PathLike, *, batch_size: int = 50,
    **overrides: Any,
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy of the saved model in ``folder`` on the image folder
    ``data_dir`` (see the module docstring for the class mapping).

    ``overrides`` go to :func:`jaxsep.models.load` (e.g. ``impl="xla"``). Images are read in
    batches of ``batch_size`` (the last padded, so one program is compiled).

    Returns:
      ``{"top1", "top5", "num_images", "num_classes", "model", "source", "data_dir"}``
      (``top5`` counts the true class among the 5 highest logits, or all when fewer).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxsep import models
    from jaxsep.models._saved import read_config

    batch_size = v.check_int("evaluate_model", "batch_size", batch_size)
    config = read_config(folder)
    if "preprocessing" not in config:
        raise ValueError(
            f"eval: {str(folder)!r} records no preprocessing (add the source's resize, crop, "
            "mean and std to its config.json as jaxsep convert writes them)"
        )
    model = models.load(folder, **overrides)
    num_classes = int(model.num_classes)
    paths, labels = labelled_images(data_dir, num_classes)
    k, batch_size = min(5, num_classes), min(batch_size, len(paths))
    graphdef, state = nnx.split(model)

    @jax.jit
    def top_k(state: Any, x: jax.Array) -> jax.Array:
        return jax.lax.top_k(nnx.merge(graphdef, state)(x), k)[1]

    top1 = top5 = 0
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = np.stack([preprocess(path, config["preprocessing"]) for path in chunk])
        padded = np.concatenate([batch, np.zeros((batch_size - len(chunk), *batch.shape[1:]),
                                                 batch.dtype)])
        best = np.asarray(top_k(state, jnp.asarray(padded)))[: len(chunk)]
        truth = labels[start:start + len(chunk), None]
        top1 += int(np.sum(best[:, 0] == truth[:, 0]))
        top5 += int(np.sum(np.any(best == truth, axis=1)))
    return {
        "top1": top1 / len(paths),
        "top5": top5 / len(paths),
        "num_images": len(paths),
        "num_classes": num_classes,
        "model": config["model"],
        "source": config.get("source"),
        "data_dir": str(Path(data_dir).expanduser()),
    }
