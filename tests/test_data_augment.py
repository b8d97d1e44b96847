"""Batched augmentation: exact results for known images, determinism, and Cutout's area.

Everything runs on CPU; a CUDA check runs only where a GPU is present.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from flower_eec.data import augment, normalise, random_crop, random_cutout, random_flip


def batch(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random float images (n, 3, 8, 8): asymmetric, so a flip or shift always shows."""
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalise_known_values() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = normalise(x, mean=(0.2,), std=(0.4,))
    assert out.dtype == torch.float32 and out.shape == (1, 1, 1, 3)
    torch.testing.assert_close(out.flatten(), torch.tensor([-0.5, 0.0, 2.0]))
    rgb = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    torch.testing.assert_close(
        normalise(rgb, (0.5, 0.0, 1.0), (0.5, 1.0, 0.5))[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0])
    )
    with pytest.raises(ValueError, match="uint8"):
        normalise(rgb.float(), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="per channel"):
        normalise(rgb, (0.5,), (0.5,))


def test_augment_keeps_shape_dtype_and_input() -> None:
    x = batch()
    before = x.clone()
    out = augment(x, seeded(), crop_padding=2, flip=True, cutout=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(x, before)
    assert not torch.equal(out, x)


def test_no_padding_no_flip_no_cutout_is_identity() -> None:
    x = batch()
    assert torch.equal(augment(x, seeded(), crop_padding=0, flip=False, cutout=0), x)
    assert torch.equal(random_crop(x, 0, seeded()), x)


def test_flip_matches_torch_flip_image_by_image() -> None:
    x = batch()
    out = random_flip(x, seeded(3))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert torch.all(flipped ^ kept)  # every image is exactly one of the two
    assert 10 < int(flipped.sum()) < 54  # a fair coin over 64 images
    only_flip = augment(x, seeded(3), crop_padding=0, flip=True)
    assert torch.equal(only_flip, out)


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    x, pad = batch(32), 2
    out = random_crop(x, pad, seeded(5))
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets really vary per image


def test_same_generator_seed_same_output() -> None:
    x = batch()
    options: dict[str, Any] = {"crop_padding": 4, "flip": True, "cutout": 4}
    first = augment(x, seeded(11), **options)
    assert torch.equal(first, augment(x, seeded(11), **options))
    assert not torch.equal(first, augment(x, seeded(12), **options))


def test_cutout_zeroes_exactly_a_square_when_inside() -> None:
    x = torch.ones(256, 2, 16, 16)
    side = 6
    out = random_cutout(x, side, seeded(1))
    zeros = out == 0
    assert torch.equal(zeros[:, 0], zeros[:, 1])  # same square in every channel
    inside = 0
    for mask in zeros[:, 0]:
        rows = torch.nonzero(mask.any(1)).flatten()
        cols = torch.nonzero(mask.any(0)).flatten()
        assert 0 < int(mask.sum()) <= side * side
        if rows.min() > 0 and cols.min() > 0 and rows.max() < 15 and cols.max() < 15:
            inside += 1
            assert int(mask.sum()) == side * side
            assert len(rows) == side and len(cols) == side
    assert inside > 50


def test_augment_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch"):
        augment(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=">= 0"):
        augment(batch(), crop_padding=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_gives_same_result_on_gpu() -> None:
    x = batch()
    options: dict[str, Any] = {"crop_padding": 2, "flip": True, "cutout": 3}
    cpu = augment(x, seeded(7), **options)
    gpu = augment(x.cuda(), seeded(7), **options)
    assert torch.equal(gpu.cpu(), cpu)
    assert augment(x.cuda(), None, **options).device.type == "cuda"
