"""Per-round records of a run, written as results.json, metrics.csv and plots (ARCHITECTURE.md)."""

from __future__ import annotations

import csv
import json
import resource
import time
from importlib.metadata import version
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from flower_eec.run.config import Config, to_dict

LINKS = ("device_to_edge", "edge_to_device", "edge_to_cloud", "cloud_to_edge",
         "device_to_cloud", "cloud_to_device")


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    return {name: version(dist) for name, dist in
            (("flower_eec", "flower-eec"), ("flwr", "flwr"), ("torch", "torch"))}


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / 1024, 1)


class Recorder:
    """Collects one record per round, logs progress and keeps the results folder up to date."""

    def __init__(self, config: Config, out: str | Path | None = None) -> None:
        self.config = config
        self.out = Path(out) if out else None
        self.rounds: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.last = self.started
        self.notes: dict[str, Any] = {}

    def note(self, name: str, value: Any) -> None:
        """Add a top-level section to results.json (e.g. a method's offline-stage report)."""
        self.notes[name] = value

    def add_round(self, record: dict[str, Any]) -> None:
        """Append a round (see ARCHITECTURE.md for its fields), log it, rewrite results.json."""
        now = time.perf_counter()
        record = {"round": record["round"], "wall_s": round(now - self.last, 3), **record}
        unknown = set(record.get("comm_bytes", {})) - set(LINKS)
        if unknown:
            raise ValueError(f"unknown links {sorted(unknown)}; links are {LINKS}")
        record["comm_bytes"] = {link: int(record.get("comm_bytes", {}).get(link, 0))
                                for link in LINKS}
        self.last = now
        self.rounds.append(record)
        cloud = record.get("cloud", {}).get("accuracy")
        edges = [e["accuracy"] for e in record.get("edges", []) if "accuracy" in e]
        local = record.get("devices", {}).get("mean_local_accuracy")
        log(INFO, "round %d/%d  cloud acc %s  edge acc %s  device local acc %s  %.1fs",
            record["round"], self.config.train.rounds, _pct(cloud),
            _pct(sum(edges) / len(edges)) if edges else "-", _pct(local), record["wall_s"])
        if self.out:
            self._write_json()

    def summary(self) -> dict[str, Any]:
        """The whole run as the results.json document."""
        accuracies = [r["cloud"]["accuracy"] for r in self.rounds
                      if "accuracy" in r.get("cloud", {})]
        return {
            "method": self.config.method,
            "config": to_dict(self.config),
            "versions": versions(),
            "rounds": self.rounds,
            "final": {
                "cloud_accuracy": accuracies[-1] if accuracies else None,
                "best_cloud_accuracy": max(accuracies) if accuracies else None,
                "total_wall_s": round(time.perf_counter() - self.started, 3),
                "peak_rss_mb": peak_rss_mb(),
            },
            **self.notes,
        }

    def finish(self) -> dict[str, Any]:
        """Write every file of the results folder; return the summary."""
        summary = self.summary()
        if self.out:
            self._write_json(summary)
            write_metrics_csv(self.rounds, self.out / "metrics.csv")
            plot_accuracy(self.rounds, self.out / "accuracy.png", title=self.config.method)
            plot_comm(self.rounds, self.out / "comm.png", title=self.config.method)
            log(INFO, "Results written to %s", self.out.resolve())
        return summary

    def _write_json(self, summary: dict[str, Any] | None = None) -> None:
        assert self.out is not None
        self.out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(summary or self.summary(), indent=1)
        (self.out / "results.json").write_text(text)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def write_metrics_csv(rounds: list[dict[str, Any]], path: Path) -> None:
    """One row per round and tier: cloud, each edge, the devices."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["round", "tier", "index", "accuracy", "loss", "wall_s", *LINKS])
        for r in rounds:
            comm = [r["comm_bytes"][link] for link in LINKS]
            cloud = r.get("cloud", {})
            writer.writerow([r["round"], "cloud", "", cloud.get("accuracy", ""),
                             cloud.get("loss", ""), r["wall_s"], *comm])
            for edge in r.get("edges", []):
                writer.writerow([r["round"], "edge", edge["edge"], edge.get("accuracy", ""),
                                 edge.get("loss", ""), "", *[""] * len(LINKS)])
            devices = r.get("devices", {})
            writer.writerow([r["round"], "devices", "", devices.get("mean_local_accuracy", ""),
                             devices.get("mean_local_loss", ""), "", *[""] * len(LINKS)])


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rounds: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Cloud, mean edge and mean device-local accuracy per round."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    series = {
        "cloud (global test)": [(r["round"], r.get("cloud", {}).get("accuracy")) for r in rounds],
        "edges, mean (global test)": [
            (r["round"], _mean([e.get("accuracy") for e in r.get("edges", [])])) for r in rounds],
        "devices, mean (local test)": [
            (r["round"], r.get("devices", {}).get("mean_local_accuracy")) for r in rounds],
    }
    for label, points in series.items():
        points = [(x, 100 * y) for x, y in points if y is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=label)
    ax.set(xlabel="round", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comm(rounds: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Bytes per round on each link that carried any."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for link in LINKS:
        values = [r["comm_bytes"][link] / 2**20 for r in rounds]
        if any(values):
            ax.plot([r["round"] for r in rounds], values, marker=".", label=link)
    ax.set(xlabel="round", ylabel="MiB per round", title=title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
