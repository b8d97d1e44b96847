"""The ``flower-eec`` command: ``run`` a config on Flower's Simulation Engine, ``show`` a config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from flower_eec import noise, progress
from flower_eec.errors import ConfigError, FlowerEECError
from flower_eec.run import suite
from flower_eec.run.bars import Bars
from flower_eec.run.config import Config, from_json, parse_overrides, resolve, to_dict
from flower_eec.run.experiment import results_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flower-eec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a method on Flower's Simulation Engine (Ray)")
    show = commands.add_parser("show", help="print the fully resolved config and exit")
    suite.add_arguments(commands.add_parser(
        "bench", help="run a benchmark suite (every entry with every seed), then write its "
        "table and figure"))
    for sub in (run, show):
        sub.add_argument("config", nargs="?" if sub is run else None,
                         help="a method name (fedagg: its shipped defaults) or a YAML file "
                         "(e.g. examples/fedagg.yaml); none with --resume")
        sub.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.lr=0.1")
    run.add_argument("--out", help="results folder (default: results/<method>-<profile>-<time>)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the results of an earlier run in --out")
    run.add_argument("--resume", metavar="DIR",
                     help="go on with the run in results folder DIR from its last checkpoint "
                     "(key=value overrides still apply, e.g. train.rounds=40)")
    run.add_argument("--verbose", action="store_true",
                     help="Flower's debug logging, and every third-party warning and line that a "
                     "run hides otherwise")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bars and no INFO lines: warnings, errors and, at the end, "
                     "where the results are")
    return parser


def resumed(out: Path, overrides: list[str]) -> Config:
    """The config of the run in ``out`` (its ``results.json``), with ``overrides``, to resume."""
    path = out / "results.json"
    try:
        saved = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--resume {out}: cannot read the run's config from {path} ({exc}); "
                          "give the results folder of a run") from None
    merged = OmegaConf.merge(saved, parse_overrides(overrides),
                             {"out": str(out.resolve()), "resume": True, "overwrite": False})
    return from_json(json.dumps(OmegaConf.to_container(merged)))


@contextmanager
def console(quiet: bool, verbose: bool) -> Iterator[None]:
    """What a run shows on the console while the block runs: progress bars when stderr is a
    terminal (not with ``quiet``), the known noise hidden (not with ``verbose``: then every
    process of the run, Ray's actors too, shows everything), only warnings and errors with
    ``quiet``."""
    if verbose:
        os.environ[noise.VERBOSE_ENV] = "1"  # before Ray starts: its actors inherit it
    else:
        noise.hide()
    handler_levels = [(h, h.level) for h in logging.getLogger(noise.FLOWER_LOGGER).handlers]
    if quiet:
        for handler, level in handler_levels:
            handler.setLevel(max(level, logging.WARNING))
    try:
        if quiet or not sys.stderr.isatty():
            yield
        else:
            with Bars() as bars, progress.reporting(bars):
                yield
    finally:
        for handler, level in handler_levels:
            handler.setLevel(level)


def final_line(out: Path) -> str:
    """Where a finished run's results are, and its final cloud accuracy."""
    try:
        summary = json.loads((out / "results.json").read_text())
        accuracy = summary["final"]["cloud_accuracy"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"results in {out}"
    return (f"results in {out} (final cloud accuracy {accuracy:.2%})" if accuracy is not None
            else f"results in {out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flower-eec`` command."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return suite.run_from_args(args)
    try:
        if getattr(args, "resume", None):
            config = resumed(Path(args.resume), [*filter(None, [args.config]), *args.overrides])
        elif args.config is None:
            raise ConfigError("give a method name or a YAML file (or --resume DIR)")
        else:
            overrides = parse_overrides(args.overrides)
            if getattr(args, "out", None):
                overrides["out"] = args.out
            if getattr(args, "overwrite", False):
                overrides["overwrite"] = True
            config = resolve(args.config, overrides)
        if args.command == "show":
            print(yaml.safe_dump(to_dict(config), sort_keys=False))
            return 0
        config.out = str(Path(results_dir(config)).resolve())
        with console(quiet=args.quiet, verbose=args.verbose):
            from flower_eec.run.simulation import run_simulation

            run_simulation(config, verbose=args.verbose)
        if args.quiet:
            print(f"flower-eec: {final_line(Path(config.out))}")
    except FlowerEECError as exc:
        print(f"flower-eec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
