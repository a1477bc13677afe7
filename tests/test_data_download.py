"""Tests for the download (jaxsep.data.download, through load_cifar10): a file:// URL to a tiny
archive stands in for the network; the MD5 check, the progress bar, and what a failure says."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_builders import (  # noqa: F401  (cache_dir: autouse)
    assert_matches,
    cache_dir,
    forbid_decoding,
    md5_of,
    official_archive,
)
from jaxsep import data
from jaxsep.data import dataset as data_dataset


def point_download_at(monkeypatch, archive: Path, md5: str) -> None:
    monkeypatch.setattr(data_dataset, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(data_dataset, "CIFAR10_MD5", md5)


def test_download_verifies_md5_shows_progress_and_caches(
    monkeypatch, capsys, cache_dir, official_archive
):
    archive, expected = official_archive
    point_download_at(monkeypatch, archive, md5_of(archive))

    dataset = data.load_cifar10()
    assert_matches(dataset, expected)
    downloaded = cache_dir / "cifar-10-python.tar.gz"
    assert downloaded.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in cache_dir.iterdir() if p.suffix != ".npz") == [downloaded.name]
    assert "Downloading cifar-10-python.tar.gz" in capsys.readouterr().err

    # Later loads neither download nor decode again.
    monkeypatch.setattr(data_dataset, "CIFAR10_URL", (archive.parent / "gone.tar.gz").as_uri())
    forbid_decoding(monkeypatch)
    assert_matches(data.load_cifar10(), expected)
    assert_matches(data.load_cifar10(download=False), expected)


def test_download_checksum_mismatch_keeps_nothing(monkeypatch, cache_dir, official_archive):
    archive, _ = official_archive
    point_download_at(monkeypatch, archive, "0" * 32)
    with pytest.raises(RuntimeError, match="checksum mismatch") as error:
        data.load_cifar10()
    assert isinstance(error.value, data.DataUnavailableError)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and archive.as_uri() in message
    assert "0" * 32 in message and md5_of(archive) in message
    assert list(cache_dir.iterdir()) == []


def test_download_failure_says_what_to_pass(monkeypatch, cache_dir, tmp_path):
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    point_download_at(monkeypatch, missing, "0" * 32)
    with pytest.raises(RuntimeError, match="could not download") as error:
        data.load_cifar10()
    assert isinstance(error.value, data.DataUnavailableError)
    message = str(error.value)
    assert missing.as_uri() in message and str(cache_dir) in message
    assert "data_dir=" in message and "--data-dir" in message and "train/<class>" in message
    assert not [p for p in cache_dir.iterdir()]
