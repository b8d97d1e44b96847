"""The ``flower-eec`` command: ``run`` a config on Flower's Simulation Engine, ``show`` a config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from flower_eec.errors import ConfigError, FlowerEECError
from flower_eec.run.config import Config, from_json, parse_overrides, resolve, to_dict
from flower_eec.run.experiment import results_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flower-eec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a method on Flower's Simulation Engine (Ray)")
    show = commands.add_parser("show", help="print the fully resolved config and exit")
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
    run.add_argument("--verbose", action="store_true", help="Flower's debug logging")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flower-eec`` command."""
    args = _parser().parse_args(argv)
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
        from flower_eec.run.simulation import run_simulation

        run_simulation(config, verbose=args.verbose)
    except FlowerEECError as exc:
        print(f"flower-eec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
