"""Dataset files from a folder or straight out of a tarball, and pickles that cannot run code.

Tarballs are read member by member in memory, so nothing is ever extracted next to the user's data.
Every error names the file, what was expected and, through `fix`, where to get a good copy.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from flower_eec.errors import DataError

# (name, file on disk, member in archive or "", bytes)
Member = tuple[str, Path, str, bytes]
# (folder or tarball, file names) -> the members, in any order
MemberSource = Callable[[Path, tuple[str, ...]], Iterator[Member]]

# Globals an official CIFAR pickle needs: a dict of lists, strings and one numpy array.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def locate_release(dirs: list[Path], layouts: tuple[tuple[str, tuple[str, ...], str], ...],
                   tarballs: tuple[str, ...]) -> tuple[str, Path] | None:
    """The first (format, path) found in ``dirs``, or None; extracted folders before tarballs.

    ``layouts`` lists ``(format, files, subfolder)`` in order of preference: a folder holding all
    of ``files`` is that format, and so is its ``subfolder``.
    """
    for kind, files, subfolder in layouts:
        for folder in dirs:
            if all((folder / name).is_file() for name in files):
                return kind, folder
            if (folder / subfolder).is_dir():
                return kind, folder / subfolder
    for folder in dirs:
        for name in tarballs:
            if (folder / name).is_file():
                return "tar", folder / name
    return None


def read_folder(
    folder: Path, names: tuple[str, ...], dataset: str, fix: str
) -> Iterator[Member]:
    """Yield (name, file, "", bytes) for each of `names` in `folder`; a missing one raises."""
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"{path}: missing {dataset} file (expected all of {', '.join(names)} in "
                f"{folder}). {fix}"
            )
        yield name, path, "", path.read_bytes()


def walk_tarball(
    tar_path: Path, fix: str, keep: Callable[[str], bool] = lambda name: True
) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) of each regular file whose name `keep` accepts, in one pass."""
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            for member in archive:
                if not member.isfile() or not keep(member.name):
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()
    except _TAR_ERRORS as exc:
        raise DataError(f"{tar_path}: damaged or truncated archive ({exc}). {fix}") from exc


def read_tarball(
    tar_path: Path, names: tuple[str, ...], dataset: str, expected: str, fix: str
) -> Iterator[Member]:
    """Yield (name, tarball, member, bytes) for each of `names` in the tarball, in one pass.

    A member matches by its base name; `expected` describes the archive the user should have.
    """
    found: set[str] = set()
    for member, data in walk_tarball(tar_path, fix, lambda m: Path(m).name in names):
        name = Path(member).name
        if name not in found:
            found.add(name)
            yield name, tar_path, member, data
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(
            f"{tar_path}: archive lacks {dataset} member(s) {', '.join(missing)}; expected "
            f"{expected}. {fix}"
        )


def tarball_kind(tar_path: Path, markers: dict[str, str], expected: str, fix: str) -> str:
    """Return the kind whose marker folder (kind -> folder name) the first members lie under."""
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            for member in archive:
                for kind, folder in markers.items():
                    if folder in Path(member.name).parts:
                        return kind
    except _TAR_ERRORS as exc:
        raise DataError(f"{tar_path}: damaged or truncated archive ({exc}). {fix}") from exc
    raise DataError(
        f"{tar_path}: no {' or '.join(f'{m}/' for m in markers.values())} inside; expected "
        f"{expected}. {fix}"
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays but refuses every other global: a file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def unpickle_dict(data: bytes, label: str, what: str, fix: str) -> dict:
    """Unpickle a dict of arrays, lists and strings; anything else, or damage, raises DataError."""
    try:
        # latin1 is what numpy needs to rebuild arrays pickled by Python 2, as the originals were.
        loaded = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # unpickling damaged bytes can raise almost anything
        raise DataError(f"{label}: not a readable {what} ({exc}). {fix}") from exc
    if not isinstance(loaded, dict):
        raise DataError(f"{label}: expected a pickled dict, got {type(loaded).__name__}. {fix}")
    return loaded


def dict_entry(batch: dict, key: str) -> object:
    """`batch[key]` under a bytes key (Python 2 pickles) or a str key; None when absent."""
    return batch.get(key.encode(), batch.get(key))
