"""BasicBlock ResNets of any depth, split into extractor, intermediate layers and classifier.

The split is FedIN's (Chan et al., arXiv 2304.00759); ResNet-10/18 are FedAgg's edge and
cloud models.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from flower_eec.errors import ConfigError

STEMS: tuple[str, ...] = ("imagenet", "cifar")
_BASE_WIDTHS = (64, 128, 256, 512)


def stage_widths(width: float) -> tuple[int, int, int, int]:
    """Channels of the four stages: 64, 128, 256, 512 scaled by ``width``, rounded, at least 1."""
    w0, w1, w2, w3 = (max(1, round(base * width)) for base in _BASE_WIDTHS)
    return w0, w1, w2, w3


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 conv + BN projects the shortcut when needed.

    Attribute names follow torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``) so
    state dicts read the way ResNet users expect.

    Args:
        in_channels: Channels of the block's input.
        out_channels: Channels of the block's output.
        stride: Stride of the first conv (2 halves the spatial size at the start of a stage).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            out_channels, out_channels, kernel_size=3, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(
                    in_channels, out_channels, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_stage(
    in_channels: int, out_channels: int, num_blocks: int, stride: int
) -> nn.Sequential:
    """A stage of ``num_blocks`` BasicBlocks; only the first one changes stride and channels."""
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def make_stem(
    in_channels: int, out_channels: int, stem: str
) -> OrderedDict[str, nn.Module]:
    """The input layers: ImageNet's 7x7/2 conv + maxpool, or CIFAR's 3x3/1 conv without pooling."""
    if stem == "imagenet":
        return OrderedDict(
            conv1=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size=7,
                stride=2,
                padding=3,
                bias=False,
            ),
            bn1=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    return OrderedDict(
        conv1=nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False
        ),
        bn1=nn.BatchNorm2d(out_channels),
        relu=nn.ReLU(inplace=True),
    )


class ResNet(nn.Module):
    """A BasicBlock ResNet in FedIN's three parts: ``extractor``, ``intermediate``, ``classifier``.

    ``model(x) == classifier(intermediate(extractor(x)))``. Parameter names depend only on a
    tensor's position (stage, block), never on the depth, so a deeper model's state dict is a
    superset of a shallower one's with equal shapes for shared names: layer-wise aggregation across
    depths matches tensors by name.

    Args:
        blocks: BasicBlocks in each of the four stages, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        stem: ``"imagenet"`` (7x7 stride-2 conv + maxpool, as in FedAgg's demo) or ``"cifar"``
            (3x3 stride-1 conv, no pooling: better accuracy on 32x32 images).
        width: Multiplier of the stage widths 64, 128, 256, 512 (rounded, at least 1 channel).

    Attributes:
        extractor: Stem + stage 1 (names ``conv1``, ``bn1``, ``layer1``).
        intermediate: Stages 2-4 as an ``nn.Sequential`` of three stages.
        classifier: Adaptive average pool + flatten + ``fc``.
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        stem: str = "imagenet",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"stem={stem!r} is not allowed; use one of {STEMS}")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ConfigError(
                f"blocks={blocks!r} is not allowed; give four block counts, each >= 1"
            )
        if (
            isinstance(width, bool)
            or not isinstance(width, (int, float))
            or not width > 0
        ):
            raise ConfigError(f"width={width!r} is not allowed; use a number > 0")
        w = stage_widths(width)
        self.extractor = nn.Sequential(
            OrderedDict(
                **make_stem(in_channels, w[0], stem),
                layer1=make_stage(w[0], w[0], blocks[0], stride=1),
            )
        )
        self.intermediate = nn.Sequential(
            *(make_stage(w[i - 1], w[i], blocks[i], stride=2) for i in (1, 2, 3))
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(w[3], num_classes),
            )
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # He init (fan_out) for ReLU convs, unit BN: the usual ResNet start, as torchvision does.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu"
                )
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of a batch of images ``(N, C, H, W)``."""
        return self.classifier(self.intermediate(self.extractor(x)))
