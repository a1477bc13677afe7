"""CIFAR-10 for the training harness: loading any common copy of it (with a cache), a
synthetic stand-in that needs no files, deterministic subsets and epoch orders, and on-device
augmentation.

``Dataset`` holds host (NumPy) arrays: images uint8 NHWC (N, 32, 32, 3), labels int32 (N,).
``load_cifar10`` finds the data wherever a user keeps it (the official archive, its extracted
folder, image-folder trees, archived or not), decodes it once and caches the arrays, and
downloads the official archive only when nothing is on the machine; ``docs/data.md`` lists
the accepted layouts, where the cache lives and what ``$JAXSEP_DATA_DIR`` does.
``augment``, ``cutout``, ``normalize``, ``resize`` and ``batch_key`` run on the accelerator
inside a jitted step; ``synthetic_cifar10``, ``subset``, ``epoch_permutation`` and
``num_batches`` are deterministic host-side helpers.

Modules, lowest first: ``dataset`` (the container, CIFAR-10's constants), ``sources``
(finding the data, reading folders and tar archives, detecting the layout), ``decode``
(pickle batches, image folders), ``cache`` (the ``.npz`` cache), ``download``, ``load``
(``load_cifar10``), ``synthetic`` (host-side helpers), ``preprocess`` (on-device JAX).
"""

from jaxsep.data.cache import data_cache_dir as data_cache_dir
from jaxsep.data.dataset import (
    CIFAR10_ARCHIVE_NAME as CIFAR10_ARCHIVE_NAME,
    CIFAR10_CLASSES as CIFAR10_CLASSES,
    CIFAR10_MD5 as CIFAR10_MD5,
    CIFAR10_MEAN as CIFAR10_MEAN,
    CIFAR10_STD as CIFAR10_STD,
    CIFAR10_URL as CIFAR10_URL,
    IMAGE_SIZE as IMAGE_SIZE,
    NUM_CHANNELS as NUM_CHANNELS,
    Dataset as Dataset,
)
from jaxsep.data.load import (
    DataUnavailableError as DataUnavailableError,
    load_cifar10 as load_cifar10,
)
from jaxsep.data.preprocess import (
    augment as augment,
    batch_key as batch_key,
    cutout as cutout,
    normalize as normalize,
    resize as resize,
)
from jaxsep.data.synthetic import (
    epoch_permutation as epoch_permutation,
    num_batches as num_batches,
    subset as subset,
    synthetic_cifar10 as synthetic_cifar10,
)

# Private helpers that were importable from jaxsep.data before it became a package. Patching
# them here changes nothing: patch their owner module (e.g. jaxsep.data.load._decode_source).
from jaxsep.data.cache import _read_cache  # noqa: F401
from jaxsep.data.decode import _decode_source, _natural_sort_key  # noqa: F401
from jaxsep.data.load import _download_cifar10  # noqa: F401

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DataUnavailableError",
    "Dataset",
    "augment",
    "batch_key",
    "cutout",
    "data_cache_dir",
    "epoch_permutation",
    "load_cifar10",
    "normalize",
    "num_batches",
    "resize",
    "subset",
    "synthetic_cifar10",
]
