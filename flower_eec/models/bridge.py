"""FedAgg's bridge autoencoder (Wu et al., INFOCOM 2024, arXiv 2312.11489): images <-> 4x8x8 codes.

Devices upload ``encode(x)`` once; every tier distils on the bridge samples ``decode(code)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flower_eec.errors import DataError
from flower_eec.models.weights_io import load_state_json

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "bridge_cifar10.json"
EMBEDDING_SHAPE = (4, 8, 8)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    # 3x3 with padding 1 keeps the spatial size; pooling and upsampling alone change it.
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class BridgeAutoencoder(nn.Module):
    """The small frozen autoencoder whose codes carry FedAgg's knowledge between tiers.

    Images are floats in ``[0, 1]`` (``uint8 / 255``, not mean/std-normalised); a 32x32 image
    becomes a ``4 x 8 x 8`` code (256 floats) and back. Encoder: conv(3->16)+BN+ReLU+maxpool2,
    conv(16->8)+BN+ReLU+maxpool2, conv(8->4)+ReLU. Decoder: conv(4->8)+ReLU,
    conv(8->8)+BN+ReLU+upsample2, conv(8->16)+BN+ReLU+upsample2, conv(16->3)+sigmoid.
    All convolutions are 3x3 with padding 1; upsampling is nearest-neighbour.

    Args:
        in_channels: Image channels (3 for CIFAR-10).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = nn.Sequential(
            _conv(in_channels, 16),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _conv(16, 8),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _conv(8, 4),
            nn.ReLU(inplace=True),
        )
        self.decoder = nn.Sequential(
            _conv(4, 8),
            nn.ReLU(inplace=True),
            _conv(8, 8),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(8, 16),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(16, in_channels),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``(N, 4, H/4, W/4)`` of images ``(N, C, H, W)`` in ``[0, 1]``."""
        return self.encoder(x)

    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Bridge samples ``(N, C, 4h, 4w)`` in ``[0, 1]`` of codes ``(N, 4, h, w)``."""
        return self.decoder(embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))`` of images in ``[0, 1]``."""
        return self.decode(self.encode(x))


def bridge_samples(
    bridge: BridgeAutoencoder,
    embeddings: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Decode codes and normalise them like the dataset's real images, without gradient.

    The official demo fed classifiers raw ``[0, 1]`` bridge samples while testing them on
    normalised images (two input spaces); normalising here keeps one.
    """
    shape = (1, -1, 1, 1)
    with torch.no_grad():
        pixels = bridge.decode(embeddings)
        mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(shape)
        std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(shape)
        return (pixels - mean_t) / std_t


def decode(bridge: BridgeAutoencoder, codes: torch.Tensor, mean: Sequence[float],
           std: Sequence[float], raw: bool, batch_size: int = 1000) -> torch.Tensor:
    """Bridge samples of ``codes``, in batches: normalised like real images, or in [0, 1] when
    ``raw`` (the official demo's input space)."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(codes), batch_size):
            chunk = codes[start:start + batch_size].float()
            parts.append(bridge.decode(chunk) if raw else bridge_samples(bridge, chunk, mean, std))
    return torch.cat(parts) if parts else torch.zeros(0)


def encode(bridge: BridgeAutoencoder, images: torch.Tensor, batch_size: int = 1000
           ) -> torch.Tensor:
    """Codes of uint8 images ``(N, C, H, W)`` (scaled to [0, 1] first), in batches, no gradient.

    Raises:
        DataError: The images do not fit the bridge (channels, or a side not divisible by 4).
    """
    check_images(bridge, images.shape)
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            parts.append(bridge.encode(images[start:start + batch_size].float() / 255.0))
    return torch.cat(parts) if parts else torch.zeros(0, *code_shape(images.shape))


def code_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Shape of one code for images of ``(N, C, H, W)``: two poolings of 2, 4 channels."""
    height, width = image_shape[-2:]
    return (EMBEDDING_SHAPE[0], height // 4, width // 4)


def check_images(bridge: BridgeAutoencoder, image_shape: Sequence[int]) -> None:
    """Raise ``DataError`` unless images of ``(N, C, H, W)`` fit ``bridge``."""
    channels, height, width = image_shape[-3:]
    if channels != bridge.in_channels or height % 4 or width % 4:
        raise DataError(
            f"the bridge takes {bridge.in_channels}-channel images whose sides divide by 4 "
            f"(the shipped one: 3x32x32, CIFAR-10); these are {channels}x{height}x{width}. "
            "Train a bridge for them with scripts/train_bridge.py and pass it as bridge=")


def bridge_digest(bridge: BridgeAutoencoder) -> str:
    """A short digest of the bridge's weights: the server's and a device's must be equal, or
    the server decodes the device's codes with another decoder than the encoder that made them."""
    digest = hashlib.blake2b(digest_size=8)
    for key, value in sorted(bridge.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def bridge_meta(path: str | Path | None = None) -> dict[str, Any]:
    """The provenance of a bridge's weights file (``None``: the shipped one): ``in_channels``,
    and from ``scripts/train_bridge.py`` the ``dataset`` (its name first), ``holdout_fraction``,
    ``cifar100_labels``, ...

    Raises:
        DataError: The file is missing or corrupt.
    """
    return load_state_json(DEFAULT_WEIGHTS if path is None else Path(path))[1]


def load_bridge(path: str | Path | None = None) -> BridgeAutoencoder:
    """The bridge with trained weights, frozen: eval mode, no parameter requires grad.

    Args:
        path: A weights JSON written by ``save_state_json``; ``None`` takes the CIFAR-10 bridge
            shipped in the package (trained by ``scripts/train_bridge.py`` on a held-out slice).

    Raises:
        DataError: The file is missing or corrupt, or its tensors do not fit the bridge.
    """
    source = DEFAULT_WEIGHTS if path is None else Path(path)
    state, meta = load_state_json(source)
    in_channels = meta.get("in_channels", 3)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise DataError(f"weights file {source}: meta.in_channels={in_channels!r} is not valid")
    bridge = BridgeAutoencoder(in_channels=in_channels)
    try:
        bridge.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(
            f"weights file {source} does not fit the bridge autoencoder ({err}); regenerate it "
            "with scripts/train_bridge.py"
        ) from err
    bridge.eval()
    bridge.requires_grad_(False)
    return bridge
