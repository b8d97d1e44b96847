"""A FedAgg round's wall time, this tree against another (e.g. the commit before a speed-up),
side by side in one run on the same work.

The work: 8 devices under 2 edges, 1,800 CIFAR-10 training images (4% of the 45,000 left after
holding out 10% for the bridge), cnn3 / resnet10 / resnet18 with the ImageNet stem, batch 8,
lr 1e-3, the paper's beta 10, Cutout 16, the cloud evaluated on the 10,000 test images every
round, edges not evaluated, devices evaluating their kept models. Each tree runs it in a fresh
process on the in-process grid (no Ray) for ``--rounds`` rounds; round 1 carries the one-off
upload of codes, so round 2 on is what a round costs.
The trees take turns, ``--repeats`` times each.

    python benchmarks/fedagg_speed.py --data-root $DATA --other /path/to/old/tree \
        > benchmarks/results/fedagg_speed.txt

``--threads N`` fixes torch's thread count of the whole process (server and devices) for both
trees; without it each tree keeps its own defaults (our devices compute with
``simulation.torch_threads`` = 1 either way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
WORK = {"profile": "cpu", "data.dataset": "cifar10", "data.holdout": 0.1, "data.subset": 0.04,
        "topology.num_devices": 8, "topology.num_edges": 2, "train.batch_size": 8,
        "train.lr": 0.001, "data.cutout": 16, "model.stem": "imagenet", "eval.edges": False,
        "fedagg.beta": 10.0}  # the paper's (the default before 1): the same math in every tree


def one_run(data_root: str, rounds: int, threads: int) -> dict[str, object]:
    """Run the work in this process (whichever flower_eec is importable) and time its rounds."""
    import torch

    from flower_eec.app.client_app import app
    from flower_eec.grid.local import LocalGrid
    from flower_eec.run import experiment
    from flower_eec.run.config import parse_overrides, resolve, to_json

    if threads:
        torch.set_num_threads(threads)
    overrides = [f"{k}={v}" for k, v in WORK.items()] + [f"data.root={data_root}",
                                                         f"train.rounds={rounds}"]
    with tempfile.TemporaryDirectory() as out:
        config = resolve("fedagg", {**parse_overrides(overrides), "out": out})
        grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
        started = time.perf_counter()
        summary = experiment.run(grid, config)
        total = time.perf_counter() - started
    rounds_ = summary["rounds"]
    return {"round_s": [r["wall_s"] for r in rounds_], "total_s": total,
            "server_s": [r["timing"]["server_s"] for r in rounds_],
            "exchange_s": [r["timing"]["exchange_s"] for r in rounds_],
            "cloud_accuracy": [r["cloud"]["accuracy"] for r in rounds_],
            "threads_after": torch.get_num_threads()}


def in_tree(tree: Path, args: argparse.Namespace) -> dict[str, object]:
    """``one_run`` in a fresh process that imports flower_eec from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "FLWR_TELEMETRY_ENABLED": "0"}
    command = [sys.executable, str(Path(__file__).resolve()), "--data-root", args.data_root,
               "--rounds", str(args.rounds), "--threads", str(args.threads), "--one"]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("FLOWER_EEC_DATA", ""))
    parser.add_argument("--other", type=Path, help="the tree to compare with (a git worktree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="0: each tree's defaults")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data_root:
        raise SystemExit("give --data-root (the folder holding cifar10/) or set FLOWER_EEC_DATA")
    if args.one:
        print(json.dumps(one_run(args.data_root, args.rounds, args.threads)))
        return
    trees = {"this tree": HERE, **({"other tree": args.other.resolve()} if args.other else {})}
    print(f"work: {json.dumps(WORK)}; rounds {args.rounds}; threads "
          f"{args.threads or 'defaults'}; cpus {os.cpu_count()}")
    seen: dict[str, list[dict[str, object]]] = {name: [] for name in trees}
    for repeat in range(args.repeats):
        for name, tree in trees.items():
            result = in_tree(tree, args)
            seen[name].append(result)
            print(f"repeat {repeat + 1}, {name} ({tree}): " + json.dumps(result), flush=True)
    later = {name: [s for r in runs for s in r["round_s"][1:]]  # type: ignore[index]
             for name, runs in seen.items()}
    for name, values in later.items():
        print(f"{name}: rounds 2+ median {statistics.median(values):.1f} s "
              f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})")
    if args.other:
        ratio = statistics.median(later["other tree"]) / statistics.median(later["this tree"])
        print(f"speed-up (median round 2+, other / this): {ratio:.2f}x")


if __name__ == "__main__":
    main()
