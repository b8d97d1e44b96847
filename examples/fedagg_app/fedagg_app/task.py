"""The app's own parts: a small CNN of any width, and a synthetic colour-shape dataset.

Nothing here comes from flower-eec: this is what a user brings (their model and their data).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import Context
from torch import nn
from torch.nn import functional as F

from flower_eec.clients import Images

NUM_CLASSES = 10
# Five colours, each drawn as a solid square or as a striped one: ten classes.
COLOURS = torch.tensor([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                        [245, 130, 48]], dtype=torch.float32)


class Net(nn.Module):
    """Three conv blocks and a linear head; ``width`` sets the size (FedAgg's tiers may differ)."""

    def __init__(self, width: int = 8, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images (N, 3, 32, 32) and their labels, the same for the same seed.

    Each image is a grey background with a square of its class's colour at a random place
    and size; odd classes stripe the square. Pixel noise keeps it from being trivial.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = torch.randint(40, 140, (n, 1, 1, 1), generator=g).float().expand(n, 3, 32, 32).clone()
    size = torch.randint(10, 17, (n, 1, 1), generator=g)
    top = torch.randint(0, 32 - 16, (n, 1, 1), generator=g)
    left = torch.randint(0, 32 - 16, (n, 1, 1), generator=g)
    rows, cols = torch.arange(32).view(1, 32, 1), torch.arange(32).view(1, 1, 32)
    square = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    striped = (y % 2 == 1).view(n, 1, 1) & (rows % 4 < 2)
    mask = (square & ~striped).unsqueeze(1)
    x = torch.where(mask, COLOURS[y // 2].view(n, 3, 1, 1), x)
    x += 20 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 255).round().to(torch.uint8), y


@lru_cache(maxsize=4)
def load_data(num_train: int, num_test: int, seed: int) -> tuple[Images, Images]:
    """The whole train and test sets, normalised by the training set's per-channel statistics.

    The server calls this too: FedAgg must normalise bridge samples as the devices do.
    """
    x_train, y_train = make_images(num_train, seed)
    x_test, y_test = make_images(num_test, seed + 1)
    pixels = x_train.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
    return Images(x_train, y_train, mean, std), Images(x_test, y_test, mean, std)


def datasets(context: Context) -> tuple[Images, Images]:
    """The train and test sets that this run's config describes."""
    config = context.run_config
    return load_data(int(config["num-train"]), int(config["num-test"]),
                     int(config["seed"]))


def shard(data: Images, context: Context) -> Images:
    """This node's share of ``data``: every ``num-partitions``-th image from its partition id."""
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    return Images(data.x[pid::num], data.y[pid::num], data.mean, data.std)


def evaluate(model: nn.Module, data: Images, batch_size: int = 250) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, 3, 1, 1)
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = (data.x[start:start + batch_size].float() / 255 - mean) / std
            y = data.y[start:start + batch_size]
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return loss / len(data), correct / len(data)
