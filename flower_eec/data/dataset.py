"""The in-memory image-classification dataset every loader returns.

Images stay uint8 (N, C, H, W) so a dataset costs 1 byte per pixel until a batch is normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flower_eec.errors import DataError


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Train and test splits of one dataset, with the per-channel statistics used to normalise it.

    `mean` and `std` are in [0, 1] pixel units, one entry per channel; `classes` names label 0, 1,
    ... (empty when the classes have no names, as for synthetic data). Channels and image size come
    from the arrays (`in_channels`, `image_size`). Equality is identity: arrays have no single
    truth value, so value comparison is left to callers.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse arrays that would only fail later, deep inside training."""
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            _check_split(self.name, split, x, y, self.num_classes)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in shape; both splits must come from one release"
            )
        channels = self.x_train.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"dataset {self.name!r}: mean/std need one value per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise DataError(f"dataset {self.name!r}: every std must be > 0, got {self.std}")
        if self.classes and len(self.classes) != self.num_classes:
            raise DataError(
                f"dataset {self.name!r}: {len(self.classes)} class names for "
                f"{self.num_classes} classes"
            )

    @property
    def in_channels(self) -> int:
        """Number of image channels (3 for colour datasets, 1 for grey ones)."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """Side of the square images in pixels."""
        return int(self.x_train.shape[2])

    def __repr__(self) -> str:
        """Summarise shapes instead of printing the arrays."""
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"image={self.in_channels}x{self.image_size}x{self.x_train.shape[3]}, "
            f"num_classes={self.num_classes})"
        )


def _check_split(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    where = f"dataset {name!r} ({split} split)"
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(f"{where}: images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
    if y.dtype != np.int64 or y.ndim != 1:
        raise DataError(f"{where}: labels must be int64 (N,), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{where}: labels span {int(y.min())}..{int(y.max())}, outside 0..{num_classes - 1}"
        )
