"""What orchestration costs a round, at 10, 100 and 1,000 devices: HierFAVG and FedAgg on
synthetic data, against the compute alone.

The work: the ``smoke`` profile (synthetic 32x32 images; HierFAVG with ``cnn3`` on every tier,
FedAgg with ``cnn3`` devices and width-0.25 ResNet-10/18 edges and cloud), the same
``--examples`` training images at every device count split IID over the devices, 2 edges,
``--rounds`` rounds, the cloud evaluated on 200 test images each round, edges and devices not
evaluated. Each (method, devices) runs in fresh processes:

``ray``
    ``flower-eec run`` as a user runs it (Flower's Simulation Engine, Ray, one actor per CPU),
    its whole process tree's memory sampled from /proc every 0.5 s (Ray's workers included).
``local``
    the same config on the in-process grid (``LocalGrid``: one process, no Ray, messages handed
    over as objects).
``plain`` (HierFAVG only)
    a plain PyTorch loop doing the same training and averaging in one process (no Flower, no
    messages; ``benchmarks/foundation.py``'s loop).

Per round, from round 2 on (round 1 carries the start-up: imports, data, discovery), results.json
says the round's wall time, the server's own compute (``server_s``: aggregation, distillation,
evaluation) and the devices' handler time (``device_compute_s``: the sum over the round's
messages of each ClientApp's time from receiving to replying: model set-up, decoding, training).
Orchestration is what is left: wall - server - device handler time / parallel actors.

``--other TREE`` runs ``ray`` and ``local`` also with the flower_eec of another tree (e.g. a
``git worktree`` of the commit before a change), each right after this tree's, side by side.

    python benchmarks/orchestration.py --other /path/to/old/tree \
        > benchmarks/results/orchestration.txt
    python benchmarks/orchestration.py --devices 10 100 --methods hierfavg   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # foundation.py's plain loop


def overrides(method: str, devices: int, rounds: int, examples: int) -> list[str]:
    return ["profile=smoke", f"topology.num_devices={devices}", "topology.num_edges=2",
            f"data.synthetic_train={examples}", "data.synthetic_test=200", "data.min_size=1",
            f"train.rounds={rounds}", "eval.edges=false", "eval.devices=false"]


def later_rounds(rounds: list[dict[str, Any]], actors: int) -> dict[str, float]:
    """Means over rounds 2+ of the wall, server and device times, and what is left."""
    later = rounds[1:] or rounds
    wall = statistics.mean(r["wall_s"] for r in later)
    server = statistics.mean(r["timing"]["server_s"] for r in later)
    device = statistics.mean(r["timing"]["device_compute_s"] for r in later)
    return {"wall_s": wall, "server_s": server, "device_s": device,
            "orchestration_s": wall - server - device / actors}


def tree_env(tree: Path) -> dict[str, str]:
    """The environment of a child that imports flower_eec from ``tree``."""
    return {**os.environ, "PYTHONPATH": str(tree), "FLWR_TELEMETRY_ENABLED": "0"}


def run_ray(method: str, devices: int, args: argparse.Namespace, tree: Path) -> dict[str, Any]:
    """``flower-eec run`` in its own session, with the peak memory of its process tree."""
    from flower_eec.run.suite.runner import run_sampled

    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "flower_eec.run.cli", "run", method,
                *overrides(method, devices, args.rounds, args.examples), "--out", out,
                "--overwrite", "--quiet"]
        log = Path(out) / "run.log"
        outcome = run_sampled(f"{method} at {devices} devices", argv, log, tree_env(tree), tree)
        if outcome.returncode:
            raise SystemExit(f"{method} at {devices} devices failed:\n"
                             f"{log.read_text()[-3000:]}")
        summary = json.loads((Path(out) / "results.json").read_text())
    actors = max(1, (os.cpu_count() or 1) // int(summary["config"]["simulation"]["client_cpus"]))
    return {"total_s": outcome.wall_s, "peak_rss_mib": outcome.peak_rss_bytes / 2**20,
            "peak_pss_mib": outcome.peak_pss_bytes / 2**20, "actors": actors,
            "accuracy": summary["rounds"][-1]["cloud"]["accuracy"],
            **later_rounds(summary["rounds"], actors)}


def run_local(method: str, devices: int, rounds: int, examples: int) -> dict[str, Any]:
    """The config on ``LocalGrid`` in this process."""
    import torch

    from flower_eec.app.client_app import app
    from flower_eec.grid.local import LocalGrid
    from flower_eec.run import experiment
    from flower_eec.run.config import parse_overrides, resolve, to_json

    torch.set_num_threads(1)  # as each of the devices' actors computes
    with tempfile.TemporaryDirectory() as out:
        config = resolve(method, {**parse_overrides(overrides(method, devices, rounds,
                                                              examples)), "out": out})
        grid = LocalGrid(app, devices, {"config-json": to_json(config)})
        summary = experiment.run(grid, config)
    return {"accuracy": summary["rounds"][-1]["cloud"]["accuracy"],
            **later_rounds(summary["rounds"], 1)}


def run_plain(devices: int, rounds: int, examples: int) -> dict[str, Any]:
    """HierFAVG's training and averaging as a plain loop (``foundation._child_plain``)."""
    from foundation import _child_plain

    from flower_eec.run.config import parse_overrides, resolve, to_json

    config = resolve("hierfavg", parse_overrides(overrides("hierfavg", devices, rounds,
                                                            examples)))
    result = _child_plain(to_json(config), threads=1)
    later = result["rounds"][1:] or result["rounds"]
    return {"wall_s": statistics.mean(r["wall_s"] for r in later),
            "accuracy": result["rounds"][-1]["cloud"]["accuracy"]}


def in_child(kind: str, method: str, devices: int, args: argparse.Namespace,
             tree: Path) -> dict[str, Any]:
    """``run_<kind>`` in a fresh interpreter (no caches or threads carried over)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", kind, method,
               str(devices), "--rounds", str(args.rounds), "--examples", str(args.examples)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tree,
                          env=tree_env(tree))
    if done.returncode:
        raise SystemExit(f"{kind} {method} {devices} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["hierfavg", "fedagg"])
    parser.add_argument("--devices", nargs="+", type=int, default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=2_000)
    parser.add_argument("--other", type=Path, help="another tree to compare with")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, method, devices = args.one[0], args.one[1], int(args.one[2])
        result = (run_plain(devices, args.rounds, args.examples) if kind == "plain" else
                  run_local(method, devices, args.rounds, args.examples))
        print(json.dumps(result))
        return
    print(f"smoke profile, {args.examples} synthetic training images over the devices, 2 edges, "
          f"{args.rounds} rounds; cpus {os.cpu_count()}; seconds per round are means over "
          "rounds 2+; orchestration = wall - server - device handler time / actors")
    trees = {"this": HERE.parent, **({"other": args.other.resolve()} if args.other else {})}
    print("trees: " + ", ".join(f"{name} = {tree}" for name, tree in trees.items()))
    print("| method | devices | tree | engine | wall s | server s | device handler s | "
          "orchestration s | orchestration ms per device | peak memory MiB (RSS / PSS) | "
          "final acc % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method in args.methods:
        for devices in args.devices:
            rows = {}
            for engine in ("ray", "local"):
                for name, tree in trees.items():
                    rows[name, engine] = (run_ray(method, devices, args, tree) if engine == "ray"
                                          else in_child("local", method, devices, args, tree))
            if method == "hierfavg":
                rows["this", "plain"] = in_child("plain", method, devices, args, HERE.parent)
            for (name, engine), row in rows.items():
                orchestration = row.get("orchestration_s")
                memory = (f"{row['peak_rss_mib']:,.0f} / {row['peak_pss_mib']:,.0f}"
                          if "peak_rss_mib" in row else "-")
                print(f"| {method} | {devices} | {name} | {engine} | {row['wall_s']:.2f} | "
                      + (f"{row['server_s']:.2f} | {row['device_s']:.2f} | "
                         f"{orchestration:.2f} | {1000 * orchestration / devices:.2f} | "
                         if orchestration is not None else "- | - | - | - | ")
                      + f"{memory} | {100 * row['accuracy']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
