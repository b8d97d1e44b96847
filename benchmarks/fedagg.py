"""FedAgg benchmark on the ``cpu`` profile: FedAgg against HierFAVG and FedAvg, and its ablations.

Every run uses the same data (CIFAR-10, 10% held out for the bridge, a 10% stratified subset of
the rest over 20 devices, Dirichlet alpha 1), topology (4 edges) and rounds (20), on Flower's
Simulation Engine (Ray) through ``flower-eec run``, each in a fresh process. Runs:

- ``fedagg``: defaults (cnn3 / resnet10 / resnet18, T=3, beta_leaf=1, gamma=1, parallel);
- ``fedagg-fidelity``: the official demo's behaviour (``fedagg.fidelity=true``);
- ``hierfavg``, ``fedavg``: cnn3 on every tier at the profile's lr 0.05, and ``hierfavg-lr0.005``
  at FedAgg's learning rate;
- ablations: ``fedagg-cloud-cnn3``, ``fedagg-cloud-resnet10`` (the cloud model), ``fedagg-beta1``,
  ``fedagg-fp16`` (logits and codes as float16).

Each run's folder (results.json, metrics.csv, plots) goes to ``benchmarks/results/fedagg/<run>``;
runs already there are reused unless ``--force``. The summary is printed and written to
``benchmarks/results/fedagg_cpu.md`` / ``.json``, with the accuracy curves in
``benchmarks/results/fedagg_cpu.png``.

The committed results were made before two of today's defaults: with the paper's edge-cloud
exchange and beta (``fedagg.edge_cloud=echo fedagg.beta=10`` repeats them); the seeded suites in
``benchmarks/suites/`` hold today's defaults.

Run (from the repository root)::

    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedagg.py                 # every run
    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedagg.py --only fedagg,hierfavg
    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedagg.py --report        # tables only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foundation import default_data_root  # noqa: E402  (benchmarks/foundation.py)


@dataclass(frozen=True)
class Suite:
    """Named runs of ``flower-eec run examples/<method>.yaml profile=cpu <overrides>``.

    Run ``r`` writes ``benchmarks/results/<name>/<r>``; the summary goes to
    ``benchmarks/results/<name>_cpu.md`` / ``.json`` / ``.png``. ``shared`` names runs whose
    folder is another suite's (the same config: measured once). ``panels`` splits the plot: a
    title and the runs of each panel (default: one panel, every run).
    """

    name: str
    runs: dict[str, tuple[str, list[str]]]
    title: str
    shared: dict[str, str] = field(default_factory=dict)
    panels: dict[str, list[str]] = field(default_factory=dict)

    def folder(self, run: str) -> Path:
        return RESULTS / self.shared.get(run, self.name) / run


RUNS: dict[str, tuple[str, list[str]]] = {
    "fedagg": ("fedagg", []),
    "hierfavg": ("hierfavg", []),
    "fedavg": ("fedavg", []),
    "hierfavg-lr0.005": ("hierfavg", ["train.lr=0.005"]),
    "fedagg-fidelity": ("fedagg", ["fedagg.fidelity=true"]),
    "fedagg-beta1": ("fedagg", ["fedagg.beta=1"]),
    "fedagg-cloud-cnn3": ("fedagg", ["model.cloud=cnn3"]),
    "fedagg-cloud-resnet10": ("fedagg", ["model.cloud=resnet10"]),
    "fedagg-fp16": ("fedagg", ["fedagg.fp16=true"]),
}
FEDAGG = Suite("fedagg", RUNS, "CIFAR-10, cpu profile: 20 devices, 4 edges, Dirichlet alpha 1")


def run(suite: Suite, name: str, data_root: str, rounds: int | None) -> None:
    """One run in a fresh process; its results folder replaces any earlier one."""
    method, overrides = suite.runs[name]
    out = suite.folder(name)
    extra = [f"train.rounds={rounds}"] if rounds else []
    command = [sys.executable, "-m", "flower_eec.run.cli", "run", f"examples/{method}.yaml",
               "profile=cpu", f"data.root={data_root}", *overrides, *extra, "--out", str(out)]
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)


def first_round_reaching(rounds: list[dict[str, Any]], level: float) -> int | None:
    """The first round whose cloud accuracy is at least ``level`` (None if none)."""
    return next((r["round"] for r in rounds
                 if (r["cloud"].get("accuracy") or 0.0) >= level), None)


def summarise(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One table row from a run's results.json."""
    rounds = summary["rounds"]
    later = rounds[1:] or rounds  # round 1 also carries the one-off upload of bridge codes

    def mean(values: list[float]) -> float:
        return sum(values) / max(len(values), 1)

    links = sorted({link for r in rounds for link in r["comm_bytes"]})
    wall = mean([r["wall_s"] for r in later])
    device = mean([r["timing"]["device_compute_s"] for r in later])
    server = mean([r["timing"]["server_s"] for r in later])
    exchange = mean([r["timing"]["exchange_s"] for r in later])
    return {
        "run": name, "method": summary["method"], "rounds": len(rounds),
        "final": summary["final"]["cloud_accuracy"],
        "best": summary["final"]["best_cloud_accuracy"],
        "last5": mean([r["cloud"].get("accuracy") or 0.0 for r in rounds[-5:]]),
        "round_25": first_round_reaching(rounds, 0.25),
        "round_30": first_round_reaching(rounds, 0.30),
        "curve": [r["cloud"].get("accuracy") for r in rounds],
        "bytes_round1": {k: rounds[0]["comm_bytes"].get(k, 0) for k in links},
        "bytes_per_round": {k: mean([r["comm_bytes"].get(k, 0) for r in later]) for k in links},
        "wall_s": wall, "server_s": server, "exchange_s": exchange, "device_s": device,
        "rest_s": wall - server - exchange,
        "peak_rss_mb": summary["final"].get("peak_rss_mb"),
        "config": {k: summary["config"].get(k) for k in ("model", "train", "topology", "fedagg",
                                                           "fedeec")},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _kb(value: float) -> str:
    return f"{value / 1e3:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown tables of the summary."""
    lines = ["| run | cloud model | rounds | final % | best % | last 5 mean % | round to 25% | "
             "round to 30% | s/round | server s | exchange s | device compute s | rest s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['config']['model']['cloud']} | {r['rounds']} | "
            f"{_pct(r['final'])} | {_pct(r['best'])} | {_pct(r['last5'])} | "
            f"{r['round_25'] or '-'} | {r['round_30'] or '-'} | {r['wall_s']:.1f} | "
            f"{r['server_s']:.1f} | {r['exchange_s']:.1f} | {r['device_s']:.1f} | "
            f"{r['rest_s']:.1f} |")
    lines += ["", "Seconds per round from round 2 on: server = edge and cloud compute (teacher "
              "logits, distillation, central evaluation); exchange = inside `send_and_receive` "
              "(devices train there, two Ray actors at a time); device compute = the devices' own "
              "seconds, summed; rest = everything else (Flower, records, results)."]
    links = sorted({k for r in rows for k in r["bytes_per_round"]
                    if any(x["bytes_per_round"].get(k) for x in rows)})
    lines += ["", "kB per round from round 2 on (round 1 in brackets: it carries the one-off "
              "upload of bridge codes):", "",
              "| run | " + " | ".join(links) + " |", "| --- |" + " --- |" * len(links)]
    for r in rows:
        cells = [f"{_kb(r['bytes_per_round'].get(k, 0))} ({_kb(r['bytes_round1'].get(k, 0))})"
                 for k in links]
        lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str,
         panels: dict[str, list[str]] | None = None) -> None:
    """Cloud accuracy per round of every run, in one panel or in ``panels`` (title -> runs)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = panels or {title: [r["run"] for r in rows]}
    by_name = {r["run"]: r for r in rows}
    columns = min(len(panels), 2)
    lines = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(8 * columns, 5 * lines), squeeze=False,
                             sharey=True)
    for ax, (panel, names) in zip(axes.flat, panels.items(), strict=False):
        for r in (by_name[n] for n in names if n in by_name):
            curve = [(i + 1, a) for i, a in enumerate(r["curve"]) if a is not None]
            ax.plot([c[0] for c in curve], [100 * c[1] for c in curve], marker=".",
                    label=r["run"])
        ax.set_xlabel("round")
        ax.set_ylabel("cloud test accuracy (%)")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if len(panels) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(suite: Suite) -> list[dict[str, Any]]:
    """Summarise every finished run, print and write the tables and the plot."""
    rows = []
    for name in suite.runs:
        path = suite.folder(name) / "results.json"
        if path.is_file():
            rows.append(summarise(name, json.loads(path.read_text())))
    text = table(rows)
    print(text)
    (RESULTS / f"{suite.name}_cpu.md").write_text(text + "\n")
    (RESULTS / f"{suite.name}_cpu.json").write_text(json.dumps(rows, indent=1) + "\n")
    if rows:
        plot(rows, RESULTS / f"{suite.name}_cpu.png", suite.title, suite.panels)
    return rows


def main(suite: Suite = FEDAGG, description: str = __doc__) -> None:
    """Run what is asked (or everything missing), then report."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated run names")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--report", action="store_true", help="only summarise finished runs")
    parser.add_argument("--rounds", type=int, default=None, help="override train.rounds")
    parser.add_argument("--data-root", default=default_data_root(),
                        help="the datasets' folder (default: $FLOWER_EEC_DATA)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(suite.runs)
    unknown = sorted(set(names) - set(suite.runs))
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {list(suite.runs)}")
    if not args.report:
        for name in names:
            if args.force or not (suite.folder(name) / "results.json").is_file():
                run(suite, name, args.data_root, args.rounds)
    report(suite)


if __name__ == "__main__":
    main()
