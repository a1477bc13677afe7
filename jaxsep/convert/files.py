"""Checkpoint files -> ``dict[str, np.ndarray]``: safetensors without torch, ``.pth``/``.bin``
through torch.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then
the raw little-endian tensor bytes, each tensor at ``8 + n + begin``. That is all there is to
read, so the reader below is NumPy only (bfloat16 and float8 through ``ml_dtypes``, which JAX
ships). A pickled PyTorch checkpoint needs torch to unpickle; it is loaded with
``weights_only=True`` (no code from the file runs).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["SAFETENSORS_DTYPES", "load_state_dict", "to_numpy"]

# safetensors dtype name -> NumPy dtype (little-endian, as the format stores them).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_HEADER_LIMIT = 100 * 2**20  # the safetensors library refuses larger headers too
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_PROTOCOL = b"\x80"  # the legacy torch.save format starts with a pickle PROTO opcode
# Keys under which training scripts nest the weights (timm's train.py, torchvision references).
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint file, by name, as NumPy arrays.

    ``.safetensors`` is read by NumPy alone. A PyTorch checkpoint (``torch.save``: ``.pth``,
    ``.pt``, ``.bin``) needs torch; a checkpoint that nests its weights under
    ``"state_dict"``, ``"model"`` (as timm's and torchvision's training scripts save them) is
    unwrapped, and a ``"module."`` prefix on every key (``DataParallel``) is dropped. The
    format is told by the file's first bytes, not its name.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is neither (a truncated or corrupt file included); the message
        names the file.
      ImportError: a PyTorch checkpoint, but torch is not installed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"load_state_dict: no checkpoint file {str(path)!r}")
    with open(path, "rb") as file:
        start = file.read(9)
    # A safetensors header is a JSON object right after its 8-byte size (whose first byte may
    # well be 0x80, a pickle's first byte): so that test comes first.
    if start[8:9] != b"{" and (start[:4] == _ZIP_MAGIC or start[:1] == _PICKLE_PROTOCOL):
        return _load_torch(path)
    return _load_safetensors(path)


def _not_a_checkpoint(path: Path, why: str) -> ValueError:
    return ValueError(
        f"load_state_dict: {str(path)!r} is not a safetensors file or a PyTorch checkpoint "
        f"({why})"
    )


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < 8:
            raise _not_a_checkpoint(path, f"{size} bytes, shorter than the 8-byte header size")
        (header_size,) = struct.unpack("<Q", file.read(8))
        if header_size > min(_HEADER_LIMIT, size - 8):
            raise _not_a_checkpoint(
                path, f"a header of {header_size} bytes does not fit a {size}-byte file"
            )
        try:
            header = json.loads(file.read(header_size).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _not_a_checkpoint(path, f"the header is not JSON: {error}") from None
        if not isinstance(header, dict):
            raise _not_a_checkpoint(path, "the header is not a JSON object")
        data_start, data_size = 8 + header_size, size - 8 - header_size
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, begin = _entry(path, name, entry, data_size)
            # Read straight into the array's own buffer: one copy of each tensor in memory.
            buffer = bytearray(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
            file.seek(data_start + begin)
            file.readinto(buffer)
            tensors[name] = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return tensors


def _entry(
    path: Path, name: str, entry: Any, data_size: int
) -> tuple[np.dtype, tuple[int, ...], int]:
    """A header entry's dtype, shape and start, checked against the data's size."""
    try:
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        shape = tuple(int(n) for n in entry["shape"])
        begin, end = (int(n) for n in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise _not_a_checkpoint(
            path,
            f"tensor {name!r} has a bad header entry {entry!r} (dtypes: "
            f"{', '.join(SAFETENSORS_DTYPES)})",
        ) from None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size or end - begin != nbytes:
        raise _not_a_checkpoint(
            path,
            f"tensor {name!r} ({entry['dtype']}, shape {shape}) needs {nbytes} bytes, but its "
            f"offsets [{begin}, {end}] do not give them within the {data_size}-byte data "
            "(truncated?)",
        )
    return dtype, shape, begin


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"load_state_dict: {str(path)!r} is a PyTorch checkpoint, which needs torch to "
            "read (pip install torch), or save it as .safetensors"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        raise _not_a_checkpoint(path, f"torch.load failed: {type(error).__name__}: {error}")
    for key in _NESTED_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise _not_a_checkpoint(path, "it holds no mapping of names to tensors")
    state = {name: to_numpy(value) for name, value in loaded.items()}
    if state and all(name.startswith("module.") for name in state):
        state = {name[len("module.") :]: value for name, value in state.items()}
    return state


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy array of ``value``: an array-like, or a torch tensor (bfloat16 kept bfloat16)."""
    if type(value).__module__.startswith("torch"):
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)
