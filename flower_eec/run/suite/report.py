"""The suite's report: ``suite.json`` (the numbers), ``suite.md`` (the tables) and ``suite.png``
(the mean cloud-accuracy curve per entry with a band of one standard deviation)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flower_eec.run.results import atomic_path, atomic_write
from flower_eec.run.suite.decisions import RESULTS, RUN_RECORD, decide_folder, read_json
from flower_eec.run.suite.memory import SAMPLE_S
from flower_eec.run.suite.spec import PlannedRun, Suite
from flower_eec.run.suite.stats import LAST, entry_row, run_metrics, threshold_key

if TYPE_CHECKING:  # matplotlib is imported when the figure is drawn
    from matplotlib.figure import Figure

MARKERS = ("o", "x", "s", "^", "D", "v", "+", "*", "<", ">")
LINE_STYLES = ("-", "--", ":", "-.")
NO_DATA = {"mean": None, "sd": None}


def collect(suite: Suite, runs: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    """One row per entry, over its runs that are done (finished with the planned rounds and the
    suite's config); the others are listed under ``missing`` with the reason."""
    rows = []
    for entry in suite.entries:
        mine = [r for r in runs if r.entry.name == entry.name]
        metrics, missing = [], []
        for planned in mine:
            results = read_json(planned.folder / RESULTS) or {}
            decision = decide_folder(planned)
            if decision.action == "skip":
                metrics.append(run_metrics(results, read_json(planned.folder / RUN_RECORD),
                                           suite.thresholds))
            else:
                reason = results.get("reason")
                missing.append({"seed": planned.seed, "state": decision.reason,
                                **({"reason": reason} if reason else {})})
        rows.append({**entry_row(entry, metrics, len(mine), suite.thresholds),
                     "missing": missing})
    return rows


def describe(suite: Suite, runs: Sequence[PlannedRun]) -> str:
    """``profile cpu, cifar10, 20 rounds, seeds 0, 1, 2``."""
    datasets = ", ".join(dict.fromkeys(r.config["data"]["dataset"] for r in runs))
    rounds = "/".join(str(n) for n in dict.fromkeys(r.rounds for r in runs))
    return (f"profile {suite.profile}, {datasets}, {rounds} rounds, seeds "
            f"{', '.join(map(str, suite.seeds))}")


def _cell(value: Mapping[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sd`` (``mean`` for one seed, ``-`` for none)."""
    if value["mean"] is None:
        return "-"
    text = f"{scale * value['mean']:,.{digits}f}"
    return text if value["sd"] is None else f"{text} ± {scale * value['sd']:,.{digits}f}"


def _reach_cell(reach: Mapping[str, Any]) -> str:
    """The mean round to a threshold over the seeds that reach it, and how many do."""
    mean = "-" if reach["mean"] is None else f"{reach['mean']:.1f}"
    return f"{mean} ({reach['reached']}/{reach['of']})"


def _kb_cell(row: Mapping[str, Any], link: str) -> str:
    """kB per round on ``link`` from round 2 on, round 1 in brackets where it differs; ``-``
    when nothing goes over it."""
    steady = row["bytes_per_round"].get(link) or NO_DATA
    first = row["bytes_round1"].get(link) or NO_DATA
    if not steady["mean"] and not first["mean"]:
        return "-"
    if first["mean"] == steady["mean"]:
        return _cell(steady, 1e-3, 1)
    return f"{_cell(steady, 1e-3, 1)} ({_cell(first, 1e-3, 1)})"


def _drop(row: Mapping[str, Any]) -> str:
    """The largest round-to-round fall of the worst seed, in points."""
    drop = row.get("largest_drop")
    return "-" if drop is None else f"{100 * drop:.1f}"


def markdown(rows: Sequence[Mapping[str, Any]], suite: Suite, about: str) -> str:
    """The tables of the report (``about``: what ``describe`` says of the suite)."""
    levels = [threshold_key(level) for level in suite.thresholds]
    lines = [f"## Suite {suite.name}: {about}", "",
             "Cloud accuracy on the global test set; every cell is the mean ± the sample "
             "standard deviation over the seeds that finished (`seeds`: finished of planned). "
             f"Last {LAST}: the mean of the last {LAST} evaluated rounds. Round to X: the first "
             "round at X or above, averaged over the seeds that reach it (how many do, in "
             "brackets). Largest drop: the largest fall of the cloud accuracy from one round to "
             "the next, in points, in the worst seed. s/round: the median wall time of a round, "
             "the first round of every process (Ray's start-up) left out. Peak MiB: the peak "
             "of the summed resident memory of the run's whole process tree (Ray's workers "
             f"included; shared pages count once per process), sampled every {SAMPLE_S:g} s.",
             "",
             "| entry | method | seeds | final % | best % | last 5 % | "
             + " | ".join(f"round to {key}" for key in levels)
             + " | largest drop | s/round | peak MiB |",
             "| --- " * (9 + len(levels)) + "|"]
    for row in rows:
        reach = [_reach_cell(row["reach"][key]) for key in levels]
        lines.append(
            f"| {row['entry']} | {row['method']} | {len(row['seeds'])}/{row['planned_seeds']} "
            f"| {_cell(row['final'], 100)} | {_cell(row['best'], 100)} | "
            f"{_cell(row['last5'], 100)} | " + " | ".join(reach) + f" | {_drop(row)} | "
            f"{_cell(row['s_per_round'], digits=1)} | "
            f"{_cell(row['peak_rss_bytes'], 1 / 2**20, 0)} |")
    links = [link for link in dict.fromkeys(k for row in rows for k in row["bytes_per_round"])
             if any(_kb_cell(row, link) != "-" for row in rows)]
    if links:
        lines += ["", "kB per round on each link from round 2 on, mean ± sd over the seeds "
                  "(round 1 in brackets where it differs: FedAgg's and FedEEC's carries the "
                  "one-off upload of bridge codes):", "", "| entry | " + " | ".join(links) + " |",
                  "| --- " * (1 + len(links)) + "|"]
        lines += [f"| {row['entry']} | " + " | ".join(_kb_cell(row, link) for link in links)
                  + " |" for row in rows]
    local = [row for row in rows if row["local_mean"]["mean"] is not None]
    if local:
        lines += ["", "The devices' local accuracy: each device's model (for ECLM its sub-model, "
                  "after local adaptation where the run adapts) on the device's own local test "
                  "split, weighted by examples; the mean over the rounds and the last round's, "
                  "mean ± sd over the seeds. Before adapting: the model as received, where the "
                  "run adapts before testing.", "",
                  "| entry | local, mean over rounds % | local, last round % | "
                  "before adapting, mean over rounds % |", "| --- " * 4 + "|"]
        lines += [f"| {row['entry']} | {_cell(row['local_mean'], 100)} | "
                  f"{_cell(row['local_final'], 100)} | {_cell(row['local_before_mean'], 100)} |"
                  for row in local]
    missing = [f"- {row['entry']} seed {m['seed']}: {m['state']}"
               + (f" ({m['reason']})" if m.get("reason") else "")
               for row in rows for m in row["missing"]]
    if missing:
        lines += ["", "Not counted (not finished with the suite's config and rounds):", "",
                  *missing]
    return "\n".join(lines)


def figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """The mean cloud-accuracy curve of every entry with a band of ± one sd over the seeds;
    whole rounds on the x axis."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 4.8), layout="constrained")
    ax = fig.subplots()
    for index, row in enumerate(r for r in rows if r["curve"]):
        xs = [p["round"] for p in row["curve"]]
        means = [100 * p["mean"] for p in row["curve"]]
        sds = [100 * (p["sd"] or 0.0) for p in row["curve"]]
        color = f"C{index % 10}"
        # colour, line style and a hollow marker differ, so that equal curves all show
        ax.plot(xs, means, color=color, linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                marker=MARKERS[index % len(MARKERS)], markerfacecolor="none", markersize=6,
                markevery=max(1, len(xs) // 20), label=f"{row['entry']} (n={len(row['seeds'])})")
        ax.fill_between(xs, [m - s for m, s in zip(means, sds, strict=True)],
                        [m + s for m, s in zip(means, sds, strict=True)], color=color,
                        alpha=0.15, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("cloud test accuracy (%), mean ± sd over seeds")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    if ax.lines:
        fig.legend(loc="outside lower center", ncols=min(4, len(ax.lines)), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center",
                transform=ax.transAxes)
    return fig


def write_report(suite: Suite, runs: Sequence[PlannedRun],
                 echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``suite.json``, ``suite.md`` and ``suite.png`` in the suite's folder (or the suite's
    ``report`` .json/.md/.png); echoes the tables and where they are; returns the rows."""
    rows = collect(suite, runs)
    about = describe(suite, runs)
    table = markdown(rows, suite, about)
    document = {"suite": suite.name, "profile": suite.profile, "seeds": list(suite.seeds),
                "thresholds": list(suite.thresholds), "describe": about, "entries": rows}
    stem = suite.report_stem
    files = {suffix: stem.parent / f"{stem.name}{suffix}" for suffix in (".json", ".md", ".png")}
    files[".md"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write(files[".json"], (json.dumps(document, indent=1) + "\n").encode())
    atomic_write(files[".md"], (table + "\n").encode())
    with atomic_path(files[".png"]) as path:
        figure(rows, f"{suite.name}: {about}").savefig(path, dpi=150, format="png")
    echo("\n" + table + "\n")
    echo("Report: " + ", ".join(str(path) for path in files.values()))
    return rows
