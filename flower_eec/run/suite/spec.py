"""The suite file: read, checked, and planned as one run per (entry, seed).

A suite file (YAML) holds the setting shared by every run, the entries to compare and the seeds::

    name: cpu                          # default: the file's name without .yaml
    profile: cpu                       # smoke, cpu or paper
    rounds: 20                         # train.rounds of every run (default: the profile's)
    seeds: [0, 1, 2]
    out: benchmarks/results/suite-cpu  # default: results/suite-<name>; --out wins
    report: results/suite_cpu          # <report>.md/.json/.png; default and with --out: out/suite
    thresholds: [0.25, 0.30]           # cloud accuracies for "rounds to reach" (the default)
    overrides: [eval.every=1]          # key=value for every run (a list, or a mapping)
    entries:
      - name: fedeec-dynamic           # the entry's folder and row
        method: fedeec                 # a method name or a YAML config, as `flower-eec run`
        overrides: [topology.mobility=0.2, topology.device_dropout=0.2]

Every config is resolved here, before anything runs, so that a wrong key stops the suite at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flower_eec.errors import FlowerEECError
from flower_eec.run.config import parse_overrides, resolve, to_dict

DEFAULT_THRESHOLDS = (0.25, 0.30)
MANAGED = ("seed", "out", "resume", "overwrite", "profile", "method")  # set by the suite itself
SUITE_KEYS = ("name", "profile", "rounds", "seeds", "out", "report", "thresholds", "overrides",
              "entries")
ENTRY_KEYS = ("name", "method", "overrides")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SuiteError(FlowerEECError):
    """A suite file or a suite's results folder is not as it should be."""


@dataclass(frozen=True)
class Entry:
    """One row of the suite: a method and its own overrides."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    """A suite file, read; ``extra`` are the command line's overrides (applied last)."""

    name: str
    profile: str
    seeds: tuple[int, ...]
    entries: tuple[Entry, ...]
    out: Path
    rounds: int | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    overrides: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    report: Path | None = None  # the report's files without their suffix; None: out / "suite"

    @property
    def report_stem(self) -> Path:
        """Where the report goes: ``<report_stem>.json``, ``.md`` and ``.png``."""
        return self.report or self.out / "suite"


@dataclass(frozen=True)
class PlannedRun:
    """One (entry, seed): its folder, its overrides and the config they resolve to."""

    entry: Entry
    seed: int
    folder: Path
    overrides: tuple[str, ...]
    config: dict[str, Any] = field(hash=False, compare=False)

    @property
    def rounds(self) -> int:
        return int(self.config["train"]["rounds"])

    @property
    def label(self) -> str:
        return f"{self.entry.name} seed {self.seed}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one mapping of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def override_list(value: Any, where: str) -> tuple[str, ...]:
    """Overrides as ``key=value`` strings, from a list of them or a mapping of dotted keys (a
    nested mapping is flattened; non-string values are written as JSON, which YAML reads back).
    Keys the suite sets itself (``MANAGED``) are refused."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = [f"{key}={item if isinstance(item, str) else json.dumps(item)}"
                 for key, item in flatten(value).items()]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = list(value)
    else:
        raise SuiteError(f"{where}: overrides must be a list of key=value strings or a mapping "
                         f"of keys to values, not {value!r}")
    for item in items:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key:
            raise SuiteError(f"{where}: override {item!r} is not of the form key=value "
                             "(e.g. train.lr=0.1)")
        if key in MANAGED:
            raise SuiteError(f"{where}: '{key}' is set by the suite itself (seeds: the suite's "
                             "`seeds`, profile: its `profile`, method: the entry's `method`, "
                             "the folder: `out` or --out); remove it from the overrides")
    return tuple(items)


def _refuse_unknown(keys: Iterable[str], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(allowed)}")


def _is_count(value: Any, least: int) -> bool:
    """An integer (not a bool) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _entry(raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: an entry is a mapping with name, method, overrides")
    _refuse_unknown(raw, ENTRY_KEYS, where)
    if not raw.get("method"):
        raise SuiteError(f"{where}: no method (a method name, e.g. hierfavg, or a YAML "
                         "config file)")
    name = str(raw.get("name") or raw["method"])
    if not NAME.match(name):
        raise SuiteError(f"{where}: name {name!r} must be a folder name (letters, digits, '.', "
                         "'_', '-')")
    return Entry(name, str(raw["method"]), override_list(raw.get("overrides"), where))


def parse_suite(content: Any, source: str, out: str | Path | None = None,
                extra: Sequence[str] = ()) -> Suite:
    """A suite from the mapping of a suite file (``source`` names it in errors)."""
    if not isinstance(content, dict):
        raise SuiteError(f"{source}: a suite file holds a mapping (name, profile, seeds, "
                         "entries, ...)")
    _refuse_unknown(content, SUITE_KEYS, source)
    name = str(content.get("name") or Path(source).stem)
    seeds = content.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(_is_count(s, 0) for s in seeds)):
        raise SuiteError(f"{source}: seeds must be a list of distinct integers >= 0, "
                         f"e.g. [0, 1, 2], not {seeds!r}")
    rounds = content.get("rounds")
    if rounds is not None and not _is_count(rounds, 1):
        raise SuiteError(f"{source}: rounds must be an integer >= 1, not {rounds!r}")
    thresholds = content.get("thresholds", list(DEFAULT_THRESHOLDS))
    if (not isinstance(thresholds, list)
            or not all(isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1
                       for t in thresholds)):
        raise SuiteError(f"{source}: thresholds must be a list of accuracies in (0, 1], "
                         f"e.g. [0.25, 0.3], not {thresholds!r}")
    raw_entries = content.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise SuiteError(f"{source}: entries must be a non-empty list of "
                         "{name, method, overrides}")
    entries = [_entry(raw, f"{source}: entries[{index}]") for index, raw in enumerate(raw_entries)]
    names = [e.name for e in entries]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise SuiteError(f"{source}: entry names must differ; {', '.join(doubled)} appear "
                         "more than once")
    report = content.get("report")
    return Suite(name=name, profile=str(content.get("profile", "smoke")), seeds=tuple(seeds),
                 entries=tuple(entries),
                 out=Path(out or content.get("out") or Path("results") / f"suite-{name}"),
                 report=Path(str(report)) if report and not out else None,
                 rounds=rounds, thresholds=tuple(float(t) for t in thresholds),
                 overrides=override_list(content.get("overrides"), source),
                 extra=override_list(list(extra), "the command line"))


def load_suite(path: str | Path, out: str | Path | None = None,
               extra: Sequence[str] = ()) -> Suite:
    """Read the suite file at ``path``; ``out`` replaces its folder, ``extra`` are overrides
    for every run (applied after the suite's and the entry's)."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SuiteError(f"cannot read the suite file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"the suite file {path} is not valid YAML: {exc}") from None
    return parse_suite(content, str(path), out, extra)


def run_overrides(suite: Suite, entry: Entry, seed: int) -> tuple[str, ...]:
    """The overrides of one run, later ones winning: profile, rounds, the suite's, the entry's,
    the command line's, the seed."""
    rounds = () if suite.rounds is None else (f"train.rounds={suite.rounds}",)
    return (f"profile={suite.profile}", *rounds, *suite.overrides, *entry.overrides,
            *suite.extra, f"seed={seed}")


def plan(suite: Suite) -> list[PlannedRun]:
    """Every (entry, seed) of the suite with its resolved config: a key or value that is not
    allowed stops the suite here, before anything runs, naming the entry."""
    runs = []
    for entry in suite.entries:
        for seed in suite.seeds:
            overrides = run_overrides(suite, entry, seed)
            try:
                config = to_dict(resolve(entry.method, parse_overrides(list(overrides))))
            except FlowerEECError as exc:
                raise SuiteError(f"entry '{entry.name}': {exc}") from None
            runs.append(PlannedRun(entry, seed, suite.out / entry.name / f"seed{seed}",
                                   overrides, config))
    return runs
