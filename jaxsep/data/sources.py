"""Finding the data and reading its files: which file or folder holds CIFAR-10, the data files
of a folder or of a tar archive (read in one pass, never extracted), and which layout they use.

The accepted layouts are listed in ``docs/data.md``.
"""

from __future__ import annotations

import dataclasses
import lzma
import os
import posixpath
import tarfile
import zlib
from pathlib import Path

from jaxsep.data.dataset import CIFAR10_ARCHIVE_NAME

_PICKLE_FOLDER = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META_FILE = "batches.meta"
_PICKLE_FILES = frozenset((*_TRAIN_BATCHES, _TEST_BATCH, _META_FILE))
_IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".bmp"))
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

_ACCEPTED_FORMS = (
    "Pass the data's location as data_dir=... (Python) or --data-dir (command line). "
    "Accepted forms: the official cifar-10-python.tar.gz or a folder holding it; its "
    "extracted cifar-10-batches-py/ folder or a folder holding it; an image-folder tree "
    "train/<class>/*.png|jpg + test/<class>/*.png|jpg, as a folder or a .tar.gz/.tgz/.tar "
    "archive, optionally inside one top-level folder."
)


@dataclasses.dataclass(frozen=True)
class _Source:
    path: Path
    is_archive: bool


def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


def _is_hidden(name: str) -> bool:
    # "._x.jpg" AppleDouble files and "__MACOSX/" folders are metadata that macOS tar/zip add.
    return name.startswith(".") or name == "__MACOSX"


def _is_data_file(relative_path: str) -> bool:
    basename = posixpath.basename(relative_path)
    return basename in _PICKLE_FILES or posixpath.splitext(basename)[1].lower() in _IMAGE_SUFFIXES


def _looks_like_dataset_folder(folder: Path) -> bool:
    return (
        any((folder / name).is_file() for name in _PICKLE_FILES)
        or (folder / "train").is_dir()
        or (folder / "test").is_dir()
    )


def _find_source_in(folder: Path) -> _Source | None:
    """The data source in ``folder`` (itself, one subfolder or one archive), or None."""
    if _looks_like_dataset_folder(folder):
        return _Source(folder, is_archive=False)
    entries = sorted(entry for entry in folder.iterdir() if not _is_hidden(entry.name))
    subfolders = [entry for entry in entries if entry.is_dir()]
    pickle_folder = folder / _PICKLE_FOLDER
    if pickle_folder in subfolders and _looks_like_dataset_folder(pickle_folder):
        return _Source(pickle_folder, is_archive=False)
    if len(subfolders) == 1 and _looks_like_dataset_folder(subfolders[0]):
        return _Source(subfolders[0], is_archive=False)
    archives = [entry for entry in entries if entry.is_file() and _is_archive_name(entry.name)]
    if (folder / CIFAR10_ARCHIVE_NAME) in archives:
        return _Source(folder / CIFAR10_ARCHIVE_NAME, is_archive=True)
    if len(archives) == 1:
        return _Source(archives[0], is_archive=True)
    if len(archives) > 1:
        names = ", ".join(archive.name for archive in archives)
        raise ValueError(
            f"{folder} holds several archives ({names}) and none is {CIFAR10_ARCHIVE_NAME}; "
            f"pass the one to use as data_dir=... / --data-dir."
        )
    return None


def _walk_data_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """(relative posix path, stat) of every data file under ``root``, sorted by path."""
    found = []
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if not _is_hidden(name)]
        relative_directory = Path(directory).relative_to(root).as_posix()
        for filename in filenames:
            if _is_hidden(filename):
                continue
            relative = filename if relative_directory == "." else f"{relative_directory}/{filename}"
            if _is_data_file(relative):
                found.append((relative, os.stat(os.path.join(directory, filename))))
    found.sort(key=lambda item: item[0])
    return found


class _FolderFiles:
    """Data files of a folder, read from disk on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = [relative for relative, _ in _walk_data_files(root)]
        self._path_set = set(self.paths)

    def __contains__(self, path: str) -> bool:
        return path in self._path_set

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def describe(self, path: str = "") -> str:
        return str(self.root / path) if path else str(self.root)

    def missing(self, path: str) -> Exception:
        return FileNotFoundError(
            f"{self.describe(path)} is missing: the folder {self.root} looks like CIFAR-10 "
            f"but is incomplete. Extract or copy it again."
        )


class _ArchiveFiles:
    """Data files of a tar archive, read into memory in one sequential pass.

    A single streaming pass is much faster than random access into a compressed tar (each
    backwards seek would restart decompression) and never writes extracted files to disk.
    """

    def __init__(self, archive: Path):
        self.archive = archive
        self._contents: dict[str, bytes] = {}
        try:
            with tarfile.open(archive, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    path = posixpath.normpath(member.name.lstrip("/"))
                    parts = path.split("/")
                    if ".." in parts or any(_is_hidden(part) for part in parts):
                        continue
                    if not _is_data_file(path):
                        continue
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        self._contents[path] = extracted.read()
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
            raise ValueError(
                f"could not read the archive {archive}: {error}. It is truncated, corrupt or "
                f"not a tar archive; delete it and download or copy it again."
            ) from error
        self.paths = sorted(self._contents)

    def __contains__(self, path: str) -> bool:
        return path in self._contents

    def read(self, path: str) -> bytes:
        return self._contents[path]

    def describe(self, path: str = "") -> str:
        return f"{path} in {self.archive}" if path else str(self.archive)

    def missing(self, path: str) -> Exception:
        return ValueError(
            f"{self.archive} has no member {path}: the archive looks like CIFAR-10 but is "
            f"incomplete. Download or copy it again."
        )


_Files = _FolderFiles | _ArchiveFiles


def _detect_layout(files: _Files) -> tuple[str, str]:
    """("pickle" | "image_folder", path prefix of the dataset root inside ``files``)."""
    top_folders = {path.split("/", 1)[0] for path in files.paths if "/" in path}
    prefixes = [""] + ([f"{top_folders.pop()}/"] if len(top_folders) == 1 else [])
    for prefix in prefixes:
        relative = [path[len(prefix) :] for path in files.paths if path.startswith(prefix)]
        if any(path in _PICKLE_FILES for path in relative):
            return "pickle", prefix
        if any(path.startswith(("train/", "test/")) for path in relative):
            return "image_folder", prefix
    raise ValueError(
        f"{files.describe()} does not hold CIFAR-10 in a known layout (found "
        f"{len(files.paths)} image/batch files, none at train/<class>/..., test/<class>/... or "
        f"data_batch_1...). {_ACCEPTED_FORMS}"
    )
