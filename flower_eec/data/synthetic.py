"""Seeded class-conditional image data for tests and smoke runs without any download.

Each class is a fixed random low-frequency template; samples add a random shift in brightness and
pixel noise, so a small CNN can learn it but a single pixel cannot tell the classes apart.
"""

from __future__ import annotations

import numpy as np

from flower_eec.data.dataset import Dataset
from flower_eec.errors import ConfigError

_GRID = 4  # coarse template resolution: 4x4 keeps patterns low-frequency at any image size
_TEMPLATE_SCALE = 24.0  # pixel units: nearest-class-mean gets ~97%, a single pixel far less
_NOISE = 48.0
_BRIGHTNESS = 16.0


def _upsample_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) linear-interpolation weights mapping a coarse axis onto `size` pixels."""
    positions = np.linspace(0, grid - 1, size)
    low = np.clip(np.floor(positions).astype(int), 0, grid - 2)
    frac = positions - low
    weights = np.zeros((size, grid))
    weights[np.arange(size), low] = 1 - frac
    weights[np.arange(size), low + 1] = frac
    return weights


def class_templates(
    num_classes: int, channels: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Return (num_classes, channels, size, size) smooth zero-centred float templates."""
    coarse = rng.standard_normal((num_classes, channels, _GRID, _GRID))
    up = _upsample_matrix(size, _GRID)
    return np.einsum("hi,kcij,wj->kchw", up, coarse, up) * _TEMPLATE_SCALE


def sample_images(
    templates: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw uint8 images: 128 + class template + per-image brightness + per-pixel noise."""
    shape = (len(labels), *templates.shape[1:])
    brightness = rng.normal(0.0, _BRIGHTNESS, size=(len(labels), 1, 1, 1))
    pixels = 128.0 + templates[labels] + brightness + rng.normal(0.0, _NOISE, size=shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def balanced_labels(num: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled int64 labels with class counts differing by at most one."""
    return rng.permutation(np.arange(num, dtype=np.int64) % num_classes)


def make_synthetic(
    num_classes: int = 10,
    num_train: int = 2000,
    num_test: int = 500,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
) -> Dataset:
    """Build a deterministic synthetic Dataset; the same arguments always give identical arrays.

    Templates, train and test draws use independent seeded streams, so changing `num_train` does
    not change the classes or the test set. mean/std are measured on the train images.
    """
    if num_classes < 2:
        raise ConfigError(f"synthetic num_classes must be >= 2, got {num_classes}")
    if num_train < num_classes or num_test < 1:
        raise ConfigError(
            f"synthetic needs num_train >= num_classes ({num_classes}) and num_test >= 1, got "
            f"num_train={num_train}, num_test={num_test}"
        )
    if channels < 1 or size < 2:
        raise ConfigError(f"synthetic needs channels >= 1 and size >= 2, got {channels}, {size}")
    template_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
    templates = class_templates(num_classes, channels, size, np.random.default_rng(template_seq))
    train_rng, test_rng = (
        np.random.default_rng(train_seq),
        np.random.default_rng(test_seq),
    )
    y_train = balanced_labels(num_train, num_classes, train_rng)
    x_train = sample_images(templates, y_train, train_rng)
    y_test = balanced_labels(num_test, num_classes, test_rng)
    x_test = sample_images(templates, y_test, test_rng)
    scaled = x_train.astype(np.float64) / 255.0
    return Dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        mean=tuple(float(m) for m in scaled.mean(axis=(0, 2, 3))),
        std=tuple(float(s) for s in scaled.std(axis=(0, 2, 3))),
    )
