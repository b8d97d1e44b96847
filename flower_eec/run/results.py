"""Per-round records of a run, written as results.json, metrics.csv and plots."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import version
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.common.logger import log

from flower_eec.errors import ConfigError
from flower_eec.run.config import Config, to_dict

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not with this module
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LINKS = ("device_to_edge", "edge_to_device", "edge_to_cloud", "cloud_to_edge",
         "device_to_cloud", "cloud_to_device")


@cache
def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    return {name: version(dist) for name, dist in
            (("flower_eec", "flower-eec"), ("flwr", "flwr"), ("torch", "torch"))}


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / 1024, 1)


RESULT_FILES = ("results.json", "metrics.csv", "accuracy.png", "comm.png", "checkpoint.pt")
RESULT_DIRS = ("models", "devices")  # final models; the devices' checkpoints in simulation
LOCK = ".lock"
PLOT_EVERY_S = 10.0  # plots are redrawn at most this often while a run goes on, and at its end


class Recorder:
    """Collects one record per round, logs progress and keeps the results folder up to date.

    The folder always says what it holds: ``results.json`` carries ``status`` (``running``,
    ``finished``, or ``failed`` with the ``reason``) and ``completed_rounds``; it and
    ``metrics.csv`` are rewritten (atomically: write, then rename) after every round, the plots
    too (at most every ``PLOT_EVERY_S`` seconds, and at the end). A folder that holds an earlier
    run is refused unless ``overwrite``, and a lock file keeps a second run out while this one
    lives (a lock whose process is gone is taken over). ``resume`` goes on in a folder that
    holds a run, keeping its files.

    Raises:
        ConfigError: ``out`` holds a run (and not ``overwrite``), or a live run writes there.
    """

    def __init__(self, config: Config, out: str | Path | None = None,
                 overwrite: bool = False, resume: bool = False) -> None:
        self.config = config
        self.out = Path(out) if out else None
        self.rounds: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.last = self.started
        self.plotted = self.started  # the first plots come after PLOT_EVERY_S, or at the end
        self.notes: dict[str, Any] = {}
        self.status: dict[str, Any] = {"status": "running"}
        self.config_dict = to_dict(config)  # written with every round: converted once
        if self.out:
            claim(self.out, overwrite or resume, keep=resume)

    def restore(self, rounds: list[dict[str, Any]], notes: dict[str, Any]) -> None:
        """Go on from a checkpoint's records (a resumed run)."""
        self.rounds, self.notes = list(rounds), dict(notes)

    def note(self, name: str, value: Any) -> None:
        """Add a top-level section to results.json (e.g. a method's offline-stage report)."""
        self.notes[name] = value

    def add_round(self, record: dict[str, Any]) -> None:
        """Append a round (see the README's Results section for its fields), log it, rewrite
        the results folder."""
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
        self._write(plots=now - self.plotted >= PLOT_EVERY_S)

    def summary(self) -> dict[str, Any]:
        """The whole run as the results.json document (``final`` once it has finished)."""
        summary: dict[str, Any] = {
            "method": self.config.method,
            **self.status,
            "completed_rounds": len(self.rounds),
            "planned_rounds": self.config.train.rounds,
            "config": self.config_dict,
            "versions": dict(versions()),
            "rounds": self.rounds,
        }
        if self.status["status"] == "finished":
            accuracies = [r["cloud"]["accuracy"] for r in self.rounds
                          if "accuracy" in r.get("cloud", {})]
            summary["final"] = {
                "cloud_accuracy": accuracies[-1] if accuracies else None,
                "best_cloud_accuracy": max(accuracies) if accuracies else None,
                "total_wall_s": round(time.perf_counter() - self.started, 3),
                "peak_rss_mb": peak_rss_mb(),
            }
        return {**summary, **self.notes}

    def finish(self) -> dict[str, Any]:
        """Mark the run finished, write every file of the results folder, free the folder;
        return the summary."""
        self.status = {"status": "finished"}
        return self._close()

    def fail(self, reason: str) -> dict[str, Any]:
        """Mark the run failed with ``reason``, write what it has, free the folder. A run that
        failed before its first round leaves nothing behind (there is nothing to keep)."""
        self.status = {"status": "failed", "reason": reason}
        if self.out and not self.rounds:
            for name in (*RESULT_FILES, LOCK):
                (self.out / name).unlink(missing_ok=True)
            if not any(self.out.iterdir()):
                self.out.rmdir()
            return self.summary()
        return self._close()

    def _close(self) -> dict[str, Any]:
        summary = self._write(plots=True)
        if self.out:
            (self.out / LOCK).unlink(missing_ok=True)
            log(INFO, "Results written to %s", self.out.resolve())
        return summary

    def _write(self, plots: bool) -> dict[str, Any]:
        summary = self.summary()
        if not self.out:
            return summary
        atomic_write(self.out / "results.json", json.dumps(summary, indent=1).encode())
        with atomic_path(self.out / "metrics.csv") as path:
            write_metrics_csv(self.rounds, path)
        if plots and self.rounds:
            title = run_title(self.config)
            with atomic_path(self.out / "accuracy.png") as path:
                plot_accuracy(self.rounds, path, title=title)
            with atomic_path(self.out / "comm.png") as path:
                plot_comm(self.rounds, path, title=title)
            self.plotted = time.perf_counter()
        return summary


def claim(out: Path, overwrite: bool, keep: bool = False) -> None:
    """Make ``out`` this run's: refuse a folder that holds a run (unless ``overwrite``, which
    removes its result files, or ``keep``), and take its lock (refused while the lock's process
    lives)."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK
    holder = live_holder(lock)
    if holder is not None:
        raise ConfigError(f"another run ({holder}) is writing into {out}: choose another "
                          f"--out, or wait for it to end (if it is gone, delete {lock})")
    previous = [name for name in (*RESULT_FILES, *RESULT_DIRS) if (out / name).exists()]
    if previous and not overwrite:
        raise ConfigError(f"{out} already holds a run ({', '.join(previous)}): go on with it "
                          "with --resume (under flwr run: overrides='resume=true'), replace it "
                          "with --overwrite (under flwr run: overrides='overwrite=true'), or "
                          "choose another --out")
    lock.unlink(missing_ok=True)  # a lock whose process is gone
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise ConfigError(f"another run took {out} at the same moment: choose another "
                          "--out") from None
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
    for name in [] if keep else previous:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()


def live_holder(lock: Path) -> str | None:
    """Which live run holds ``lock`` (``process <pid>``), or None when none does: no lock, an
    unreadable one, this process's own, or one whose process on this host is gone."""
    try:
        holder = json.loads(lock.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return f"process {pid} on {host}"  # cannot be checked from here: trusted as live
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return f"process {pid}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, whole."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when done."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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


# Plots sized for a paper: 7 x 4 inches at 150 dpi, no text under 9 pt, legends outside the axes.
FIGSIZE = (7.0, 4.0)
DPI = 150
TITLE_PT, LABEL_PT, TICK_PT = 11, 10, 9
# Tier pairs of the comm plot, lower tier first; "up" is the link toward the cloud.
TIER_PAIRS = (("device", "edge"), ("edge", "cloud"), ("device", "cloud"))
# Up and down differ in colour, line style and marker, so a link whose bytes equal its
# partner's still shows (a hollow circle around a cross).
UP: dict[str, Any] = {"color": "C0", "linestyle": "-", "marker": "o", "markerfacecolor": "none",
                      "markersize": 7}
DOWN: dict[str, Any] = {"color": "C3", "linestyle": "--", "marker": "x", "markersize": 5}
ACCURACY_STYLES: tuple[dict[str, Any], ...] = (
    {"color": "C0", "linestyle": "-", "marker": "o"},
    {"color": "C2", "linestyle": "--", "marker": "s"},
    {"color": "C1", "linestyle": ":", "marker": "^"})


def run_title(config: Config) -> str:
    """The plots' title: which method, dataset, profile and seed made them."""
    return (f"{config.method} on {config.data.dataset}, profile {config.profile}, "
            f"seed {config.seed}")


def accuracy_figure(rounds: list[dict[str, Any]], title: str = "") -> Figure:
    """Cloud, mean edge and mean device-local accuracy per round, as a figure."""
    fig, (ax,) = _figure(1, title)
    series = {
        "cloud (global test)": [(r["round"], r.get("cloud", {}).get("accuracy")) for r in rounds],
        "edges, mean (global test)": [
            (r["round"], _mean([e.get("accuracy") for e in r.get("edges", [])])) for r in rounds],
        "devices, mean (local test)": [
            (r["round"], r.get("devices", {}).get("mean_local_accuracy")) for r in rounds],
    }
    for (label, points), style in zip(series.items(), ACCURACY_STYLES, strict=True):
        present = [(x, 100 * y) for x, y in points if y is not None]
        if present:
            xs, ys = zip(*present, strict=True)
            ax.plot(xs, ys, label=label, markevery=_markevery(len(xs)), **style)
    ax.set_ylabel("accuracy (%)", fontsize=LABEL_PT)
    if ax.lines:
        fig.legend(loc="outside lower center", ncols=len(ax.lines), fontsize=TICK_PT)
    return fig


def comm_figure(rounds: list[dict[str, Any]], title: str = "") -> Figure:
    """MiB per round on each link, one panel per pair of tiers that exchanged anything: up
    (toward the cloud) and down as distinct lines, each panel on its own scale."""
    from matplotlib.lines import Line2D

    def mib(link: str) -> list[float]:
        return [r.get("comm_bytes", {}).get(link, 0) / 2**20 for r in rounds]

    pairs = [(low, high) for low, high in TIER_PAIRS
             if any(mib(f"{low}_to_{high}")) or any(mib(f"{high}_to_{low}"))]
    fig, axes = _figure(max(1, len(pairs)), title)
    xs = [r["round"] for r in rounds]
    for ax, (low, high) in zip(axes, pairs, strict=False):
        peak = 0.0
        for link, style in ((f"{low}_to_{high}", UP), (f"{high}_to_{low}", DOWN)):
            ys = mib(link)
            ax.plot(xs, ys, label=link, markevery=_markevery(len(xs)), **style)
            peak = max(peak, *ys)
        ax.set_title(f"{low} \u2194 {high}", fontsize=LABEL_PT)
        ax.set_ylim(0, 1.1 * peak)  # volumes from an honest zero, with room above the top line
    if pairs:
        fig.supylabel("MiB per round", fontsize=LABEL_PT)
        fig.legend(handles=[Line2D([], [], label="up (toward the cloud)", **UP),
                            Line2D([], [], label="down (toward the devices)", **DOWN)],
                   loc="outside lower center", ncols=2, fontsize=TICK_PT)
    else:
        axes[0].text(0.5, 0.5, "no traffic recorded", ha="center", va="center",
                     transform=axes[0].transAxes, fontsize=LABEL_PT)
    return fig


def plot_accuracy(rounds: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Save ``accuracy_figure`` as a PNG."""
    accuracy_figure(rounds, title).savefig(path, dpi=DPI, format="png")


def plot_comm(rounds: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Save ``comm_figure`` as a PNG."""
    comm_figure(rounds, title).savefig(path, dpi=DPI, format="png")


def _figure(panels: int, title: str) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` side-by-side axes over rounds (integer ticks only). A bare
    ``Figure`` (no pyplot): nothing global to close, safe in any thread."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    axes = list(fig.subplots(1, panels, sharex=True, squeeze=False)[0])
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
        ax.set_xlabel("round", fontsize=LABEL_PT)
        ax.tick_params(labelsize=TICK_PT)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=TITLE_PT)
    return fig, axes


def _markevery(points: int) -> int:
    """Mark every point of a short series, about 25 of a long one."""
    return max(1, points // 25)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
