"""CINIC-10 loader: `train/`, `valid/` and `test/` folders of class folders of 32x32 PNGs.

The release splits its 270,000 images equally, 9,000 per class and split. The training set here is
`train/` plus `valid/` (180,000 images), the test set is `test/` (90,000): the authors' setting
for comparisons with CIFAR-10. `use_valid=False` trains on `train/` alone. Images are read from the
extracted folder or straight out of `CINIC-10.tar.gz`; reading PNGs needs pillow (the `datasets`
extra). The few greyscale PNGs of the release are widened to RGB by repeating their channel.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from flower_eec.data.archive import walk_tarball
from flower_eec.data.checksums import CINIC10_URL, check_count
from flower_eec.data.dataset import Dataset
from flower_eec.data.extras import require
from flower_eec.data.paths import existing_root, search_dirs
from flower_eec.errors import DataError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SPLITS = ("train", "valid", "test")
PER_CLASS = 9_000  # images per class in each split of the release
MEAN = (0.47889522, 0.47227842, 0.43047404)  # published with the release
STD = (0.24205776, 0.23828046, 0.25874835)
TARBALL = "CINIC-10.tar.gz"

_SUBDIRS = ("cinic10", "cinic-10", "CINIC-10")
_FIX = f"Re-download CINIC-10 from {CINIC10_URL}."

# (split, class index, file name, PNG bytes, where: the file or tarball:member, for errors)
Entry = tuple[str, int, str, bytes, str]


def locate_cinic10(root: Path) -> tuple[str, Path]:
    """Find CINIC-10 under `root`: ("folder", the folder holding train/ valid/ test/) or ("tar",
    the tarball). The extracted folder wins: it needs no decompression."""
    if root.is_file():
        return "tar", root
    dirs = search_dirs(root, _SUBDIRS)
    for folder in dirs:
        if all((folder / split).is_dir() for split in SPLITS):
            return "folder", folder
    for folder in dirs:
        if (folder / TARBALL).is_file():
            return "tar", folder / TARBALL
    raise DataError(
        f"CINIC-10 not found under {root} (searched {', '.join(str(d) for d in dirs)}): expected "
        f"a folder holding {'/, '.join(SPLITS)}/ (each with one folder per class of PNGs), or "
        f"{TARBALL}. Download it from {CINIC10_URL} and point `data.root` / FLOWER_EEC_DATA at "
        "its folder."
    )


def class_index(name: str, where: str) -> int:
    """The label of a class folder; an unknown folder raises DataError naming the classes."""
    if name not in CLASSES:
        raise DataError(
            f"{where}: unexpected class folder {name!r}; CINIC-10's classes are "
            f"{', '.join(CLASSES)}. {_FIX}"
        )
    return CLASSES.index(name)


def _is_png(name: str) -> bool:
    return name.lower().endswith(".png") and not name.startswith(".")


def folder_entries(folder: Path, splits: tuple[str, ...]) -> Iterator[Entry]:
    """Yield every PNG of `splits` under the extracted folder."""
    for split in splits:
        split_dir = folder / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: missing CINIC-10 split folder. {_FIX}")
        for class_dir in sorted(split_dir.iterdir()):
            if class_dir.name.startswith(".") or not class_dir.is_dir():
                continue  # hidden folders and stray files (.DS_Store) are not classes
            label = class_index(class_dir.name, str(class_dir))
            for path in sorted(class_dir.iterdir()):
                if _is_png(path.name) and path.is_file():
                    yield split, label, path.name, path.read_bytes(), str(path)


def tarball_entries(tar_path: Path, splits: tuple[str, ...]) -> Iterator[Entry]:
    """Yield every PNG of `splits` in the tarball (members `[prefix/]split/class/name.png`)."""

    def wanted(member: str) -> bool:
        parts = PurePosixPath(member).parts
        return len(parts) >= 3 and parts[-3] in splits and _is_png(parts[-1])

    for member, data in walk_tarball(tar_path, _FIX, wanted):
        parts = PurePosixPath(member).parts
        where = f"{tar_path}:{member}"
        yield parts[-3], class_index(parts[-2], where), parts[-1], data, where


def decode_png(data: bytes, where: str) -> np.ndarray:
    """Decode one 32x32 PNG into a (3, 32, 32) uint8 array."""
    image_module = require("PIL.Image", "pillow", "CINIC-10")
    try:
        with image_module.open(io.BytesIO(data), formats=["PNG"]) as image:
            size = image.size
            rgb = np.asarray(image.convert("RGB")) if size == (32, 32) else None
    except Exception as exc:  # pillow raises many types on damaged files
        raise DataError(
            f"{where}: not a readable PNG ({type(exc).__name__}: {exc}). {_FIX}"
        ) from exc
    if rgb is None:
        raise DataError(f"{where}: image is {size[0]}x{size[1]}, expected 32x32. {_FIX}")
    return rgb.transpose(2, 0, 1)


def _stack(
    entries: list[tuple[int, str, np.ndarray]], where: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
    if not entries:
        raise DataError(f"{where}: no PNG images in the {split}/ split. {_FIX}")
    # Sorted by class, then file name: the same order from a folder and from a tarball.
    entries.sort(key=lambda entry: entry[:2])
    images = np.stack([image for _, _, image in entries])
    return images, np.array([label for label, _, _ in entries], dtype=np.int64)


def load_cinic10(root: str | Path, verify: bool = True, use_valid: bool = True) -> Dataset:
    """Load CINIC-10 (train + valid: 180,000 training images, test: 90,000; 3x32x32) from `root`.

    `root` may be the folder holding `train/`, `valid/` and `test/` (directly or under
    `cinic10/` or `CINIC-10/`), or `CINIC-10.tar.gz`. `use_valid=False` leaves `valid/` out of
    the training set. The publisher gives no per-file md5, so `verify` (the default) checks the
    counts instead: 9,000 images per class in every split read.
    """
    kind, path = locate_cinic10(existing_root(root, "CINIC-10", CINIC10_URL))
    train_splits = ("train", "valid") if use_valid else ("train",)
    splits = (*train_splits, "test")
    source = folder_entries if kind == "folder" else tarball_entries
    read: dict[str, list[tuple[int, str, np.ndarray]]] = {split: [] for split in splits}
    for split, label, name, data, where in source(path, splits):
        read[split].append((label, name, decode_png(data, where)))
    if verify:
        for split in splits:
            counts = np.bincount([label for label, _, _ in read[split]], minlength=len(CLASSES))
            for label, count in enumerate(counts):
                folder = f"{split}/{CLASSES[label]}/"
                where = str(path / folder) if kind == "folder" else f"{path}:{folder}"
                check_count(where, int(count), PER_CLASS, CINIC10_URL)
    train = [_stack(read[split], str(path), split) for split in train_splits]
    x_test, y_test = _stack(read["test"], str(path), "test")
    return Dataset(
        name="cinic10",
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        num_classes=len(CLASSES),
        mean=MEAN,
        std=STD,
        classes=CLASSES,
    )
