"""Train FedAgg's bridge autoencoder (Wu et al., INFOCOM 2024, arXiv 2312.11489) on held-out data.

With its defaults it reproduces flower_eec/models/weights/bridge_cifar10.json from CIFAR-10's
held-out public slice. ``--dataset`` trains one for another dataset the project reads (read from
``--data-root`` by the loader the runs use, as ``data.root``), e.g. for 1-channel Fashion-MNIST,
which the shipped 3-channel bridge cannot encode; run with ``fedagg.bridge_weights`` set to the
file it writes.

The slice is ``holdout_split(train labels, fraction)`` with the fixed ``HOLDOUT_SEED``: no run that
reserves at least that fraction (``data.holdout``) gives a device an image the bridge saw. It is
stratified by label, so for CIFAR-100 it depends on ``--cifar100-labels`` (the run's
``data.cifar100_labels``). Validation uses a part of the same slice; the test set and the private
training data are never read.

    python scripts/train_bridge.py --data-root $DATA
    python scripts/train_bridge.py --dataset fashion_mnist --data-root $DATA --out bridge_fm.json

``--data-root`` defaults to ``$FLOWER_EEC_DATA``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from flower_eec.data import DATA_ENV, DATASETS, load_dataset
from flower_eec.data.partition import HOLDOUT_SEED, holdout_split
from flower_eec.models import count_parameters
from flower_eec.models.bridge import DEFAULT_WEIGHTS, BridgeAutoencoder
from flower_eec.models.weights_io import save_state_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Every dataset read from files (synthetic data is made per run from its seed: nothing to hold out).
BRIDGE_DATASETS = tuple(name for name in DATASETS if name != "synthetic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default is the one the shipped weights were made with."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10", choices=BRIDGE_DATASETS,
                        help="the dataset whose held-out slice trains the bridge (default cifar10)")
    parser.add_argument("--cifar100-labels", default="coarse", choices=("coarse", "fine"),
                        help="CIFAR-100 only: the labels the held-out slice is stratified by, "
                        "the run's data.cifar100_labels (default coarse)")
    parser.add_argument("--data-root", default="", help=f"the dataset's folder or a parent, as "
                        f"data.root (default: ${DATA_ENV})")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="check the files' md5s or image counts, as data.verify (default on)")
    parser.add_argument("--fraction", type=float, default=0.1,
                        help="held-out public share of the training set (default 0.1)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the held-out slice kept for validation (default 0.1)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="init, batch order, val split")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None,
                        help="weights JSON to write (default: the shipped "
                        "flower_eec/models/weights/bridge_cifar10.json for cifar10, else "
                        "bridge_<dataset>.json in the current folder)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = DEFAULT_WEIGHTS if args.dataset == "cifar10" else Path(
            f"bridge_{dataset_tag(args)}.json")
    return args


def dataset_tag(args: argparse.Namespace) -> str:
    """The dataset, with CIFAR-100's label choice: ``cifar100_fine``."""
    return f"cifar100_{args.cifar100_labels}" if args.dataset == "cifar100" else args.dataset


def provenance(args: argparse.Namespace) -> str:
    """``meta["dataset"]``: the dataset's name up to the first space (what a run compares with
    ``data.dataset``, with ``holdout_fraction`` and ``cifar100_labels``), then a note."""
    if args.dataset == "cifar10":
        return "cifar10 (official binary release), training split"
    if args.dataset == "cifar100":
        return f"cifar100 ({args.cifar100_labels} labels), training split"
    return f"{args.dataset} (official files), training split"


def data_root(given: str) -> Path:
    """--data-root, else $FLOWER_EEC_DATA; with neither, ../shared/data beside the clone (a
    convenience for the developers' layout)."""
    if given:
        return Path(given)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return PROJECT_ROOT.parent / "shared" / "data"


def unit_images(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 images (N, C, H, W) as float32 in [0, 1], the bridge's input space."""
    return torch.from_numpy(x_uint8).float().div_(255.0)


def mean_mse(bridge: BridgeAutoencoder, images: torch.Tensor, batch_size: int = 500) -> float:
    """Per-pixel reconstruction MSE over `images` in [0, 1], in eval mode."""
    bridge.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            total += F.mse_loss(bridge(batch), batch, reduction="sum").item()
    return total / images.numel()


def main(argv: list[str] | None = None) -> int:
    """Train, report train/val MSE per epoch, write the weights JSON with provenance."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    root = data_root(args.data_root)
    options = {"labels": args.cifar100_labels} if args.dataset == "cifar100" else {}
    dataset = load_dataset(args.dataset, root, verify=args.verify, **options)
    public, _ = holdout_split(dataset.y_train, args.fraction)
    order = np.random.default_rng(args.seed).permutation(public)
    num_val = int(round(args.val_fraction * len(order)))
    val_idx, train_idx = np.sort(order[:num_val]), np.sort(order[num_val:])
    train_x, val_x = unit_images(dataset.x_train[train_idx]), unit_images(dataset.x_train[val_idx])

    bridge = BridgeAutoencoder(in_channels=dataset.in_channels)
    optimiser = torch.optim.Adam(bridge.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"bridge: {count_parameters(bridge)} parameters; held-out slice {len(public)} images "
          f"(fraction {args.fraction}, seed {HOLDOUT_SEED}): {len(train_idx)} train, "
          f"{len(val_idx)} val", flush=True)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        bridge.train()
        for batch_idx in torch.randperm(len(train_x), generator=generator).split(args.batch_size):
            batch = train_x[batch_idx]
            loss = F.mse_loss(bridge(batch), batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
        train_mse, val_mse = mean_mse(bridge, train_x), mean_mse(bridge, val_x)
        print(f"epoch {epoch:3d}  train MSE {train_mse:.5f}  val MSE {val_mse:.5f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start

    meta = {
        "model": "BridgeAutoencoder",
        "in_channels": dataset.in_channels,
        "input": "float images in [0, 1] (uint8 / 255), not mean/std-normalised",
        "parameters": count_parameters(bridge),
        "dataset": provenance(args),
        **({"cifar100_labels": args.cifar100_labels} if args.dataset == "cifar100" else {}),
        "image_shape": list(dataset.x_train.shape[1:]),
        "holdout_fraction": args.fraction,
        "holdout_seed": HOLDOUT_SEED,
        "num_train": len(train_idx),
        "num_val": len(val_idx),
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimiser": f"Adam lr {args.lr}, cosine annealing to 0 over {args.epochs} epochs",
        "loss": "per-pixel MSE",
        "final_train_mse": round(train_mse, 6),
        "final_val_mse": round(val_mse, 6),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "command": shlex.join(["python", "scripts/train_bridge.py", *(argv or sys.argv[1:])]),
    }
    path = save_state_json(args.out, bridge.state_dict(), meta)
    print(f"wrote {path} ({path.stat().st_size} bytes) in {seconds:.0f} s of training")
    if path.resolve() != DEFAULT_WEIGHTS.resolve():
        labels = (f" data.cifar100_labels={args.cifar100_labels}"
                  if args.dataset == "cifar100" else "")
        print(f"run with: data.dataset={args.dataset}{labels} "
              f"fedagg.bridge_weights={path.resolve()} data.holdout={args.fraction:g} (or more)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
