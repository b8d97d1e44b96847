"""ECLM's offline stage alone: module-use statistics and cloud accuracy, for tuning its remedies.

Trains the modular cloud model on the cloud's own data exactly as ``experiment.run`` does (same
seed, initial weights and data) under the ``cpu`` profile of ``examples/eclm.yaml``, then prints
the module use per layer, its statistics and the accuracy on the global test set. Keys after the
options override the configuration, e.g.::

    python benchmarks/eclm_offline.py --data-root $DATA eclm.gate_noise=0 eclm.lb_weight=2

``--data-root`` defaults to ``$FLOWER_EEC_DATA``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eclm import offline_model  # noqa: E402  (benchmarks/eclm.py)
from foundation import default_data_root  # noqa: E402  (benchmarks/foundation.py)

from flower_eec.core.learning import evaluate  # noqa: E402
from flower_eec.run.config import parse_overrides, resolve  # noqa: E402
from flower_eec.run.federated import federated_data  # noqa: E402


def main() -> None:
    """Run the offline stage once and print its report as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=default_data_root(),
                        help="the datasets' folder (default: $FLOWER_EEC_DATA)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--fresh-init", action="store_true",
                        help="other initial weights: the first model drawn after seeding")
    parser.add_argument("overrides", nargs="*", help="config keys, e.g. eclm.lb_weight=1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    overrides = {**overrides, "method": "eclm", "profile": args.profile,
                 "data": {**overrides.get("data", {}), "root": args.data_root}}
    config = resolve(ROOT / "examples" / "eclm.yaml", overrides)
    started = time.perf_counter()
    model, report = offline_model(config, fresh_init=args.fresh_init)
    e = config.eclm
    report["cloud_accuracy"] = evaluate(model, federated_data(config).global_test(),
                                        config.eval.batch_size)["accuracy"]
    report["settings"] = {"lb_weight": e.lb_weight, "gate_noise": e.gate_noise,
                          "selector_norm": e.selector_norm,
                          "offline_epochs": e.offline_epochs}
    report["total_s"] = round(time.perf_counter() - started, 1)
    usage = np.array(report["module_use"])
    print("module use:\n" + np.array2string(usage, precision=3))
    print(json.dumps({k: report[k] for k in ("settings", "use_statistics", "cloud_accuracy",
                                             "train", "total_s")}))


if __name__ == "__main__":
    main()
