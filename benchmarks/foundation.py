"""Foundation benchmarks: how well FedAvg/HierFAVG learn, and what Flower's simulation costs.

Two parts, each printing markdown tables and writing them, with the raw numbers as JSON, to
``benchmarks/results/foundation_<part>.md`` and ``benchmarks/results/foundation_<part>.json``:

``accuracy``
    The ``cpu`` profile on CIFAR-10 (20 devices, Dirichlet alpha 1 over a 10% stratified subset,
    4 edges, 20 rounds, ``cnn3`` on every tier). FedAvg and HierFAVG run on Flower's Simulation
    Engine (Ray; ``--engine local`` uses the in-process ``LocalGrid`` instead). Next to them, the
    same ``cnn3`` from the same initial weights is trained centrally on the union of the devices'
    shards, one epoch per round (the devices do ``local_epochs=1`` per round), with the same batch
    size, learning rate, momentum and augmentation. Reported: cloud (resp. central) test accuracy
    on the global CIFAR-10 test set after every round, final and best, and wall time. Per-edge and
    per-device evaluation is switched off (it does not change the cloud model) so that every
    column does the same evaluation work: one pass over the global test set per round.

``overhead``
    Wall time of FedAvg with 10 and 100 devices (5 rounds) under Flower's Simulation Engine,
    against a plain PyTorch loop in one process doing the same computation: per round, for each
    device, load the global weights, train ``local_epochs`` on its shard (same seeds), then average
    weighted by examples; one central evaluation on the global test set after the last round in
    both, no device-side evaluation. The total number of training examples is the same at every
    device count (an IID split of a CIFAR-10 subset), so the learning work is constant and the
    ratio shows what orchestration costs. 1,000 devices run with the same rounds when that
    finishes within ``--timeout-1000`` seconds, else with 1 round (``--rounds-1000`` sets it).
    Ray start-up is timed on its own (``ray.init`` + two actors + ``ray.shutdown``). Each
    measurement below 1,000 devices runs ``--repeat`` times (default 2) and the fastest counts,
    because the machine may be shared and interference only ever adds time.

Flower runs go through ``flower_eec.run.simulation.run_simulation`` (Simulation Engine, Ray).

Every measured run happens in a fresh Python process (this script re-invoked with a private
sub-command), so caches, Ray state and imports never leak from one measurement into the next.

Run (from the repository root)::

    FLWR_TELEMETRY_ENABLED=0 python benchmarks/foundation.py all
    FLWR_TELEMETRY_ENABLED=0 python benchmarks/foundation.py accuracy --rounds 3   # quick check
    FLWR_TELEMETRY_ENABLED=0 python benchmarks/foundation.py overhead --skip-1000

The CIFAR-10 folder is ``--data-root``, else ``$FLOWER_EEC_DATA``. (Without either, a
``../shared/data`` folder next to the clone is tried: a convenience for the developers' layout.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SCRIPT = Path(__file__).resolve()
PARTS = ("accuracy", "overhead")
METHODS = ("fedavg", "hierfavg")


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def default_data_root() -> str:
    """``$FLOWER_EEC_DATA``; unset, ``../shared/data`` next to the clone (the developers' layout).

    The default ``--data-root`` of every benchmark script.
    """
    return os.environ.get("FLOWER_EEC_DATA") or str((REPO / ".." / "shared" / "data").resolve())


def accuracy_overrides(method: str, data_root: str, rounds: int | None,
                       full_eval: bool) -> dict[str, Any]:
    """The ``cpu`` profile for ``method``, with only the cloud evaluated (unless ``full_eval``)."""
    overrides: dict[str, Any] = {"method": method, "profile": "cpu", "data": {"root": data_root}}
    if rounds is not None:
        overrides["train"] = {"rounds": rounds}
    if not full_eval:
        overrides["eval"] = {"edges": False, "devices": False}
    return overrides


def overhead_overrides(num_devices: int, rounds: int, data_root: str,
                       subset: float) -> dict[str, Any]:
    """FedAvg on an IID split of a CIFAR-10 subset; only one central evaluation, at the end."""
    return {
        "method": "fedavg",
        "profile": "cpu",
        "data": {"root": data_root, "subset": subset, "partition": "iid"},
        "topology": {"num_devices": num_devices, "num_edges": 1},
        "train": {"rounds": rounds},
        "eval": {"every": rounds, "edges": False, "devices": False},
    }


# --------------------------------------------------------------------------------------------
# Child processes: one measurement each
# --------------------------------------------------------------------------------------------


def _child_flower(config_json: str, engine: str) -> dict[str, Any]:
    """Run one config on Flower (Ray simulation or LocalGrid); return timings and results.json."""
    from flower_eec.run.config import from_json, to_json

    config = from_json(config_json)
    with tempfile.TemporaryDirectory(prefix="flower-eec-bench-") as out:
        config.out = out
        cpu_started = _own_cpu_s()
        started = time.perf_counter()
        if engine == "simulation":
            run_on_ray(config)
        else:
            from flower_eec.app.client_app import app as client_app
            from flower_eec.grid.local import LocalGrid
            from flower_eec.run import experiment

            grid = LocalGrid(client_app, config.topology.num_devices,
                             {"config-json": to_json(config)})
            experiment.run(grid, config)
        call_s = time.perf_counter() - started
        driver_cpu_s = _own_cpu_s() - cpu_started
        results_file = Path(out) / "results.json"
        if not results_file.is_file():
            raise RuntimeError(f"the run wrote no results.json into {out}")
        summary = json.loads(results_file.read_text())
    summary.pop("config", None)
    return {"engine": engine, "call_s": call_s, "driver_cpu_s": driver_cpu_s,
            "results": summary}


def _own_cpu_s() -> float:
    """CPU seconds used so far by this process, all threads (not its child processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_on_ray(config: Any) -> None:
    """``flower_eec.run.simulation.run_simulation(config)``: Flower's Simulation Engine (Ray)."""
    from flower_eec.run.simulation import run_simulation

    run_simulation(config)


def device_seed(seed: int, server_round: int, device: int) -> int:
    """The seed of a device's shuffling/augmentation stream in a round.

    Mirrors ``flower_eec.clients.device.train`` so that the plain loop computes the same models
    as the ClientApps (the overhead table shows both final accuracies as a check).
    """
    return (seed * 1_000_003 + server_round) * 100_003 + device


def _fedavg_in_place(sums: dict[str, Any], state: dict[str, Any], weight: float) -> None:
    for key, value in state.items():
        contribution = value.double() * weight
        if key in sums:
            sums[key] += contribution
        else:
            sums[key] = contribution


def _child_plain(config_json: str, threads: int) -> dict[str, Any]:
    """FedAvg as a plain PyTorch loop in this process (no Flower, no Ray)."""
    import torch

    from flower_eec.core.learning import evaluate, train_epochs
    from flower_eec.run.config import from_json
    from flower_eec.run.devices import build_device_model
    from flower_eec.run.federated import federated_data

    torch.set_num_threads(threads)
    config = from_json(config_json)
    t, n = config.train, config.topology.num_devices
    started = time.perf_counter()
    data = federated_data(config)
    data_s = time.perf_counter() - started

    loop_started = time.perf_counter()
    torch.manual_seed(config.seed)
    build_device_model(config, data, "cnn3")  # experiment.run builds its evaluator model first
    model = build_device_model(config, data, "cnn3")
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    test = data.global_test()
    rounds: list[dict[str, Any]] = []
    for server_round in range(1, t.rounds + 1):
        round_started = time.perf_counter()
        sizes = [len(idx) for idx in data.train_indices]
        total = float(sum(sizes))
        sums: dict[str, Any] = {}
        for device in range(n):
            model.load_state_dict(global_state)
            shard = data.device_train(device)
            generator = torch.Generator().manual_seed(
                device_seed(config.seed, server_round, device))
            train_epochs(model, shard, epochs=t.local_epochs, batch_size=t.batch_size,
                         lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                         augmented=config.data.augment, cutout=config.data.cutout,
                         generator=generator)
            _fedavg_in_place(sums, model.state_dict(), sizes[device] / total)
        global_state = {
            key: (value.round() if not global_state[key].is_floating_point() else value
                  ).to(global_state[key].dtype)
            for key, value in sums.items()
        }
        record: dict[str, Any] = {"round": server_round}
        if server_round % config.eval.every == 0 or server_round == t.rounds:
            model.load_state_dict(global_state)
            record["cloud"] = evaluate(model, test, config.eval.batch_size)
        record["wall_s"] = time.perf_counter() - round_started
        rounds.append(record)
    loop_s = time.perf_counter() - loop_started
    return {"threads": threads, "data_s": data_s, "loop_s": loop_s,
            "total_s": data_s + loop_s, "rounds": rounds}


def _child_central(config_json: str, threads: int) -> dict[str, Any]:
    """The cnn3 trained centrally on the union of all device shards, evaluated every epoch."""
    import torch

    from flower_eec.core.learning import Images, evaluate, train_epochs
    from flower_eec.run.config import from_json
    from flower_eec.run.devices import build_device_model
    from flower_eec.run.federated import federated_data

    torch.set_num_threads(threads)
    config = from_json(config_json)
    t = config.train
    started = time.perf_counter()
    data = federated_data(config)
    shards = [data.device_train(d) for d in range(config.topology.num_devices)]
    union = Images(torch.cat([s.x for s in shards]), torch.cat([s.y for s in shards]),
                   data.dataset.mean, data.dataset.std)
    test = data.global_test()
    data_s = time.perf_counter() - started

    loop_started = time.perf_counter()
    torch.manual_seed(config.seed)
    build_device_model(config, data, "cnn3")  # same initial weights as the federated runs
    model = build_device_model(config, data, "cnn3")
    epochs: list[dict[str, Any]] = []
    for epoch in range(1, t.rounds + 1):
        epoch_started = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        train = train_epochs(model, union, epochs=t.local_epochs, batch_size=t.batch_size,
                             lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                             augmented=config.data.augment, cutout=config.data.cutout,
                             generator=generator)
        metrics = evaluate(model, test, config.eval.batch_size)
        epochs.append({"round": epoch, "cloud": metrics, **train,
                       "wall_s": time.perf_counter() - epoch_started})
    loop_s = time.perf_counter() - loop_started
    return {"threads": threads, "examples": len(union), "data_s": data_s, "loop_s": loop_s,
            "total_s": data_s + loop_s, "rounds": epochs}


def _child_ray(num_actors: int) -> dict[str, Any]:
    """Ray start-up as Flower does it: ``ray.init`` (no dashboard), actors up, shutdown."""
    import ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    init_s = time.perf_counter() - started

    @ray.remote(num_cpus=1)
    class Probe:
        def ping(self) -> int:
            return os.getpid()

    actors_started = time.perf_counter()
    actors = [Probe.remote() for _ in range(num_actors)]  # type: ignore[attr-defined]
    ray.get([a.ping.remote() for a in actors])
    actors_s = time.perf_counter() - actors_started
    shutdown_started = time.perf_counter()
    ray.shutdown()
    shutdown_s = time.perf_counter() - shutdown_started
    return {"init_s": init_s, "actors_s": actors_s, "num_actors": num_actors,
            "shutdown_s": shutdown_s, "total_s": time.perf_counter() - started}


CHILDREN = ("_flower", "_plain", "_central", "_ray")


def child_main(argv: Sequence[str]) -> None:
    """Entry point of a measurement process: run one thing, write its JSON to ``--result``."""
    parser = argparse.ArgumentParser(prog="foundation.py (child)")
    parser.add_argument("kind", choices=CHILDREN)
    parser.add_argument("--config-json", default="")
    parser.add_argument("--engine", default="simulation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    if args.kind == "_flower":
        out = _child_flower(args.config_json, args.engine)
    elif args.kind == "_plain":
        out = _child_plain(args.config_json, args.threads)
    elif args.kind == "_central":
        out = _child_central(args.config_json, args.threads)
    else:
        out = _child_ray(args.actors)
    Path(args.result).write_text(json.dumps(out, indent=1))


class ChildFailed(RuntimeError):
    """A measurement process failed or ran out of time."""


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (zeros where missing)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_cpus(interval: float = 1.0) -> float:
    """How many CPUs were busy, on average, over the next ``interval`` seconds."""
    busy0, total0 = _cpu_ticks()
    time.sleep(interval)
    busy1, total1 = _cpu_ticks()
    if total1 <= total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def wait_until_quiet(max_wait: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until other work uses < ``threshold`` CPUs.

    The machine may be shared (other test runs); a measurement that starts while another
    process is busy is slower for reasons that have nothing to do with what is measured.
    Returns (seconds waited, busy CPUs in the last sample).
    """
    started = time.perf_counter()
    busy = busy_cpus()
    while busy >= threshold and time.perf_counter() - started < max_wait:
        busy = busy_cpus(2.0)
    return time.perf_counter() - started, busy


QUIET_WAIT = {"max_s": 0.0}


def run_child(args: list[str], label: str, workdir: Path, timeout: float) -> dict[str, Any]:
    """Run this script's ``args`` in a fresh process (own process group); return its JSON.

    ``process_s`` is the child's whole life, Python start-up and imports included;
    ``busy_cpus_during`` is the whole machine's mean CPU use meanwhile (this run included).
    """
    result = workdir / f"{label}.json"
    log = workdir / f"{label}.log"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(SCRIPT), *args, "--result", str(result)]
    waited, busy_before = wait_until_quiet(QUIET_WAIT["max_s"]) if QUIET_WAIT["max_s"] else (
        0.0, busy_cpus(0.5))
    print(f"  [{time.strftime('%H:%M:%S')}] {label} (waited {waited:.0f} s for a quiet machine; "
          f"{busy_before:.2f} CPUs busy) ...", flush=True)
    ticks_before = _cpu_ticks()
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ChildFailed(f"{label}: no result within {timeout:.0f} s (stopped)") from None
    process_s = time.perf_counter() - started
    ticks_after = _cpu_ticks()
    span = ticks_after[1] - ticks_before[1]
    busy_during = ((ticks_after[0] - ticks_before[0]) / span * (os.cpu_count() or 1)
                   if span > 0 else 0.0)
    if code != 0 or not result.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise ChildFailed(f"{label}: exit code {code}; last lines of {log}:\n{tail}")
    out = json.loads(result.read_text())
    out.update(process_s=process_s, waited_for_quiet_s=waited, busy_cpus_before=busy_before,
               busy_cpus_during=busy_during)
    print(f"  [{time.strftime('%H:%M:%S')}] {label} done in {process_s:.1f} s "
          f"(machine: {busy_during:.2f} CPUs busy on average)", flush=True)
    return out


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child we started and everything in its process group (Ray's workers included)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals, or ``-``."""
    return "-" if value is None else f"{100 * value:.2f}"


def secs(value: float | None) -> str:
    """Seconds with one decimal, or ``-``."""
    return "-" if value is None else f"{value:.1f}"


def cloud_curve(rounds: list[dict[str, Any]]) -> dict[int, float]:
    """Round -> cloud accuracy, for the rounds that were evaluated."""
    return {int(r["round"]): float(r["cloud"]["accuracy"]) for r in rounds
            if "accuracy" in r.get("cloud", {})}


def environment() -> dict[str, Any]:
    """Versions and machine, for the record."""
    from importlib.metadata import version

    return {"python": platform.python_version(), "flwr": version("flwr"),
            "torch": version("torch"), "ray": version("ray"), "cpus": os.cpu_count(),
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_at_start": os.getloadavg()}


def write_outputs(part: str, markdown: str, raw: dict[str, Any], folder: Path) -> None:
    """Print the tables; write them and the raw numbers into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"foundation_{part}.md").write_text(markdown + "\n")
    (folder / f"foundation_{part}.json").write_text(json.dumps(raw, indent=1) + "\n")
    print("\n" + markdown + "\n", flush=True)
    print(f"wrote {folder / f'foundation_{part}.md'} and .json", flush=True)


# --------------------------------------------------------------------------------------------
# Part: accuracy
# --------------------------------------------------------------------------------------------


def part_accuracy(args: argparse.Namespace, workdir: Path) -> None:
    """FedAvg and HierFAVG on the cpu profile next to central training on the devices' union."""
    from flower_eec.run.config import resolve, to_dict, to_json

    configs = {m: resolve(None, accuracy_overrides(m, args.data_root, args.rounds,
                                                   args.full_eval)) for m in METHODS}
    shared = ("data", "topology", "train", "seed")
    for key in shared:
        a, b = (to_dict(configs[m])[key] for m in METHODS)
        if key == "train":  # edge_rounds only matters to HierFAVG
            a, b = ({k: v for k, v in x.items() if k != "edge_rounds"} for x in (a, b))
        if a != b:
            raise SystemExit(f"fedavg and hierfavg differ in '{key}': {a} vs {b}")
    base = configs["fedavg"]
    rounds = base.train.rounds
    print(f"accuracy: cpu profile, {base.topology.num_devices} devices, "
          f"{base.topology.num_edges} edges, {rounds} rounds, engine {args.engine}", flush=True)

    runs: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        runs[method] = run_child(["_flower", "--config-json", to_json(configs[method]),
                                  "--engine", args.engine], f"accuracy-{method}", workdir,
                                 args.timeout)
    central = run_child(["_central", "--config-json", to_json(base), "--threads",
                         str(args.central_threads)], "accuracy-central", workdir, args.timeout)

    curves = {m: cloud_curve(runs[m]["results"]["rounds"]) for m in METHODS}
    curves["central"] = cloud_curve(central["rounds"])
    columns = [*METHODS, "central"]
    rows: list[list[Any]] = [[r, *(pct(curves[c].get(r)) for c in columns)]
                             for r in range(1, rounds + 1)]
    finals = {c: curves[c].get(rounds) for c in columns}
    bests = {c: max(curves[c].values()) if curves[c] else None for c in columns}
    walls = {m: runs[m]["call_s"] for m in METHODS}
    walls["central"] = central["total_s"]
    rows.append(["**final**", *(f"**{pct(finals[c])}**" for c in columns)])
    rows.append(["best", *(pct(bests[c]) for c in columns)])
    rows.append(["wall time (s)", *(secs(walls[c]) for c in columns)])
    engine = ("Flower Simulation Engine (Ray, `flower_eec.run.simulation.run_simulation`)"
              if args.engine == "simulation" else "in-process LocalGrid (no Ray)")
    d, tp, tr = base.data, base.topology, base.train
    call = "`run_simulation` call" if args.engine == "simulation" else "`experiment.run` call"
    eval_note = ("edges and devices evaluated too (`--full-eval`)" if args.full_eval else
                 "`eval.edges=false eval.devices=false`: only the cloud model is evaluated")
    union = central["examples"]
    breakdown = table(
        ["", "FedAvg", "HierFAVG"],
        [[f"{call} (s)", *(secs(runs[m]["call_s"]) for m in METHODS)],
         ["ServerApp loop, results.json total_wall_s (s)",
          *(secs(runs[m]["results"]["final"]["total_wall_s"]) for m in METHODS)],
         ["sum of device compute_s over rounds (s)",
          *(secs(sum(r["timing"]["device_compute_s"] for r in runs[m]["results"]["rounds"]))
            for m in METHODS)],
         ["sum of server_s (aggregation, evaluation) (s)",
          "not recorded", secs(sum(r["timing"]["server_s"]
                                   for r in runs["hierfavg"]["results"]["rounds"]))],
         ["round 1 wall (s)", *(secs(runs[m]["results"]["rounds"][0]["wall_s"])
                                for m in METHODS)],
         ["mean wall of later rounds (s)", *(secs(_mean_later(runs[m]["results"]["rounds"]))
                                             for m in METHODS)],
         [f"machine CPUs busy during the run (mean, of {os.cpu_count()})",
          *(f"{runs[m]['busy_cpus_during']:.2f}" for m in METHODS)]])
    markdown = "\n".join([
        "## Cloud test accuracy (%) per round: FedAvg, HierFAVG and central training",
        "",
        f"Profile `cpu`: CIFAR-10, {d.subset:.0%} stratified subset ({union} training images), "
        f"{d.partition} alpha {d.alpha}, {tp.num_devices} devices, {tp.num_edges} edges "
        f"(HierFAVG; edge_rounds {configs['hierfavg'].train.edge_rounds}), {rounds} rounds, "
        f"local_epochs {tr.local_epochs}, batch {tr.batch_size}, SGD lr {tr.lr} momentum "
        f"{tr.momentum}, augmentation {'on' if d.augment else 'off'}, `cnn3` on every tier, "
        f"seed {base.seed}. Accuracy on the full CIFAR-10 test set (10,000 images).",
        "",
        f"FedAvg and HierFAVG ran on the {engine}; {eval_note}. `central` is the same `cnn3` "
        f"(same initial weights) trained on the union of all device shards, one epoch per round "
        "(a fresh SGD optimiser each epoch, as a device gets each round), "
        f"in one process with {args.central_threads} torch thread(s); its wall time includes "
        f"loading the data. Federated wall time is the whole {call} (data loading included"
        f"{', Ray start-up too' if args.engine == 'simulation' else ''}).",
        "",
        table(["round", "FedAvg", "HierFAVG", "central"], rows),
        "",
        "Where the federated wall time goes:",
        "",
        breakdown,
    ])
    raw = {"environment": environment(), "engine": args.engine, "full_eval": args.full_eval,
           "configs": {m: to_dict(configs[m]) for m in METHODS}, "runs": runs,
           "central": central, "curves": curves}
    write_outputs("accuracy", markdown, raw, Path(args.results_dir))


def _mean_later(rounds: list[dict[str, Any]]) -> float | None:
    later = [float(r["wall_s"]) for r in rounds[1:]]
    return sum(later) / len(later) if later else None


# --------------------------------------------------------------------------------------------
# Part: overhead
# --------------------------------------------------------------------------------------------


def _overhead_row(num_devices: int, rounds: int, args: argparse.Namespace,
                  workdir: Path) -> dict[str, Any]:
    from flower_eec.run.config import resolve, to_json

    config = resolve(None, overhead_overrides(num_devices, rounds, args.data_root,
                                              args.subset))
    config_json = to_json(config)
    label = f"overhead-{num_devices}dev-{rounds}r"
    timeout = args.timeout_1000 if num_devices >= 1000 else args.timeout
    repeats = 1 if num_devices >= 1000 else max(1, args.repeat)
    flowers: list[dict[str, Any]] = []
    plains: dict[int, list[dict[str, Any]]] = {}
    for attempt in range(1, repeats + 1):
        flowers.append(run_child(["_flower", "--config-json", config_json, "--engine",
                                  "simulation"], f"{label}-flower-{attempt}", workdir, timeout))
        for threads in sorted({args.plain_threads, 1}, reverse=True):
            plains.setdefault(threads, []).append(run_child(
                ["_plain", "--config-json", config_json, "--threads", str(threads)],
                f"{label}-plain-{threads}t-{attempt}", workdir, timeout))
    # The fastest of the repeats: the machine may be shared, and noise only ever adds time.
    flower = min(flowers, key=lambda run: run["call_s"])
    flower["all_call_s"] = [run["call_s"] for run in flowers]
    plain = {}
    for threads, runs in plains.items():
        plain[threads] = min(runs, key=lambda run: run["total_s"])
        plain[threads]["all_total_s"] = [run["total_s"] for run in runs]
    summary = flower["results"]
    flower_rounds = summary["rounds"]
    return {
        "devices": num_devices, "rounds": rounds, "config": json.loads(config_json),
        "flower": flower, "plain": plain,
        "flower_call_s": flower["call_s"],
        "flower_loop_s": summary["final"]["total_wall_s"],
        "flower_device_compute_s": sum(r["timing"]["device_compute_s"] for r in flower_rounds),
        "flower_device_compute_later_s": sum(r["timing"]["device_compute_s"]
                                             for r in flower_rounds[1:]),
        "flower_exchange_s": sum(r["timing"]["exchange_s"] for r in flower_rounds),
        "flower_final_accuracy": summary["final"]["cloud_accuracy"],
        "flower_round1_s": flower_rounds[0]["wall_s"],
        "flower_later_round_s": _mean_later(flower_rounds),
    }


def part_overhead(args: argparse.Namespace, workdir: Path) -> None:
    """Flower simulation vs a plain PyTorch loop, same FedAvg computation."""
    print(f"overhead: FedAvg, {args.overhead_rounds} rounds at {args.devices} devices"
          + ("" if args.skip_1000 else f", {args.rounds_1000} round(s) at 1000 devices "
                                        "(1 if that runs out of time)"),
          flush=True)
    ray_startup: dict[str, Any] | None = None
    try:
        ray_startup = run_child(["_ray", "--actors", "2"], "ray-startup", workdir, 300)
    except ChildFailed as exc:
        print(f"  Ray start-up probe failed: {exc}", flush=True)
    rows: list[dict[str, Any]] = []
    for n in args.devices:
        rows.append(_overhead_row(n, args.overhead_rounds, args, workdir))
    not_run = ""
    if args.skip_1000:
        not_run = "1,000 devices: not run (`--skip-1000`)."
    else:
        for rounds in dict.fromkeys((args.rounds_1000, 1)):
            try:
                rows.append(_overhead_row(1000, rounds, args, workdir))
                break
            except ChildFailed as exc:
                failure = str(exc).splitlines()[0]
                not_run += f"1,000 devices with {rounds} round(s) did not finish: {failure}. "
                print(f"  {failure}", flush=True)

    table_rows = []
    detail_rows = []
    for row in rows:
        best_threads = min(row["plain"], key=lambda k: row["plain"][k]["total_s"])
        plain = row["plain"][best_threads]
        row["plain_best_threads"] = best_threads
        messages = row["devices"] * row["rounds"]
        table_rows.append([
            row["devices"], row["rounds"], secs(row["flower_call_s"]),
            f"{secs(plain['total_s'])} ({best_threads} thr)",
            f"**{row['flower_call_s'] / plain['total_s']:.1f}x**",
            secs(row["flower_loop_s"]), secs(plain["loop_s"]),
            f"{row['flower_loop_s'] / plain['loop_s']:.1f}x",
            " / ".join(f"{secs(row['plain'][k]['total_s'])}" for k in sorted(row["plain"])),
        ])
        plain_acc = plain["rounds"][-1].get("cloud", {}).get("accuracy")
        detail_rows.append([
            row["devices"], row["rounds"],
            secs(row["flower_call_s"] - row["flower_loop_s"]),
            secs(row["flower_round1_s"]), secs(row["flower_later_round_s"]),
            secs(_mean_later(plain["rounds"])),
            f"{1000 * row['flower_device_compute_s'] / messages:.1f}",
            (f"{1000 * row['flower_device_compute_later_s'] / (messages - row['devices']):.1f}"
             if row["rounds"] > 1 else "-"),
            f"{1000 * plain['loop_s'] / messages:.1f}",
            secs(row["flower_exchange_s"]),
            secs(row["flower"]["driver_cpu_s"]),
            f"{row['flower']['busy_cpus_during']:.2f}",
            pct(row["flower_final_accuracy"]), pct(plain_acc),
        ])
    threads = sorted({args.plain_threads, 1})
    base = rows[0]["config"] if rows else {}
    examples = (f"a {base['data']['subset']:.0%} stratified CIFAR-10 subset, IID split"
                if base else "")
    ray_line = ("Ray start-up on its own (fresh process: `ray.init` without dashboard, 2 "
                "one-CPU actors up and answering, `ray.shutdown`): "
                f"init {secs(ray_startup['init_s'])} s + actors {secs(ray_startup['actors_s'])} s"
                f" + shutdown {secs(ray_startup['shutdown_s'])} s = "
                f"**{secs(ray_startup['total_s'])} s**." if ray_startup else
                "Ray start-up on its own: the probe failed (see the log).")
    big = [r for r in rows if r["devices"] >= 1000]
    thousand = not_run or "1,000 devices: run, with the row's rounds, once (not repeated)."
    if big and big[0]["rounds"] < args.overhead_rounds:
        thousand += (" With fewer rounds than the other rows, its ratio spreads the fixed "
                     "start-up over fewer rounds, so it is not comparable row by row.")
    cpus = os.cpu_count()
    markdown = "\n".join([
        "## Orchestration overhead: Flower simulation vs plain PyTorch, same FedAvg computation",
        "",
        f"FedAvg, `cnn3`, {examples} (the same 5,000 examples at every device count), "
        f"local_epochs 1, batch {base.get('train', {}).get('batch_size', '-')}, lr "
        f"{base.get('train', {}).get('lr', '-')}, no device-side evaluation "
        "(`eval.devices=false`), one central evaluation on the full CIFAR-10 test set after the "
        "last round in both. Flower: `flower_eec.run.simulation.run_simulation` "
        f"on Ray: {cpus} CPUs, 1 CPU and 1 torch thread per ClientApp actor, "
        f"so {cpus} actors train in parallel. Plain: one process, a loop over devices, run with "
        f"{' and '.join(str(t) for t in threads)} torch thread(s); the faster counts. Each "
        f"measurement below 1,000 devices ran {max(1, args.repeat)} time(s), the fastest counts "
        "(all times are in the JSON). Same "
        "initial weights and per-device seeds, so both compute the same model: compare the "
        "final accuracies below.",
        "",
        table(["devices", "rounds", "Flower simulation s", "plain PyTorch s", "ratio",
               "Flower in-run s", "plain loop s", "in-run ratio",
               f"plain s with {' / '.join(str(t) for t in threads)} thread(s)"], table_rows),
        "",
        "- `Flower simulation s`: the whole `run_simulation` call: Ray start-up, actors, the "
        "ServerApp loading the data, the rounds, Ray shutdown. `plain PyTorch s`: loading the "
        "data once plus the loop. Neither counts the Python interpreter's start-up and imports.",
        "- `Flower in-run s`: results.json `total_wall_s`, from the ServerApp's strategy start to "
        "its end (all rounds and the evaluation); `plain loop s` excludes data loading.",
        "- What the ratio contains: Ray start-up and shutdown; each actor process importing torch "
        "and flower_eec and loading CIFAR-10 on its first message (round 1); per message, "
        "Flower's in-memory link state and the Simulation Engine's polling threads, serialising "
        "the weights to and from the actor, and the ClientApp rebuilding the model; against "
        f"that, Flower trains on {cpus} actors at once.",
        f"- {ray_line}",
        f"- {thousand}",
        "",
        "Where the Flower time goes:",
        "",
        table(["devices", "rounds", "outside the loop s", "Flower round 1 s",
               "Flower later rounds s (mean)", "plain later rounds s (mean)",
               "ClientApp compute per message ms", "same, rounds >= 2 ms",
               "plain per device-round ms",
               "sum send_and_receive s", "driver process CPU s", "CPUs busy (Flower run)",
               "Flower final acc %", "plain final acc %"], detail_rows),
        "",
        "`outside the loop` = simulation call minus in-run time (Ray start/stop, the "
        "ServerApp's data loading). `ClientApp compute per message` is each ClientApp's own "
        "measured time (config and data lookup, model build, weight loading, training) averaged "
        "over all train messages (round 1 includes each actor's imports and data loading); the "
        "plain loop's figure is its loop time per device and round. "
        "`driver process CPU s` is the CPU time of the process that called `run_simulation` "
        "(ServerApp thread, the Simulation Engine's threads, the Ray driver; not the actors), "
        "next to `Flower simulation s` wall time. "
        f"`CPUs busy` is the whole machine's mean use (of {cpus}) during the Flower run, "
        "this run included.",
    ])
    raw = {"environment": environment(), "ray_startup": ray_startup, "rows": rows,
           "not_run": not_run}
    write_outputs("overhead", markdown, raw, Path(args.results_dir))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=[*PARTS, "all"])
    parser.add_argument("--data-root", default=default_data_root(),
                        help="folder with cifar10/ (default: $FLOWER_EEC_DATA)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR),
                        help="where the .md and .json files go (default: benchmarks/results)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="accuracy: rounds (default: the cpu profile's, 20)")
    parser.add_argument("--engine", choices=("simulation", "local"), default="simulation",
                        help="accuracy: Flower Simulation Engine (Ray) or in-process LocalGrid")
    parser.add_argument("--full-eval", action="store_true",
                        help="accuracy: also evaluate edges and devices every round")
    parser.add_argument("--central-threads", type=int, default=os.cpu_count() or 1,
                        help="accuracy: torch threads of the central baseline")
    parser.add_argument("--overhead-rounds", type=int, default=5)
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 100],
                        help="overhead: device counts run with --overhead-rounds")
    parser.add_argument("--subset", type=float, default=0.1,
                        help="overhead: fraction of CIFAR-10 training images shared out")
    parser.add_argument("--rounds-1000", type=int, default=5,
                        help="overhead: rounds of the 1,000-device run")
    parser.add_argument("--repeat", type=int, default=2,
                        help="overhead: runs of each measurement below 1,000 devices; the "
                             "fastest counts (1,000 devices run once)")
    parser.add_argument("--skip-1000", action="store_true", help="overhead: no 1,000 devices")
    parser.add_argument("--plain-threads", type=int, default=os.cpu_count() or 1,
                        help="overhead: torch threads of the plain loop (1 is also measured)")
    parser.add_argument("--quiet-wait", type=float, default=120,
                        help="seconds to wait, at most, for other processes to go quiet before "
                             "each measured run (0: do not wait)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds allowed to one measured run")
    parser.add_argument("--timeout-1000", type=float, default=420,
                        help="seconds allowed to one 1,000-device run")
    args = parser.parse_args(argv)
    args.data_root = str(Path(args.data_root).expanduser().resolve())
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen parts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CHILDREN:
        child_main(argv)
        return
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    args = parse_args(argv)
    QUIET_WAIT["max_s"] = args.quiet_wait
    started = time.perf_counter()
    parts = PARTS if args.part == "all" else (args.part,)
    with tempfile.TemporaryDirectory(prefix="foundation-bench-") as tmp:
        workdir = Path(tmp)
        for part in parts:
            part_started = time.perf_counter()
            if part == "accuracy":
                part_accuracy(args, workdir)
            else:
                part_overhead(args, workdir)
            print(f"part {part}: {time.perf_counter() - part_started:.0f} s", flush=True)
    print(f"total: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
