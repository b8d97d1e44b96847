"""ECLM benchmark: personalised sub-models under label shift, against two baselines, and traffic.

The ``cpu`` profile of ``examples/eclm.yaml`` on CIFAR-10 (20 devices, a stratified 10% subset,
10% held out as the cloud's own data, labels re-drawn by Dirichlet(1.0) every
``eclm.shift_every`` rounds, budgets re-drawn every ``eclm.budget_every`` rounds). Three columns,
each evaluated every round on every device's *current* local test split:

``ECLM``
    The method through Flower (the real ClientApp on the in-process ``LocalGrid``): the device's
    sub-model after local adaptation. Also the cloud model's accuracy on the global test set and
    the bytes per round that travel, counted from the records sent.
``alone``
    Per device, a modular sub-model of the same size (the sub-model its round-1 budget buys
    under uniform module use) trained only on the device's own current data, the same local
    epochs per round, from the same initial weights; never federated.
``FedAvg``
    The full modular model, federated with FedAvg (example-weighted mean) over the same devices
    and data, the same local epochs, starting from the same offline-trained cloud model as ECLM;
    the averaged model is what each device evaluates. Its traffic is the full model down and up
    for every device every round.

Run (from the repository root)::

    python benchmarks/eclm.py --data-root $DATA            # cpu profile, ~15 min
    python benchmarks/eclm.py --data-root $DATA --quick    # a tiny check, ~1 min

``--data-root`` defaults to ``$FLOWER_EEC_DATA``.

Writes ``benchmarks/results/eclm_cpu.md``, ``eclm_cpu.json`` and ``eclm_cpu.png`` (``--quick``:
``eclm_quick.*``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.common.logger import FLOWER_LOGGER  # noqa: E402

from flower_eec.app.client_app import app  # noqa: E402
from flower_eec.core.eclm_math import derive_submodel, submodel_params  # noqa: E402
from flower_eec.core.eclm_training import offline_stage, train_modular  # noqa: E402
from flower_eec.core.learning import evaluate  # noqa: E402
from flower_eec.grid.local import LocalGrid  # noqa: E402
from flower_eec.models.modular import ModularNet, module_sizes  # noqa: E402
from flower_eec.run import experiment  # noqa: E402
from flower_eec.run.config import Config, resolve, to_dict, to_json  # noqa: E402
from flower_eec.run.devices import build_device_model  # noqa: E402
from flower_eec.run.federated import federated_data  # noqa: E402
from flower_eec.run.methods.eclm import budget_of  # noqa: E402
from flower_eec.run.shift import current_data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foundation import default_data_root  # noqa: E402  (benchmarks/foundation.py)

QUICK: dict[str, Any] = {"topology": {"num_devices": 4}, "data": {"subset": 0.02},
                         "train": {"rounds": 2},
                         "eclm": {"offline_epochs": 1, "shift_every": 1, "budget_every": 1}}


def build_config(data_root: str, quick: bool, out: str) -> Config:
    """The cpu profile of examples/eclm.yaml (``--quick``: 4 devices, 2 rounds, 2% of CIFAR)."""
    overrides: dict[str, Any] = {"method": "eclm", "profile": "cpu", "out": out,
                                 "data": {"root": data_root}}
    if quick:
        overrides = {**QUICK, **overrides, "data": {**QUICK["data"], "root": data_root}}
    return resolve(None, overrides)


def run_eclm(config: Config) -> dict[str, Any]:
    """ECLM through Flower on the in-process grid; the results.json document."""
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    return experiment.run(grid, config)


def offline_model(config: Config, fresh_init: bool = False
                  ) -> tuple[ModularNet, dict[str, Any]]:
    """The cloud model after the offline stage, exactly as ``experiment.run`` makes it (other
    initial weights with ``fresh_init``), and the stage's report."""
    torch.manual_seed(config.seed)
    data = federated_data(config)
    if not fresh_init:
        build_device_model(config, data, "modular")  # experiment.run's evaluator draws first
    model = build_device_model(config, data, "modular")  # then its initial weights
    assert isinstance(model, ModularNet)
    e, t = config.eclm, config.train
    report = offline_stage(model, data.public_train(), epochs=e.offline_epochs,
                           batch_size=t.batch_size, lr=t.lr, lb_weight=e.lb_weight,
                           momentum=t.momentum, weight_decay=t.weight_decay,
                           augmented=config.data.augment, cutout=config.data.cutout,
                           gate_noise=e.gate_noise, seed=config.seed)
    return model, report


def _train(config: Config, model: ModularNet, shard: Any, lb_weight: float, seed: int) -> None:
    t = config.train
    train_modular(model, shard, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
                  lb_weight=lb_weight, momentum=t.momentum, weight_decay=t.weight_decay,
                  augmented=config.data.augment, cutout=config.data.cutout,
                  generator=torch.Generator().manual_seed(seed))


def run_alone(config: Config) -> dict[str, Any]:
    """Each device trains a same-size sub-model on its own current data only."""
    torch.manual_seed(config.seed)
    data = federated_data(config)
    full = build_device_model(config, data, "modular")
    assert isinstance(full, ModularNet)
    sizes, shared = module_sizes(full)
    e = config.eclm
    uniform = np.full((e.layers, e.modules), 1.0 / e.modules)
    models, params = [], []
    for device in range(config.topology.num_devices):
        kept = derive_submodel(uniform, budget_of(config, data, device, 1), np.array(sizes),
                               shared)
        model = ModularNet(data.dataset.num_classes, data.dataset.in_channels, layers=e.layers,
                           modules=e.modules, top_k=e.top_k, channels=e.channels, kept=kept,
                           selector_norm=e.selector_norm)
        model.load_state_dict({k: v for k, v in full.state_dict().items()
                               if k in model.state_dict()})
        models.append(model)
        params.append(submodel_params(kept, np.array(sizes), shared))
    rounds = []
    for server_round in range(1, config.train.rounds + 1):
        now = current_data(config, data, server_round)
        accuracies, weights = [], []
        for device, model in enumerate(models):
            _train(config, model, now.device_train(device), 0.0, server_round * 1000 + device)
            local = now.device_test(device)
            accuracies.append(evaluate(model, local, config.eval.batch_size)["accuracy"])
            weights.append(len(now.device_train(device)))
        rounds.append({"round": server_round,
                       "mean_local_accuracy": float(np.average(accuracies, weights=weights))})
        print(f"  alone  round {server_round}: {100 * rounds[-1]['mean_local_accuracy']:.2f}%",
              flush=True)
    return {"rounds": rounds, "mean_params": float(np.mean(params))}


def run_fedavg(config: Config) -> dict[str, Any]:
    """FedAvg of the full modular model from the offline-trained cloud model."""
    data = federated_data(config)
    model, _ = offline_model(config)
    test = data.global_test()
    full_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    rounds = []
    for server_round in range(1, config.train.rounds + 1):
        now = current_data(config, data, server_round)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        states, examples = [], []
        for device in range(config.topology.num_devices):
            model.load_state_dict(start)
            shard = now.device_train(device)
            _train(config, model, shard, config.eclm.lb_weight, server_round * 1000 + device)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            examples.append(len(shard))
        total = float(sum(examples))
        averaged = {k: sum(s[k].double() * (n / total) for s, n in zip(states, examples,
                                                                       strict=True))
                    for k in start}
        model.load_state_dict({k: (v.round() if start[k].dtype == torch.int64 else v)
                               .to(start[k].dtype) for k, v in averaged.items()})
        accuracies = [evaluate(model, now.device_test(d), config.eval.batch_size)["accuracy"]
                      for d in range(config.topology.num_devices)]
        rounds.append({
            "round": server_round,
            "mean_local_accuracy": float(np.average(accuracies, weights=examples)),
            "cloud_accuracy": evaluate(model, test, config.eval.batch_size)["accuracy"],
            "bytes": 2 * config.topology.num_devices * full_bytes})
        print(f"  FedAvg round {server_round}: {100 * rounds[-1]['mean_local_accuracy']:.2f}%",
              flush=True)
    return {"rounds": rounds}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def report(config: Config, eclm: dict[str, Any], alone: dict[str, Any],
           fedavg: dict[str, Any], seconds: dict[str, float]) -> tuple[str, dict[str, Any]]:
    """The markdown table and the JSON document."""
    rows, table = [], [
        "| round | ECLM local | ECLM local, before adapting | alone local | FedAvg local | "
        "ECLM cloud | FedAvg cloud | ECLM MiB | full-model MiB | ratio | re-derived |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e, a, f in zip(eclm["rounds"], alone["rounds"], fedavg["rounds"], strict=True):
        sent = e["comm_bytes"]["cloud_to_device"] + e["comm_bytes"]["device_to_cloud"]
        full = 2 * e["devices"]["participants"] * e["eclm"]["full_model_bytes"]
        row = {"round": e["round"], "eclm_local": e["devices"]["mean_local_accuracy"],
               "eclm_local_before": e["devices"]["mean_local_accuracy_before"],
               "alone_local": a["mean_local_accuracy"], "fedavg_local": f["mean_local_accuracy"],
               "eclm_cloud": e["cloud"].get("accuracy"), "fedavg_cloud": f["cloud_accuracy"],
               "eclm_bytes": sent, "full_model_bytes": full, "ratio": full / sent,
               "rederived": e["eclm"]["rederived"],
               "mean_submodel_params": e["eclm"]["mean_submodel_params"]}
        rows.append(row)
        table.append(f"| {row['round']} | {_pct(row['eclm_local'])} | "
                     f"{_pct(row['eclm_local_before'])} | {_pct(row['alone_local'])} | "
                     f"{_pct(row['fedavg_local'])} | {_pct(row['eclm_cloud'])} | "
                     f"{_pct(row['fedavg_cloud'])} | {sent / 2**20:.2f} | {full / 2**20:.2f} | "
                     f"{row['ratio']:.2f}x | {row['rederived']} |")
    later = rows[1:] or rows  # round 1 also carries discovery
    mean = {key: float(np.mean([r[key] for r in rows])) for key in
            ("eclm_local", "alone_local", "fedavg_local")}
    table.append(f"| **mean** | **{_pct(mean['eclm_local'])}** | | "
                 f"**{_pct(mean['alone_local'])}** | **{_pct(mean['fedavg_local'])}** | | | | | "
                 f"{np.mean([r['ratio'] for r in later]):.2f}x | |")
    offline = eclm["eclm_offline"]
    text = "\n".join([
        f"# ECLM, `{config.profile}` profile, CIFAR-10",
        "",
        f"{config.topology.num_devices} devices, {config.train.rounds} rounds, labels shift "
        f"every {config.eclm.shift_every} rounds, budgets every {config.eclm.budget_every}; "
        f"full model {eclm['rounds'][0]['eclm']['full_model_params']:,} parameters, mean "
        f"sub-model {np.mean([r['mean_submodel_params'] for r in rows]):,.0f}, alone model "
        f"{alone['mean_params']:,.0f}. Accuracy (%) on each device's current local test split "
        "(example-weighted mean over devices); cloud on the global test set.",
        "",
        *table,
        "",
        f"Offline stage: {offline['examples']} cloud images, {offline['epochs']} epochs, "
        f"cloud accuracy {_pct(offline['cloud'].get('accuracy'))}%; module use "
        f"{offline['use_statistics']}.",
        "",
        "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        ""])
    document = {"config": to_dict(config), "rows": rows, "offline": offline,
                "seconds": seconds, "means": mean}
    return text, document


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Device accuracy on the current distribution per round, the three columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["round"] for r in rows]
    for key, label in (("eclm_local", "ECLM sub-model"), ("alone_local", "same size, alone"),
                       ("fedavg_local", "FedAvg, full model"), ("eclm_cloud", "ECLM cloud")):
        ax.plot(x, [100 * (r[key] or 0) for r in rows], marker=".", label=label)
    ax.set(xlabel="round", ylabel="accuracy (%)", title="ECLM under label shift (CIFAR-10)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Run the three columns, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=default_data_root(),
                        help="the datasets' folder (default: $FLOWER_EEC_DATA)")
    parser.add_argument("--quick", action="store_true", help="4 devices, 2 rounds, 2%% of data")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    FLOWER_LOGGER.setLevel(logging.WARNING)
    name = "eclm_quick" if args.quick else "eclm_cpu"
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        config = build_config(args.data_root, args.quick, out)
        started = time.perf_counter()
        print("ECLM ...", flush=True)
        eclm = run_eclm(config)
        seconds["ECLM"] = time.perf_counter() - started
    for label, column in (("alone", run_alone), ("FedAvg", run_fedavg)):
        started = time.perf_counter()
        print(f"{label} ...", flush=True)
        result = column(config)
        seconds[label] = time.perf_counter() - started
        if label == "alone":
            alone = result
        else:
            fedavg = result
    text, document = report(config, eclm, alone, fedavg, seconds)
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.md").write_text(text)
    (results / f"{name}.json").write_text(json.dumps(document, indent=1))
    plot(document["rows"], results / f"{name}.png")


if __name__ == "__main__":
    main()
