"""The 3-layer device CNN of FedAgg (Wu et al., INFOCOM 2024, arXiv 2312.11489).

A single 7x7 conv block then a two-layer head: the smallest model of the end-edge-cloud tree.
"""

from __future__ import annotations

import torch
from torch import nn

_STEM_CHANNELS = 64
_HIDDEN = 48


class CNN3(nn.Module):
    """FedAgg's device model: conv7x7 + BN + ReLU + maxpool, global average pool, FC-ReLU-FC.

    Global average pooling makes the head independent of the input's spatial size, so the same
    class serves 28x28 MNIST and 32x32 CIFAR.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images (1 for MNIST, 3 for CIFAR).

    Attributes:
        extractor: Conv block and pooling; maps images to a ``(N, 64)`` feature vector.
        classifier: ``FC(64->48) + ReLU + FC(48->num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.extractor = nn.Sequential(
            nn.Conv2d(
                in_channels,
                _STEM_CHANNELS,
                kernel_size=7,
                stride=2,
                padding=3,
                bias=False,
            ),
            nn.BatchNorm2d(_STEM_CHANNELS),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_STEM_CHANNELS, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(_HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of a batch of images ``(N, C, H, W)``."""
        return self.classifier(self.extractor(x))
