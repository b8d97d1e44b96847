"""Why FedAgg/FedEEC diverged at their defaults: the smoke profile per round and seed, under the
edge-cloud exchange of the paper (``echo``) and ours (``simultaneous``), both at the paper's
beta = 10, under the other candidates' changes, and at today's defaults (``default``:
``simultaneous`` with beta = 1).

Runs on the in-process grid (no Ray), a few seconds a run. Prints, per run, the cloud's test
loss and accuracy and the largest absolute logit of the cloud on the bridge samples of its store
after every round (logits that grow round after round are the mechanism), and the steps the
guard skipped.

    python benchmarks/fedagg_stability.py --rounds 6 --seeds 0,1,2 --variants simultaneous,echo
    python benchmarks/fedagg_stability.py --rounds 20 --seeds 0,1,2 --variants default
    python benchmarks/fedagg_stability.py --rounds 6 --seeds 0,1 --methods fedagg \
        --variants echo+beta1,echo+momentum0,echo+cifar-stem,echo+clip20
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch

from flower_eec.app.client_app import app
from flower_eec.core.bsbodp import logits_on
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import parse_overrides, resolve, to_json
from flower_eec.strategies.fedagg import FedAgg
from flower_eec.strategies.hierarchical import RoundReport

PAPER_BETA = "fedagg.beta=10"  # the default before 1; every variant but `default` keeps it
VARIANTS = {  # name: overrides (the candidates' changes on top of the paper's echo exchange)
    "default": [],  # simultaneous, beta = 1
    "simultaneous": [PAPER_BETA],  # ours, at the paper's beta
    "echo": ["fedagg.edge_cloud=echo", PAPER_BETA],  # the paper's and the demo's
    "echo+beta1": ["fedagg.edge_cloud=echo", "fedagg.beta=1"],
    "echo+momentum0": ["fedagg.edge_cloud=echo", PAPER_BETA, "train.momentum=0"],
    # no 1x1 maps at layer 4
    "echo+cifar-stem": ["fedagg.edge_cloud=echo", PAPER_BETA, "model.stem=cifar"],
    "echo+clip20": ["fedagg.edge_cloud=echo", PAPER_BETA, "fedagg.clip=20"],
}


def largest_logits() -> list[float]:
    """Record, after every round, the cloud's largest absolute logit on its whole store."""
    seen: list[float] = []
    end_round = FedAgg.end_round

    def spy(self: FedAgg, report: RoundReport) -> None:
        samples, _ = self.store.samples(sorted(self.store.devices()))
        seen.append(float(logits_on(self.cloud_model, samples, 500).abs().max()))
        end_round(self, report)

    FedAgg.end_round = spy  # type: ignore[method-assign]
    return seen


def run(method: str, rounds: int, seed: int, overrides: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        config = resolve(method, {"profile": "smoke", "out": out, "seed": seed,
                                  **parse_overrides([*overrides, f"train.rounds={rounds}"])})
        grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
        return experiment.run(grid, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="fedagg,fedeec")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logits = largest_logits()
    print("method | variant | seed | per round: cloud loss / accuracy % / max |logit| | "
          "skipped steps (devices, server) | max loss")
    for method in args.methods.split(","):
        for name in args.variants.split(","):
            for seed in map(int, args.seeds.split(",")):
                logits.clear()
                summary = run(method, args.rounds, seed, VARIANTS[name])
                cells = [f"{r['cloud']['loss']:.3g}/{100 * r['cloud']['accuracy']:.1f}/{z:.3g}"
                         for r, z in zip(summary["rounds"], logits, strict=True)]
                skipped = [(r["skipped_steps"]["devices"], r["skipped_steps"]["server"])
                           for r in summary["rounds"]]
                worst = max(r["cloud"]["loss"] for r in summary["rounds"])
                print(f"{method} | {name} | {seed} | {' '.join(cells)} | "
                      f"{sum(d for d, _ in skipped)}, {sum(s for _, s in skipped)} | "
                      f"{worst:.3g}", flush=True)


if __name__ == "__main__":
    main()
