"""The model zoo by name: FedAgg's device CNN, the BasicBlock ResNet family, ECLM's modular net.

ResNet depths 10-26 share parameter names by position, for FedIN's layer-wise aggregation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from flower_eec.errors import ConfigError
from flower_eec.models.cnn import CNN3
from flower_eec.models.modular import ModularNet
from flower_eec.models.resnet import STEMS, ResNet

__all__ = ["CNN3", "MODEL_NAMES", "STEMS", "ModularNet", "ResNet", "build_model",
           "count_parameters", "seeded"]

RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet14": (1, 1, 2, 2),
    "resnet18": (2, 2, 2, 2),
    "resnet22": (2, 2, 3, 3),
    "resnet26": (3, 3, 3, 3),
}
MODEL_NAMES: tuple[str, ...] = ("cnn3", *RESNET_BLOCKS, "modular")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "cnn3": (),
    **dict.fromkeys(RESNET_BLOCKS, ("stem", "width")),
    "modular": ("layers", "modules", "top_k", "channels", "kept", "selector_norm"),
}


def _check_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} is not allowed; use an integer >= 1")


def build_model(
    name: str, num_classes: int = 10, in_channels: int = 3, **options: Any
) -> nn.Module:
    """Build a freshly initialised model of the zoo.

    Args:
        name: One of ``MODEL_NAMES``: ``cnn3``, ``resnet10``, ``resnet14``, ``resnet18``,
            ``resnet22``, ``resnet26``, ``modular``.
        num_classes: Number of output logits.
        in_channels: Channels of the input images (1 for MNIST, 3 for CIFAR).
        **options: ResNets: ``stem`` (``"imagenet"`` or ``"cifar"``, default ``"imagenet"``)
            and ``width`` (stage-width multiplier, default 1.0). ``modular``: ``layers``,
            ``modules``, ``top_k``, ``channels``, ``kept`` (see ``ModularNet``). ``cnn3`` takes
            none.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: The name or an option is unknown, or a value is not allowed.
    """
    if name not in _OPTIONS:
        raise ConfigError(f"model {name!r} is unknown; use one of {MODEL_NAMES}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        allowed = _OPTIONS[name] or "none"
        raise ConfigError(
            f"model {name!r} has no option(s) {unknown}; allowed: {allowed}"
        )
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    if name == "cnn3":
        return CNN3(num_classes=num_classes, in_channels=in_channels)
    if name == "modular":
        return ModularNet(num_classes=num_classes, in_channels=in_channels, **options)
    return ResNet(
        RESNET_BLOCKS[name], num_classes=num_classes, in_channels=in_channels, **options
    )


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in the model's parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build models inside this block to draw their initial weights from ``seed``; torch's global
    random stream is as before afterwards.

    Only the CPU generator is seeded (the zoo builds on the CPU; move the model after): unlike
    ``torch.manual_seed``, this does not queue a seed for every accelerator backend (about
    0.3 ms a call on a 2-core machine, paid once per message).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
