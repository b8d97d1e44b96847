"""Benchmark suites: several methods, several seeds, one table and one figure.

A suite file (``spec``) names a setting, the entries to compare and the seeds. Every (entry,
seed) runs as ``python -m flower_eec.run.cli run <method> profile=<profile>
train.rounds=<rounds> <suite overrides> <entry overrides> <command-line overrides> seed=<k>
--out <out>/<entry>/seed<k>``, each in a process of its own (``runner``), so that a crash or a
kill loses that run only, and so that the peak memory of its whole process tree (Ray's workers
included) can be measured (``memory``); it is kept in ``suite_run.json`` beside the run's
``results.json`` (with its wall time and exit status; the run's output goes to
``suite_run.log``).

A run that already finished its rounds is skipped; one that stopped (``running`` after a kill,
``failed``, or finished with fewer rounds than asked) goes on from its checkpoint with
``--resume``; the others start. A finished run whose config differs from the suite's (or that
has more rounds than asked) is *stale*: nothing runs until it is moved away or
``--restart-stale`` is given (``decide``). After the runs (or with ``--report-only``) the
suite's folder (or the file's ``report``) gets ``suite.md``, ``.json`` and ``.png``: per entry,
mean and sample standard deviation over the seeds of the final, best and last-5 cloud
accuracy, rounds to reach each threshold, bytes per round on every link, seconds per round and
peak memory (``stats``), and the mean cloud-accuracy curves.

Run: ``flower-eec bench benchmarks/suites/smoke.yaml`` (``python benchmarks/suite.py`` and
``python -m flower_eec.run.suite`` are the same), e.g. ``... benchmarks/suites/cpu.yaml
data.root=$DATA``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flower_eec.errors import FlowerEECError
from flower_eec.run.suite.report import write_report
from flower_eec.run.suite.runner import run_suite
from flower_eec.run.suite.spec import load_suite, plan


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The suite runner's arguments (``flower-eec bench`` takes the same)."""
    parser.add_argument("suite", help="a suite file, e.g. benchmarks/suites/cpu.yaml")
    parser.add_argument("overrides", nargs="*",
                        help="key=value for every run, applied last (e.g. data.root=$DATA)")
    parser.add_argument("--out", help="the suite's results folder (default: the file's `out`)")
    parser.add_argument("--data-root", metavar="PATH",
                        help="data.root of every run (default: $FLOWER_EEC_DATA)")
    parser.add_argument("--only", default="", metavar="ENTRY[,ENTRY]",
                        help="run these entries only (the report covers them all)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the table and figure of what has finished")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run (and the commands), run nothing")
    parser.add_argument("--restart-stale", action="store_true",
                        help="run stale runs (another config, more rounds) again from round 1")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the suite the parsed ``args`` name."""
    extra = list(args.overrides)
    if args.data_root:
        extra.insert(0, f"data.root={Path(args.data_root).expanduser().resolve()}")
    try:
        suite = load_suite(args.suite, args.out, extra)
        if args.report_only:
            write_report(suite, plan(suite))
            return 0
        return run_suite(suite, only=[name for name in args.only.split(",") if name],
                         dry_run=args.dry_run, restart_stale=args.restart_stale)
    except FlowerEECError as exc:
        print(f"flower-eec bench: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flower_eec.run.suite SUITE.yaml [key=value ...] [options]``."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="flower-eec bench", description="Run a benchmark suite: every entry with every "
        "seed, each in its own process and results folder; then one table and one figure."))
    return run_from_args(parser.parse_args(argv))
