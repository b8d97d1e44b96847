"""Batched image normalisation and augmentation in plain torch (no torchvision, no per-image loop).

Random numbers are drawn on the generator's device, so one CPU generator gives the same result for
a batch on CPU or GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalise(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Map uint8 images (N, C, H, W) to float32 ((x / 255) - mean) / std, per channel."""
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise ValueError(
            f"normalise expects uint8 (N, C, H, W), got {x_uint8.dtype} {tuple(x_uint8.shape)}"
        )
    if len(mean) != x_uint8.shape[1] or len(std) != x_uint8.shape[1]:
        raise ValueError(
            f"normalise needs one mean/std per channel ({x_uint8.shape[1]}), "
            f"got {len(mean)}/{len(std)}"
        )
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x_uint8.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=x_uint8.device).view(shape)
    return (x_uint8.float().div_(255.0) - mean_t) / std_t


def _randint(
    high: int, n: int, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """`n` ints in [0, high) drawn on the generator's device, returned on `like`'s device."""
    device = generator.device if generator is not None else like.device
    draw = torch.randint(0, high, (n,), generator=generator, device=device)
    return draw.to(like.device)


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad each side by `padding`, then cut an H x W window at a random offset per image."""
    if padding == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = _randint(2 * padding + 1, n, x, generator)
    left = _randint(2 * padding + 1, n, x, generator)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Gathering from channels-last gives (N, H, W, C) in one indexing op.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = _randint(2, x.shape[0], x, generator).bool()
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_cutout(
    x: torch.Tensor, side: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero a side x side square per image, centred anywhere on the image, clipped at borders."""
    if side == 0:
        return x
    n, _, h, w = x.shape
    cy = _randint(h, n, x, generator)
    cx = _randint(w, n, x, generator)
    top, left = cy - side // 2, cx - side // 2
    row = torch.arange(h, device=x.device)[None, :]
    col = torch.arange(w, device=x.device)[None, :]
    inside_rows = (row >= top[:, None]) & (row < top[:, None] + side)  # (N, H)
    inside_cols = (col >= left[:, None]) & (col < left[:, None] + side)  # (N, W)
    mask = inside_rows[:, :, None] & inside_cols[:, None, :]
    return x.masked_fill(mask[:, None], 0)


def augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    crop_padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
) -> torch.Tensor:
    """Random crop (zero padding), horizontal flip, then optional Cutout, for a batch (N, C, H, W).

    Meant for already-normalised float batches, where zero is the dataset mean. The same
    generator state gives the same output. `x` is not modified.
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if crop_padding < 0 or cutout < 0:
        raise ValueError(f"crop_padding and cutout must be >= 0, got {crop_padding}, {cutout}")
    out = random_crop(x, crop_padding, generator)
    if flip:
        out = random_flip(out, generator)
    return random_cutout(out, cutout, generator)
