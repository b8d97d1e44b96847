"""FedIN's depth-heterogeneous ResNets (Chan et al., arXiv 2304.00759) and their split over devices.

Our reconstruction (docs/methods.md, section FedIN and HeteroAvg): every depth shares the
extractor E (stem + a one-block stage 1, ResNet-10's) and the classifier C; the intermediate
layers IN (stages 2-4) take the zoo's block counts of the named depth, so a shallower model's
tensors are a subset of a deeper one's, with equal names and shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from flower_eec.errors import ConfigError
from flower_eec.models import RESNET_BLOCKS
from flower_eec.models.resnet import ResNet

FEDIN_DEPTHS: tuple[str, ...] = tuple(RESNET_BLOCKS)
EXTRACTOR_BLOCKS = 1  # stage 1 is part of E, so every depth carries the same number of blocks


def fedin_blocks(name: str) -> tuple[int, int, int, int]:
    """Blocks per stage of FedIN's model ``name``: one in stage 1, the zoo's in stages 2-4."""
    if name not in RESNET_BLOCKS:
        raise ConfigError(f"fedin depth {name!r} is unknown; use one of {FEDIN_DEPTHS}")
    _, *intermediate = RESNET_BLOCKS[name]
    b2, b3, b4 = intermediate
    return EXTRACTOR_BLOCKS, b2, b3, b4


def build_fedin_model(name: str, num_classes: int, in_channels: int, *, stem: str,
                      width: float) -> ResNet:
    """A freshly initialised FedIN model of depth ``name`` (e.g. ``"resnet18"``)."""
    return ResNet(fedin_blocks(name), num_classes=num_classes, in_channels=in_channels,
                  stem=stem, width=width)


def deepest(depths: Sequence[str]) -> str:
    """The depth with the most intermediate blocks: the global model's architecture."""
    return max(depths, key=lambda name: (sum(fedin_blocks(name)), FEDIN_DEPTHS.index(name)))


def assign_depths(num_devices: int, depths: Sequence[str], seed: int) -> list[str]:
    """The depth of every device: an even split over ``depths`` (counts differ by at most one),
    in a seeded random order so that every edge gets a mix."""
    if not depths:
        raise ConfigError("fedin.depths is empty; list at least one depth, e.g. [resnet10]")
    for name in depths:
        fedin_blocks(name)
    even = np.resize(np.arange(len(depths)), num_devices)
    order = np.random.default_rng([seed, 11]).permutation(even)
    return [depths[int(i)] for i in order]


@torch.no_grad()
def feature_shapes(model: ResNet, in_channels: int, image_size: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-sample shapes of ``s_in = E(x)`` and ``s_out = IN(s_in)`` for square images."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, image_size, image_size,
                    device=next(model.parameters()).device)
    s_in = model.extractor(x)
    s_out = model.intermediate(s_in)
    model.train(was_training)
    return tuple(s_in.shape[1:]), tuple(s_out.shape[1:])
