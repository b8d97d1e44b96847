"""Official md5 checksums of the real datasets, and verification with an on-disk cache.

Hashing 180 MB on every start is wasteful, so results are cached per (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from flower_eec.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
CINIC10_URL = "https://doi.org/10.7488/ds/2448"

# Official md5 of the files inside the binary tarball; the tarball's own md5 is deliberately not
# checked because re-compressed copies (same members, different gzip wrapper) are common.
CIFAR10_BINARY_MD5: dict[str, str] = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}

# Official md5 of the python-pickle version (cifar-10-python.tar.gz), as published with the
# release and used by torchvision.
CIFAR10_PICKLE_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

# md5 of the raw (decompressed) IDX files: gzip wrappers differ between mirrors, contents do not.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# CIFAR-100: the publisher lists the md5 of each tarball. Those of the python version's members are
# the ones torchvision checks; the binary version's members have no published md5, so a binary
# tarball is checked whole (and an extracted binary folder only by its record counts).
CIFAR100_TAR_MD5: dict[str, str] = {
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8",
}
CIFAR100_PICKLE_MD5: dict[str, str] = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}

# Fashion-MNIST: the publisher lists the md5 of the gzip-compressed files, not of their content.
FASHION_MNIST_GZ_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# SVHN cropped digits (format 2), as published with the release.
SVHN_MD5: dict[str, str] = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}

CACHE_ENV = "FLOWER_EEC_CACHE_DIR"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Return $FLOWER_EEC_CACHE_DIR, else $XDG_CACHE_HOME/flower-eec, else ~/.cache/flower-eec."""
    explicit = os.environ.get(CACHE_ENV, "")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "flower-eec"


def md5_bytes(data: bytes) -> str:
    """Return the hex md5 of an in-memory buffer."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    """Return the hex md5 of a file, read in chunks so memory stays flat."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_file() -> Path:
    return cache_dir() / "md5.json"


def _read_cache() -> dict[str, dict[str, object]]:
    try:
        loaded = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        # A missing or damaged cache only costs a re-hash.
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write_cache_entry(key: str, entry: dict[str, object]) -> None:
    cache = _read_cache()
    cache[key] = entry
    target = _cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so parallel clients never read a half-written file.
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(tmp, target)
    except OSError:
        # A read-only home must not stop training: the cache is only a speed-up.
        pass


def cached_md5(path: Path, compute: Callable[[], str], member: str = "") -> str:
    """Return the md5 of `path` (or of `member` in it) from the cache, else compute and store it.

    The cache entry is tied to the file's absolute path, size and mtime, so any rewrite of the file
    invalidates it. `member` names a file inside an archive, or the decompressed content of a .gz.
    """
    stat = path.stat()
    key = f"{path.resolve()}::{member}" if member else str(path.resolve())
    entry = _read_cache().get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("md5"), str)
    ):
        return str(entry["md5"])
    digest = compute()
    _write_cache_entry(key, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": digest})
    return digest


def check_md5(label: str, got: str, expected: str, url: str) -> None:
    """Raise DataError when `got` differs from the official `expected` md5 of the file `label`."""
    if got == expected:
        return
    raise DataError(
        f"{label}: md5 mismatch (expected the official {expected}, got {got}); the file is "
        f"corrupt, truncated or not the official release. Re-download it from {url}, "
        "or pass verify=False to skip the check."
    )


def verify_md5(
    path: Path,
    expected: str,
    url: str,
    *,
    member: str = "",
    data: bytes | None = None,
) -> None:
    """Check a file, or an archive member / decompressed content passed as `data`, by md5.

    Results are cached per (path, size, mtime): a second load of unchanged files does not re-hash.
    A mismatch raises DataError naming the file, both md5s and how to fix it.
    """
    if data is None:
        got = cached_md5(path, lambda: md5_file(path), member)
    else:
        content = data
        got = cached_md5(path, lambda: md5_bytes(content), member)
    label = f"{path}:{member}" if member else str(path)
    check_md5(label, got, expected, url)


def check_count(label: str, got: int, expected: int, url: str) -> None:
    """Raise DataError when a file holds `got` images where the official release has `expected`.

    The check for files whose publisher gives no md5: a wrong count means a truncated, padded or
    altered copy.
    """
    if got == expected:
        return
    raise DataError(
        f"{label}: {got:,} images, but the official release has {expected:,}; the data is "
        f"truncated or not the official release. Re-download it from {url}, "
        "or pass verify=False to skip the check."
    )
