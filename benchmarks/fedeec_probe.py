"""Where FedEEC's cloud collapses: the gradient norms of every server-side distillation pass.

Runs ``examples/fedeec.yaml`` (``cpu`` profile, default: the dynamic setting of
``benchmarks/fedeec.py``) in this process on a ``LocalGrid`` and prints, for each pass of an edge
or the cloud, the devices whose bridge samples it covered, its mean loss and the median, 90th
percentile and largest gradient norm of its steps (after any ``fedagg.clip``); after each of the
cloud's passes also the cloud's accuracy and loss on the first 1,000 test images, with BatchNorm's
running statistics (as the benchmarks test) and with batch statistics (which tells broken running
statistics from broken weights). Diagnostic only: the results go to a temporary folder; the
printout is the result.

Run (from the repository root)::

    python benchmarks/fedeec_probe.py --data-root $DATA --rounds 8   # fedeec_probe.txt
    python benchmarks/fedeec_probe.py --rounds 8 fedagg.clip=20

``--data-root`` defaults to ``$FLOWER_EEC_DATA``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from flower_eec.app.client_app import app
from flower_eec.core.learning import Images, evaluate
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import parse_overrides, resolve, to_json
from flower_eec.run.federated import federated_data
from flower_eec.strategies.fedagg import BridgeEdge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedeec import DYNAMIC  # noqa: E402  (the dynamic setting of benchmarks/fedeec.py)
from foundation import default_data_root  # noqa: E402  (benchmarks/foundation.py)


def gradient_norm(optimiser: torch.optim.Optimizer) -> float:
    """The L2 norm of all gradients an optimiser is about to apply."""
    grads = [p.grad for group in optimiser.param_groups for p in group["params"]
             if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=default_data_root(),
                        help="the datasets' folder (default: $FLOWER_EEC_DATA)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--static", action="store_true", help="without the dynamic overrides")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. fedagg.clip=20")
    args = parser.parse_args()
    overrides = [f"data.root={args.data_root}", f"train.rounds={args.rounds}",
                 f"out={tempfile.mkdtemp(prefix='fedeec-probe-')}",
                 *([] if args.static else DYNAMIC), *args.overrides]
    config = resolve("examples/fedeec.yaml", {"profile": "cpu", **parse_overrides(overrides)})
    test = federated_data(config).global_test()
    probe = Images(test.x[:1000], test.y[:1000], test.mean, test.std)

    norms: list[float] = []
    register_optimizer_step_pre_hook(lambda optimiser, *_: norms.append(gradient_norm(optimiser)))
    learn = BridgeEdge.learn

    def reported(edge: BridgeEdge, devices: Any, teacher: torch.Tensor, key: int,
                 settings: Any = None) -> dict[str, float]:
        norms.clear()
        metrics = learn(edge, devices, teacher, key, settings)
        p90 = statistics.quantiles(norms, n=10, method="inclusive")[8] if norms[1:] else norms[0]
        line = (f"  {edge.name:6s} {len(devices):2d} devices  loss {metrics['distil_loss']:6.2f}"
                f"  |grad| median {statistics.median(norms):6.1f} p90 {p90:6.1f}"
                f" max {max(norms):7.1f}")
        if edge.name == "cloud":
            kept = {k: v.clone() for k, v in edge.model.state_dict().items()}
            running = evaluate(edge.model, probe)
            batch = evaluate(edge.model, probe, bn_train=True)  # moves the running statistics
            edge.model.load_state_dict(kept)
            line += (f"  -> cloud {100 * running['accuracy']:5.1f}% loss {running['loss']:.3g}"
                     f" (batch stats {100 * batch['accuracy']:5.1f}% loss {batch['loss']:.3g})")
        print(line, flush=True)
        return metrics

    BridgeEdge.learn = reported  # type: ignore[method-assign, assignment]
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    print("overrides:", " ".join(overrides[3:]))
    summary = experiment.run(grid, config)
    for row in summary["rounds"]:
        print(f"round {row['round']}: cloud {100 * row['cloud']['accuracy']:.2f}%")


if __name__ == "__main__":
    main()
