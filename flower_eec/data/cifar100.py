"""CIFAR-100 loader: the binary or the python version (folder or tarball), coarse or fine labels.

A binary record is one coarse-label byte, one fine-label byte, then 3072 pixels (1024 red, 1024
green, 1024 blue, row-major); the python version pickles a dict holding `data` (N, 3072),
`coarse_labels` and `fine_labels`. Each image carries both labels: `labels` picks the 20
superclasses ("coarse", FedAgg's setting) or the 100 classes ("fine").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flower_eec.data.archive import (
    Member,
    dict_entry,
    locate_release,
    read_folder,
    read_tarball,
    tarball_kind,
    unpickle_dict,
)
from flower_eec.data.checksums import (
    CIFAR100_PICKLE_MD5,
    CIFAR100_TAR_MD5,
    CIFAR100_URL,
    check_count,
    verify_md5,
)
from flower_eec.data.dataset import Dataset
from flower_eec.data.paths import existing_root, search_dirs
from flower_eec.errors import ConfigError, DataError

COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)
LABELS = ("coarse", "fine")
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 2 + IMAGE_BYTES  # coarse byte, fine byte, then the pixels
TRAIN_SIZE, TEST_SIZE = 50_000, 10_000

BINARY_DIR = "cifar-100-binary"
PICKLE_DIR = "cifar-100-python"
BINARY_TAR = "cifar-100-binary.tar.gz"
PICKLE_TAR = "cifar-100-python.tar.gz"
BINARY_FILES = ("train.bin", "test.bin")
PICKLE_FILES = ("train", "test")

_SUBDIRS = ("cifar100", "cifar-100")
_FIX = f"Re-download CIFAR-100 from {CIFAR100_URL}."
_EXPECTED_TAR = f"the official {BINARY_TAR} (holding {BINARY_DIR}/) or {PICKLE_TAR}"

# (images (N, 3, 32, 32) uint8, coarse labels (N,) int64, fine labels (N,) int64)
Split = tuple[np.ndarray, np.ndarray, np.ndarray]


def locate_cifar100(root: Path) -> tuple[str, Path]:
    """Find CIFAR-100 under `root`: return (format, path) with format "binary", "pickle" or "tar".

    Extracted folders win over tarballs because they need no decompression.
    """
    if root.is_file():
        return "tar", root
    dirs = search_dirs(root, _SUBDIRS)
    # "train" alone is too common a name: the python version also has its "test" beside it.
    found = locate_release(dirs, (("binary", BINARY_FILES[:1], BINARY_DIR),
                                  ("pickle", PICKLE_FILES, PICKLE_DIR)),
                           (BINARY_TAR, PICKLE_TAR))
    if found is not None:
        return found
    raise DataError(
        f"CIFAR-100 not found under {root} (searched {', '.join(str(d) for d in dirs)}): "
        f"expected a {BINARY_DIR}/ or {PICKLE_DIR}/ folder, or {BINARY_TAR} / {PICKLE_TAR}. "
        f"Download it from {CIFAR100_URL} and point `data.root` / FLOWER_EEC_DATA at its folder."
    )


def parse_binary(data: bytes, label: str) -> Split:
    """Decode binary-version records into images and both label sets."""
    if not data or len(data) % RECORD_BYTES:
        raise DataError(
            f"{label}: truncated or not a CIFAR-100 binary file: {len(data)} bytes is not a "
            f"positive multiple of the {RECORD_BYTES}-byte record (1 coarse label + 1 fine label "
            f"+ 3072 pixels). {_FIX}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return _checked(label, records[:, 2:], records[:, 0], records[:, 1])


def parse_pickle(data: bytes, label: str) -> Split:
    """Decode a python-version file (a pickled dict) into images and both label sets."""
    batch = unpickle_dict(data, label, "CIFAR-100 python-version file", _FIX)
    images = dict_entry(batch, "data")
    coarse = dict_entry(batch, "coarse_labels")
    fine = dict_entry(batch, "fine_labels")
    if images is None or coarse is None or fine is None:
        raise DataError(
            f"{label}: the pickled dict lacks 'data', 'coarse_labels' or 'fine_labels'. {_FIX}"
        )
    flat = np.asarray(images)
    if flat.dtype != np.uint8 or flat.ndim != 2 or flat.shape[1] != IMAGE_BYTES:
        raise DataError(
            f"{label}: expected 'data' as uint8 (N, {IMAGE_BYTES}), got {flat.dtype} "
            f"{flat.shape}. {_FIX}"
        )
    return _checked(label, flat, np.asarray(coarse), np.asarray(fine))


def _checked(label: str, flat: np.ndarray, coarse: np.ndarray, fine: np.ndarray) -> Split:
    if not len(coarse) == len(fine) == len(flat):
        raise DataError(
            f"{label}: {len(flat)} images but {len(coarse)} coarse and {len(fine)} fine labels. "
            f"{_FIX}"
        )
    for kind, values, count in (("coarse", coarse, 20), ("fine", fine, 100)):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= count):
            raise DataError(
                f"{label}: {kind} labels must be 0-{count - 1}, found {int(values.min())}.."
                f"{int(values.max())}. {_FIX}"
            )
    # In the release every fine class lies in exactly one superclass: a cheap check of the labels.
    pairs = np.unique(np.stack([fine, coarse]).astype(np.int64), axis=1)
    split_classes = np.flatnonzero(np.bincount(pairs[0], minlength=100) > 1)
    if len(split_classes):
        raise DataError(
            f"{label}: fine class {int(split_classes[0])} appears under several coarse classes; "
            f"in CIFAR-100 each fine class has one superclass. {_FIX}"
        )
    # Copy: frombuffer views are read-only, and torch.from_numpy warns on those.
    return (
        flat.reshape(-1, 3, 32, 32).copy(),
        coarse.astype(np.int64),
        fine.astype(np.int64),
    )


def _members(kind: str, path: Path) -> tuple[str, Iterator[Member]]:
    """Return the version ("binary" or "pickle") and its train and test files, in any order."""
    if kind == "tar":
        markers = {"pickle": PICKLE_DIR, "binary": BINARY_DIR}
        kind = tarball_kind(path, markers, _EXPECTED_TAR, _FIX)
        names = BINARY_FILES if kind == "binary" else PICKLE_FILES
        return kind, read_tarball(path, names, "CIFAR-100", _EXPECTED_TAR, _FIX)
    names = BINARY_FILES if kind == "binary" else PICKLE_FILES
    return kind, read_folder(path, names, "CIFAR-100", _FIX)


def load_cifar100(root: str | Path, verify: bool = True, labels: str = "coarse") -> Dataset:
    """Load CIFAR-100 (50,000 train + 10,000 test, 3x32x32) from `root`.

    `root` may be a `cifar-100-binary/` or `cifar-100-python/` folder, either official tarball, or
    a folder holding any of these (directly or under `cifar100/`). `labels` is "coarse" (20
    superclasses) or "fine" (100 classes). With `verify` (the default) the python version's files
    are checked against their official md5s, a binary tarball against the tarball's official md5,
    and an extracted binary folder (whose files have no published md5) by its image counts.
    """
    if labels not in LABELS:
        raise ConfigError(f"CIFAR-100 labels {labels!r}; allowed: {', '.join(LABELS)}")
    kind, path = locate_cifar100(existing_root(root, "CIFAR-100", CIFAR100_URL))
    from_tar = kind == "tar"
    kind, members = _members(kind, path)
    parse = parse_binary if kind == "binary" else parse_pickle
    splits: dict[str, Split] = {}
    for name, file, member, data in members:
        label = f"{file}:{member}" if member else str(file)
        splits[name] = parse(data, label)
        if verify and kind == "pickle":
            verify_md5(file, CIFAR100_PICKLE_MD5[name], CIFAR100_URL, member=member, data=data)
        elif verify and not from_tar:
            expected = TRAIN_SIZE if name == BINARY_FILES[0] else TEST_SIZE
            check_count(label, len(splits[name][0]), expected, CIFAR100_URL)
    if verify and kind == "binary" and from_tar:
        verify_md5(path, CIFAR100_TAR_MD5[BINARY_TAR], CIFAR100_URL)
    train_name, test_name = BINARY_FILES if kind == "binary" else PICKLE_FILES
    pick = 1 if labels == "coarse" else 2
    classes = COARSE_CLASSES if labels == "coarse" else FINE_CLASSES
    return Dataset(
        name="cifar100",
        x_train=splits[train_name][0],
        y_train=splits[train_name][pick],
        x_test=splits[test_name][0],
        y_test=splits[test_name][pick],
        num_classes=len(classes),
        mean=MEAN,
        std=STD,
        classes=classes,
    )
