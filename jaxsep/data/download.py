"""Downloading a file: streamed to a temporary file beside its destination, checked against
an MD5 checksum, then renamed into place, with a progress bar on stderr."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from jaxsep._io import atomic_write


class ChecksumError(ValueError):
    """The downloaded bytes do not have the expected MD5 checksum (nothing was kept)."""


@contextlib.contextmanager
def _download_progress(
    description: str, total_bytes: int | None
) -> Iterator[Callable[[int], None]]:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
    except ImportError:  # rich is a nicety; without it, say what is happening and carry on
        print(f"{description} ...", file=sys.stderr)
        yield lambda _: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task(description, total=total_bytes)
        yield lambda num_bytes: progress.advance(task, num_bytes)


def download(url: str, destination: Path, *, md5: str, timeout: float = 60.0) -> Path:
    """Downloads ``url`` to ``destination`` whole or not at all, verifying its MD5.

    The bytes go to a hidden temporary file in ``destination``'s folder, fsynced and renamed
    into place only once the checksum matches, so an interrupted or corrupt download never
    leaves anything a later run would mistake for data.

    Returns:
      ``destination``.

    Raises:
      ChecksumError: the checksum differs (the message names the url and both checksums).
      urllib.error.URLError, http.client.HTTPException, OSError, ValueError: the download
        failed (no network, a bad URL, a full disk).
    """
    def write(file: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _download_progress(f"Downloading {destination.name}", total) as advance:
                while chunk := response.read(1 << 20):
                    file.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
        if digest.hexdigest() != md5:
            raise ChecksumError(
                f"checksum mismatch for {destination.name} downloaded from {url}: expected "
                f"md5 {md5}, got {digest.hexdigest()}"
            )

    atomic_write(destination, write, durable=True)
    return destination
