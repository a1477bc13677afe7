"""Tests for :func:`jaxsep.convert.load_state_dict` without torch: safetensors files written by
hand in the documented format, and files that are not checkpoints."""

from __future__ import annotations

import json
import struct
import sys

import ml_dtypes
import numpy as np
import pytest

from jaxsep.convert import load_state_dict

DTYPE_NAMES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.float64): "F64",
}


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata=None) -> None:
    """The format: u64 little-endian header size, JSON header, the tensors' little-endian
    bytes at their ``data_offsets`` (relative to the end of the header)."""
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": DTYPE_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "half": rng.standard_normal((5,)).astype(np.float16),
        "brain": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "ints": np.arange(-3, 3, dtype=np.int32),
        "bytes": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "mask": np.array([True, False, True]),
        "double": np.array([1.5, -2.25]),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_safetensors_round_trip_keeps_values_dtypes_and_shapes(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    loaded = load_state_dict(path)
    assert list(loaded) == list(tensors)
    for name, want in tensors.items():
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable  # owns its memory, not the file's
    assert loaded["bn.num_batches_tracked"].shape == ()


def test_the_format_is_told_by_content_not_name(tmp_path):
    path = tmp_path / "weights.bin"
    write_safetensors(path, {"w": np.ones((2,), np.float32)})
    np.testing.assert_array_equal(load_state_dict(path)["w"], [1.0, 1.0])


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "shorter than the 8-byte header size"),
        (b"hello world, not tensors\n", "does not fit"),
        (struct.pack("<Q", 4) + b"\xff\xfe{x", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_names_the_file(tmp_path, content, why):
    path = tmp_path / "notes.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"notes.safetensors.*not a safetensors file.*{why}"):
        load_state_dict(path)


def test_a_truncated_file_names_the_tensor(tmp_path):
    path = tmp_path / "cut.safetensors"
    write_safetensors(path, {"a": np.ones((2,), np.float32), "b": np.ones((8,), np.float32)})
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"cut.safetensors.*tensor 'b' \(F32, shape \(8,\)\) "
                       r"needs 32 bytes.*truncated"):
        load_state_dict(path)


def test_an_unknown_dtype_is_named(tmp_path):
    header = json.dumps({"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "complex.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(ValueError, match="complex.safetensors.*tensor 'x' has a bad header"):
        load_state_dict(path)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file.*absent.pth"):
        load_state_dict(tmp_path / "absent.pth")


@pytest.mark.parametrize("magic", [b"PK\x03\x04", b"\x80\x02"])
def test_a_pytorch_checkpoint_without_torch_asks_for_torch(tmp_path, monkeypatch, magic):
    path = tmp_path / "model.pth"
    path.write_bytes(magic + bytes(16))
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"model.pth.*needs torch.*pip install torch"):
        load_state_dict(path)
