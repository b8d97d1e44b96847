"""The suite's numbers: pure functions of the runs' ``results.json`` and ``suite_run.json``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flower_eec.run.suite.spec import DEFAULT_THRESHOLDS, Entry

LAST = 5  # "last 5": the mean cloud accuracy of the last LAST evaluated rounds


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of ``values``: (None, None) for none, and a
    standard deviation of None for one value."""
    if not values:
        return None, None
    average = sum(values) / len(values)
    if len(values) == 1:
        return average, None
    return average, math.sqrt(sum((v - average) ** 2 for v in values) / (len(values) - 1))


def mean(values: Sequence[float]) -> float | None:
    """The mean of ``values``; None for none."""
    return mean_sd(values)[0]


def median(values: Sequence[float]) -> float | None:
    """The median of ``values``; None for none."""
    return statistics.median(values) if values else None


def stat(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"mean", "sd", "n"}`` over the values that are not None."""
    present = [float(v) for v in values if v is not None]
    average, sd = mean_sd(present)
    return {"mean": average, "sd": sd, "n": len(present)}


def cloud_curve(results: Mapping[str, Any]) -> list[tuple[int, float]]:
    """(round, cloud accuracy) of every round whose cloud model was evaluated."""
    return [(int(r["round"]), float(r["cloud"]["accuracy"])) for r in results.get("rounds", [])
            if (r.get("cloud") or {}).get("accuracy") is not None]


def local_curve(results: Mapping[str, Any], key: str = "mean_local_accuracy") -> list[float]:
    """The devices' mean local accuracy (``key``) of every round that has one: each device's
    model on its own local test split, weighted by examples (``devices`` in a round's record)."""
    return [float(r["devices"][key]) for r in results.get("rounds", [])
            if (r.get("devices") or {}).get(key) is not None]


def rounds_to(curve: Sequence[tuple[int, float]], level: float) -> int | None:
    """The first round whose accuracy is at least ``level``; None when none is."""
    return next((round_ for round_, accuracy in curve if accuracy >= level), None)


def largest_drop(curve: Sequence[tuple[int, float]]) -> float | None:
    """The largest fall of accuracy from one evaluated round to the next (0.0 when it never
    falls; None with fewer than two rounds): a collapse shows here."""
    falls = [before - after for (_, before), (_, after) in zip(curve, curve[1:], strict=False)]
    return max([0.0, *falls]) if falls else None


def threshold_key(level: float) -> str:
    """``0.25`` -> ``25%``."""
    return f"{100 * level:g}%"


def run_metrics(results: Mapping[str, Any], record: Mapping[str, Any] | None = None,
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """One run's numbers, from its ``results.json`` (and ``suite_run.json``, ``record``).

    Bytes per round (per link) are the mean from round 2 on: round 1 of FedAgg and FedEEC
    also carries the one-off upload of bridge codes (``bytes_round1``). Seconds per round are
    the median wall time of the rounds but the first of every process that ran the run (Ray's
    start-up and the actors' first imports): round 1, and the first round of each resume
    (None when no other round is left); the median, so that a few rounds slowed by other work
    on a shared machine do not move it. The peak memory is ``record``'s (None without one).
    """
    record = record or {}
    rounds = list(results.get("rounds", []))
    comm = [r.get("comm_bytes", {}) for r in rounds]
    links = list(dict.fromkeys(link for bytes_ in comm for link in bytes_))
    steady = comm[1:] or comm
    firsts = {1} | {int(a.get("from_round", 1)) for a in record.get("attempts", [])
                    if a.get("action") == "resume"}
    curve = cloud_curve(results)
    accuracies = [accuracy for _, accuracy in curve]
    local = local_curve(results)
    return {
        "seed": (results.get("config") or {}).get("seed"),
        "rounds": len(rounds),
        "final": accuracies[-1] if accuracies else None,
        "best": max(accuracies, default=None),
        "last5": mean(accuracies[-LAST:]),
        "largest_drop": largest_drop(curve),
        "local_mean": mean(local),
        "local_final": local[-1] if local else None,
        "local_before_mean": mean(local_curve(results, "mean_local_accuracy_before")),
        "reach": {threshold_key(level): rounds_to(curve, level) for level in thresholds},
        "bytes_per_round": {link: mean([b.get(link, 0) for b in steady]) for link in links},
        "bytes_round1": {link: comm[0].get(link, 0) for link in links},
        "s_per_round": median([r["wall_s"] for r in rounds
                               if r["round"] not in firsts and "wall_s" in r]),
        "wall_s": round(sum(r.get("wall_s", 0.0) for r in rounds), 3),
        "peak_rss_bytes": record.get("peak_rss_bytes"),
        "peak_pss_bytes": record.get("peak_pss_bytes"),
        "curve": curve,
    }


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[dict[str, Any]]:
    """Per round (of any curve), the mean and sample sd of the accuracies the curves have."""
    by_round: dict[int, list[float]] = {}
    for curve in curves:
        for round_, accuracy in curve:
            by_round.setdefault(round_, []).append(accuracy)
    return [{"round": round_, **stat(values)} for round_, values in sorted(by_round.items())]


def entry_row(entry: Entry, metrics: Sequence[Mapping[str, Any]], planned_seeds: int,
              thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """One row of the table from the metrics of an entry's finished runs (one per seed):
    mean and sample sd over the seeds; rounds to a threshold averaged over the seeds that
    reach it, with how many do."""
    links = list(dict.fromkeys(link for m in metrics for link in m["bytes_per_round"]))

    def over_seeds(key: str) -> dict[str, Any]:
        return stat(m[key] for m in metrics)

    def per_link(key: str) -> dict[str, dict[str, Any]]:
        return {link: stat(m[key].get(link, 0) for m in metrics) for link in links}

    def reach(key: str) -> dict[str, Any]:
        hits = [m["reach"][key] for m in metrics if m["reach"].get(key) is not None]
        return {**stat(hits), "reached": len(hits), "of": len(metrics)}

    return {
        "entry": entry.name, "method": entry.method, "overrides": list(entry.overrides),
        "seeds": [m["seed"] for m in metrics], "planned_seeds": planned_seeds,
        "final": over_seeds("final"), "best": over_seeds("best"), "last5": over_seeds("last5"),
        "local_mean": over_seeds("local_mean"), "local_final": over_seeds("local_final"),
        "local_before_mean": over_seeds("local_before_mean"),
        "largest_drop": max((m["largest_drop"] for m in metrics
                             if m.get("largest_drop") is not None), default=None),
        "reach": {threshold_key(level): reach(threshold_key(level)) for level in thresholds},
        "bytes_per_round": per_link("bytes_per_round"),
        "bytes_round1": per_link("bytes_round1"),
        "s_per_round": over_seeds("s_per_round"),
        "peak_rss_bytes": over_seeds("peak_rss_bytes"),
        "peak_pss_bytes": over_seeds("peak_pss_bytes"),
        "curve": mean_curve([m["curve"] for m in metrics]),
        "runs": [{k: v for k, v in m.items() if k != "curve"} for m in metrics],
    }
