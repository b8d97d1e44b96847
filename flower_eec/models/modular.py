"""ECLM's modular model: stem, L layers of M interchangeable modules, a unified selector, a head.

ECLM (Zhuang et al., "ECLM: Efficient Edge-Cloud Collaborative Learning with Continuous
Environment Adaptation", arXiv 2311.11083; docs/methods.md, section ECLM). The layout below (ResNet
basic blocks as modules, one FC selector over pooled stem features, top-k gating) is our
reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from flower_eec.errors import ConfigError
from flower_eec.models.resnet import BasicBlock

LAYERS_PREFIX = "layers."
SELECTOR_PREFIX = "selector."


@dataclass(frozen=True)
class Routing:
    """What the selector decided for a batch.

    Attributes:
        gates: ``(N, L, M)`` softmax of the selector per layer (0 for modules not held).
        chosen: ``(N, L, k)`` module indices each sample runs, per layer.
        weights: ``(N, L, k)`` the gate weights those modules' outputs are mixed with.
    """

    gates: torch.Tensor
    chosen: torch.Tensor
    weights: torch.Tensor


class SelectorNorm(nn.BatchNorm1d):
    """Standardises the selector's input features, without affine terms.

    A batch of one sample cannot be standardised by its own statistics, so it uses the running
    ones (a minibatch's remainder can hold one sample).
    """

    def __init__(self, features: int) -> None:
        super().__init__(features, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, features)`` standardised by the batch's statistics (the running ones in eval
        mode or for a single sample)."""
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, training=False,
                                eps=self.eps)
        return super().forward(x)


def module_key(layer: int, module: int) -> str:
    """State-dict prefix of module ``module`` of layer ``layer``, e.g. ``layers.1.3.``."""
    return f"{LAYERS_PREFIX}{layer}.{module}."


def block_of(key: str) -> tuple[int, int] | None:
    """``(layer, module)`` a state-dict key belongs to, or None for stem, selector and head."""
    if not key.startswith(LAYERS_PREFIX):
        return None
    layer, module = key.split(".")[1:3]
    return int(layer), int(module)


def _check(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"modular model: {name}={value!r} is not allowed; use an integer "
                          f">= {minimum}")
    return value


class ModularNet(nn.Module):
    """A modular CNN whose module layers each hold up to ``modules`` substitutable BasicBlocks.

    Layer ``l`` has ``channels * 2**l`` output channels; layer 0 keeps the resolution, each later
    layer halves it. All modules of one layer have the same shape, so any subset of them forms a
    working sub-model. The selector is one linear layer over the globally pooled stem features
    (standardised first, by default), giving ``layers`` softmaxes over ``modules``; each sample
    runs its ``top_k`` held modules per layer, mixed with their gate values divided by the
    (gradient-free) sum of the chosen gates: the output keeps unit scale and the selector still
    gets a gradient when ``top_k`` is 1.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        layers: Module layers L.
        modules: Modules per layer M in the full model.
        top_k: Modules each sample runs per layer (1 or 2); fewer where a layer holds fewer.
        channels: Channels of the stem and of layer 0.
        kept: Module indices held per layer (a sub-model); ``None`` holds all of them.
        selector_norm: Standardise the pooled features (BatchNorm without affine terms) before
            the selector's linear layer, so that the gates depend on the input more than on
            the selector's bias (our addition against module collapse; docs/methods.md, ECLM).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, layers: int = 3,
                 modules: int = 4, top_k: int = 1, channels: int = 16,
                 kept: Sequence[Sequence[int]] | None = None,
                 selector_norm: bool = True) -> None:
        super().__init__()
        self.num_layers = _check("layers", layers, 1)
        self.num_modules = _check("modules", modules, 1)
        self.top_k = _check("top_k", top_k, 1)
        if top_k > 2 or top_k > modules:
            raise ConfigError(f"modular model: top_k={top_k} is not allowed; use 1 or 2, at most "
                              f"modules ({modules})")
        _check("channels", channels, 1)
        self.kept = self._checked_kept(kept)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        linear = nn.Linear(channels, layers * modules)
        self.selector = (nn.Sequential(SelectorNorm(channels), linear)
                         if selector_norm else nn.Sequential(linear))
        self.selector_frozen = False
        widths = [channels * 2**layer for layer in range(layers)]
        self.layers = nn.ModuleList(
            nn.ModuleDict({str(i): BasicBlock(widths[max(layer - 1, 0)], widths[layer],
                                              stride=1 if layer == 0 else 2)
                           for i in self.kept[layer]})
            for layer in range(layers))
        self.head = nn.Linear(widths[-1], num_classes)
        available = torch.zeros(layers, modules, dtype=torch.bool)
        for layer, held in enumerate(self.kept):
            available[layer, list(held)] = True
        self.available: torch.Tensor
        self.register_buffer("available", available, persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _checked_kept(self, kept: Sequence[Sequence[int]] | None
                      ) -> tuple[tuple[int, ...], ...]:
        if kept is None:
            return tuple(tuple(range(self.num_modules)) for _ in range(self.num_layers))
        if len(kept) != self.num_layers:
            raise ConfigError(f"modular model: kept lists {len(kept)} layers, the model has "
                              f"{self.num_layers}")
        out = []
        for layer, held in enumerate(kept):
            ids = tuple(sorted({int(i) for i in held}))
            if not ids or ids[0] < 0 or ids[-1] >= self.num_modules:
                raise ConfigError(f"modular model: layer {layer} must hold at least one module "
                                  f"among 0..{self.num_modules - 1}, got {list(held)}")
            out.append(ids)
        return tuple(out)

    def freeze_selector(self) -> None:
        """Keep the selector as it is: no gradient, and its statistics stay in eval mode."""
        self.selector.requires_grad_(False)
        self.selector_frozen = True
        self.selector.eval()

    def train(self, mode: bool = True) -> ModularNet:
        """``nn.Module.train``, except that a frozen selector stays in eval mode."""
        super().train(mode)
        if self.selector_frozen:
            self.selector.eval()
        return self

    def route(self, features: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Gates ``(N, L, M)`` from stem features; modules not held get probability 0.

        ``noise`` (``(N, L, M)``), when given, is added to the selector's logits first.
        """
        pooled = features.mean(dim=(2, 3))
        logits = self.selector(pooled).view(-1, self.num_layers, self.num_modules)
        if noise is not None:
            logits = logits + noise
        return logits.masked_fill(~self.available, float("-inf")).softmax(dim=2)

    def forward_routed(self, x: torch.Tensor, gate_noise: float = 0.0,
                       generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, Routing]:
        """Logits ``(N, num_classes)`` and the routing that produced them.

        ``gate_noise`` > 0 adds Gaussian noise of that standard deviation to the selector's
        logits (noisy gating, for training only), drawn from ``generator`` (a CPU generator).
        """
        h = self.stem(x)
        noise = None
        if gate_noise > 0:
            shape = (x.shape[0], self.num_layers, self.num_modules)
            noise = (gate_noise * torch.randn(shape, generator=generator)).to(x.device)
        gates = self.route(h, noise)
        chosen_all, weights_all = [], []
        for layer, blocks in enumerate(self.layers):
            k = min(self.top_k, len(self.kept[layer]))
            top, chosen = gates[:, layer].topk(k, dim=1)
            weights = top / top.sum(dim=1, keepdim=True).detach()
            out: torch.Tensor | None = None
            for name, block in blocks.items():  # type: ignore[operator]
                hit = chosen == int(name)
                rows = hit.any(dim=1).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                mix = (weights * hit).sum(dim=1)[rows].view(-1, 1, 1, 1)
                y = block(h[rows]) * mix
                if out is None:
                    out = y.new_zeros((h.shape[0], *y.shape[1:]))
                out = out.index_add(0, rows, y)
            assert out is not None  # every sample runs k >= 1 held modules
            h = out
            chosen_all.append(chosen)
            weights_all.append(weights)
        logits = self.head(h.mean(dim=(2, 3)))
        return logits, Routing(gates, torch.stack(chosen_all, 1), torch.stack(weights_all, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of a batch of images ``(N, C, H, W)``."""
        return self.forward_routed(x)[0]


def module_sizes(model: ModularNet) -> tuple[list[list[int]], int]:
    """Parameters of each module ``[layer][module]`` (0 where not held), and of everything else."""
    sizes = [[0] * model.num_modules for _ in range(model.num_layers)]
    shared = 0
    for name, parameter in model.named_parameters():
        block = block_of(name)
        if block is None:
            shared += parameter.numel()
        else:
            sizes[block[0]][block[1]] += parameter.numel()
    return sizes, shared
