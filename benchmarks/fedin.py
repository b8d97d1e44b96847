"""FedIN benchmark: FedIN vs. HeteroAvg vs. FedAvg on the smallest / largest depth everywhere.

FedIN (Chan et al., arXiv 2304.00759) as reconstructed in docs/methods.md (section FedIN and
HeteroAvg). Per dataset (CIFAR-10, MNIST) on the ``cpu`` profile, four runs with the same data,
devices and budget:

``fedin``          examples/fedin.yaml: depths ResNet-10/14/18/22/26 split evenly, IN training + QP
``heteroavg``      examples/heteroavg.yaml: the same without feature exchange (the ablation)
``fedavg-small``   Flower's FedAvg, FedIN's ResNet-10 (= the zoo's) on every device
``fedavg-large``   HeteroAvg with one depth, ResNet-26 on every device (layer-wise averaging over
                   identical models is FedAvg; tests/test_fedin_run.py checks that on ResNet-10)

Reported per run and round: accuracy of the global model and of each depth group's sub-model on
the global test set, bytes per round (weights and feature batches), wall time per round. Writes
``benchmarks/results/fedin_<dataset>.md`` / ``.json`` / ``_accuracy.png``.

Run (from the repository root)::

    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedin.py                     # both datasets, Ray
    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedin.py --quick             # smoke check, seconds

Every run happens in its own Python process (``flower-eec run`` on Flower's Simulation Engine, or
the in-process ``LocalGrid`` with ``--engine local``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foundation import default_data_root  # noqa: E402  (benchmarks/foundation.py)

DEPTHS = ("resnet10", "resnet14", "resnet18", "resnet22", "resnet26")
RUNS: dict[str, tuple[str, list[str]]] = {
    "fedin": ("examples/fedin.yaml", []),
    "heteroavg": ("examples/heteroavg.yaml", []),
    "fedavg-small": ("examples/fedavg.yaml", [
        "model.device=resnet10", "model.edge=resnet10", "model.cloud=resnet10"]),
    "fedavg-large": ("examples/heteroavg.yaml", ["fedin.depths=[resnet26]"]),
}


def overrides(run: str, dataset: str, profile: str, data_root: str, rounds: int | None
              ) -> list[str]:
    """The run's ``key=value`` overrides; FedAvg takes FedIN's stem and width."""
    items = [f"profile={profile}", f"data.dataset={dataset}", *RUNS[run][1]]
    if dataset != "synthetic":
        items.append(f"data.root={data_root}")
    if run == "fedavg-small":
        items += ["model.stem=imagenet", f"model.width={0.125 if profile == 'smoke' else 0.25}"]
    if rounds:
        items.append(f"train.rounds={rounds}")
    return items


def run_one(run: str, items: list[str], out: Path, engine: str, timeout: float) -> dict[str, Any]:
    """One run in a fresh process; its results.json."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    if engine == "simulation":
        command = [sys.executable, "-m", "flower_eec.run.cli", "run", RUNS[run][0], *items,
                   "--out", str(out)]
    else:
        command = [sys.executable, __file__, "_local", RUNS[run][0], str(out), *items]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0 or not (out / "results.json").exists():
        raise RuntimeError(f"{run} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def _local(argv: Sequence[str]) -> None:
    """Child: run a config on the in-process LocalGrid."""
    sys.path.insert(0, str(ROOT))
    from flower_eec.app.client_app import app
    from flower_eec.grid.local import LocalGrid
    from flower_eec.run import experiment
    from flower_eec.run.config import parse_overrides, resolve, to_json

    file, out, *items = argv
    config = resolve(file, {**parse_overrides(list(items)), "out": out})
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    experiment.run(grid, config)


def round_bytes(record: dict[str, Any]) -> int:
    """All bytes of a round on every link (weights, feature batches, evaluation messages)."""
    return sum(record["comm_bytes"].values())


def summarise(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one run that the tables show."""
    rounds = summary["rounds"]
    last = rounds[-1]["cloud"]
    stats = [r.get("fedin", {}) for r in rounds]
    steps = sum(s.get("qp_steps", 0) for s in stats)
    depth = {d: last[f"accuracy_{d}"] for d in DEPTHS if f"accuracy_{d}" in last}
    if name == "fedavg-small":  # Flower's FedAvg reports the one model it trains
        depth = {"resnet10": last.get("accuracy")}
    return {
        "run": name,
        "final_accuracy": last.get("accuracy"),
        "best_accuracy": summary["final"]["best_cloud_accuracy"],
        "depth_accuracy": depth,
        "accuracy_per_round": [r["cloud"].get("accuracy") for r in rounds],
        "depth_accuracy_per_round": {d: [r["cloud"].get(f"accuracy_{d}") for r in rounds]
                                     for d in DEPTHS if f"accuracy_{d}" in last},
        "bytes_per_round": sum(round_bytes(r) for r in rounds) / len(rounds),
        "feature_bytes_per_round": sum(s.get("feature_bytes_up", 0)
                                       + s.get("feature_bytes_down", 0) for s in stats)
        / len(rounds),
        "wall_s_per_round": sum(r["wall_s"] for r in rounds) / len(rounds),
        "qp_steps": steps,
        "qp_loc_binds": sum(s.get("qp_loc_binds", 0) for s in stats),
        "qp_in_binds": sum(s.get("qp_in_binds", 0) for s in stats),
        "total_wall_s": summary["final"]["total_wall_s"],
    }


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals, or a dash."""
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(dataset: str, rows: list[dict[str, Any]], command: str) -> str:
    """The tables of one dataset."""
    head = ["run", "final acc %", "best acc %", *[f"{d} %" for d in DEPTHS],
            "MiB/round", "feature KiB/round", "s/round", "QP steps", "loc binds", "in binds"]
    lines = [f"## FedIN benchmark: {dataset}", "", f"`{command}`", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        depth = [pct(r["depth_accuracy"].get(d)) for d in DEPTHS]
        lines.append("| " + " | ".join([
            r["run"], pct(r["final_accuracy"]), pct(r["best_accuracy"]), *depth,
            f"{r['bytes_per_round'] / 2**20:.2f}", f"{r['feature_bytes_per_round'] / 1024:.1f}",
            f"{r['wall_s_per_round']:.1f}", str(r["qp_steps"]), str(r["qp_loc_binds"]),
            str(r["qp_in_binds"])]) + " |")
    lines += ["", "Global-model accuracy (%) per round:", "",
              "| round | " + " | ".join(r["run"] for r in rows) + " |",
              "|" + " --- |" * (len(rows) + 1)]
    for i in range(max(len(r["accuracy_per_round"]) for r in rows)):
        cells = [pct(r["accuracy_per_round"][i]) if i < len(r["accuracy_per_round"]) else "-"
                 for r in rows]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(dataset: str, rows: list[dict[str, Any]], path: Path) -> None:
    """Global-model accuracy per round of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        points = [(i + 1, 100 * a) for i, a in enumerate(r["accuracy_per_round"]) if a is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=r["run"])
    ax.set(xlabel="round", ylabel="global-model accuracy (%)", title=f"FedIN, {dataset}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write its tables."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_local"]:
        _local(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "mnist"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--data-root", default=default_data_root(),
                        help="the datasets' folder (default: $FLOWER_EEC_DATA)")
    parser.add_argument("--engine", choices=("simulation", "local"), default="simulation")
    parser.add_argument("--rounds", type=int, default=None, help="override train.rounds")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--quick", action="store_true",
                        help="smoke profile on synthetic data, in-process, results in a temp dir")
    args = parser.parse_args(argv)
    profile = "smoke" if args.quick else "cpu"
    datasets = ["synthetic"] if args.quick else args.datasets
    engine = "local" if args.quick else args.engine
    results = Path(tempfile.mkdtemp(prefix="fedin-bench-")) if args.quick else Path(
        args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/fedin.py " + " ".join(argv)
    with tempfile.TemporaryDirectory(prefix="fedin-runs-") as work:
        for dataset in datasets:
            rows, raw = [], {}
            for run in args.runs:
                items = overrides(run, dataset, profile, args.data_root, args.rounds)
                print(f"[{dataset}] {run}: {' '.join(items)}", flush=True)
                summary = run_one(run, items, Path(work) / f"{dataset}-{run}", engine,
                                  args.timeout)
                rows.append(summarise(run, summary))
                raw[run] = {"overrides": items, "summary": rows[-1],
                            "rounds": summary["rounds"], "config": summary["config"]}
                print(f"  final {pct(rows[-1]['final_accuracy'])} %, "
                      f"{rows[-1]['wall_s_per_round']:.1f} s/round", flush=True)
            text = markdown(dataset, rows, command)
            print(text)
            (results / f"fedin_{dataset}.md").write_text(text)
            (results / f"fedin_{dataset}.json").write_text(json.dumps(
                {"command": command, "engine": engine, "profile": profile, "runs": raw},
                indent=1))
            plot(dataset, rows, results / f"fedin_{dataset}_accuracy.png")
    print(f"written to {results}")


if __name__ == "__main__":
    main()
