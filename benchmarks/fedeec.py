"""FedEEC benchmark on the ``cpu`` profile: FedEEC against FedAgg and HierFAVG, static and dynamic.

The same data, topology and rounds as ``benchmarks/fedagg.py`` (CIFAR-10, 20 devices, 4 edges,
20 rounds, Ray through ``flower-eec run``). Each method runs static and dynamic: each round every
device moves to another edge with probability 0.2 and is offline with probability 0.2, and edge 1
is down for rounds 8 to 12 (its devices sit out). SKR ablation: ``off`` is FedAgg, pass for pass
(tests/test_fedeec.py checks it to the bit), so the ``fedagg`` run serves as FedEEC with SKR off;
``fedeec`` is SKR upward (the default) and ``fedeec-skr-both`` both directions. The ``-beta1``
runs repeat FedAgg, FedEEC and FedEEC dynamic at ``fedagg.beta=1``, where FedAgg's curve is smooth.
To tell where the dynamic runs lose accuracy: ``-mobility`` runs move devices and nothing else,
``-clip`` runs cap every distillation step's gradient norm (``fedagg.clip=20``), ``-seed1`` runs
repeat a setting with ``seed=1``. ``benchmarks/fedeec_probe.py`` looks inside one run.

The static ``fedagg`` and ``hierfavg`` runs are those of ``benchmarks/fedagg.py`` (the same
configs), read from ``benchmarks/results/fedagg/``. Results: ``benchmarks/results/fedeec/<run>``,
summary ``benchmarks/results/fedeec_cpu.md`` / ``.json`` / ``.png``.

The committed results were made before two of today's defaults: with the paper's edge-cloud
exchange and beta (``fedagg.edge_cloud=echo fedagg.beta=10`` repeats them); the seeded suites in
``benchmarks/suites/`` hold today's defaults.

Run (from the repository root)::

    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedeec.py --data-root $DATA
    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedeec.py --only fedeec,fedeec-dynamic
    FLWR_TELEMETRY_ENABLED=0 python benchmarks/fedeec.py --report
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedagg import Suite, main  # noqa: E402  (the runner of benchmarks/fedagg.py)

DYNAMIC = ["topology.mobility=0.2", "topology.device_dropout=0.2",
           "topology.edge_outages=[[1,8,12]]"]
CLIP = ["fedagg.clip=20"]
RUNS: dict[str, tuple[str, list[str]]] = {
    "fedeec": ("fedeec", []),
    "fedeec-skr-both": ("fedeec", ["fedeec.skr=both"]),
    "fedagg": ("fedagg", []),
    "hierfavg": ("hierfavg", []),
    "fedeec-dynamic": ("fedeec", DYNAMIC),
    "fedagg-dynamic": ("fedagg", DYNAMIC),
    "hierfavg-dynamic": ("hierfavg", DYNAMIC),
    # beta = 1, where FedAgg's curve is smooth (benchmarks/fedagg.py's fedagg-beta1)
    "fedagg-beta1": ("fedagg", ["fedagg.beta=1"]),
    "fedeec-beta1": ("fedeec", ["fedagg.beta=1"]),
    "fedeec-beta1-dynamic": ("fedeec", ["fedagg.beta=1", *DYNAMIC]),
    # where the dynamic gap comes from: mobility alone, and gradient clipping (fedagg.clip)
    "fedeec-mobility": ("fedeec", ["topology.mobility=0.2"]),
    "fedeec-clip": ("fedeec", CLIP),
    "fedeec-clip-mobility": ("fedeec", [*CLIP, "topology.mobility=0.2"]),
    "fedeec-clip-dynamic": ("fedeec", [*CLIP, *DYNAMIC]),
    "fedagg-clip": ("fedagg", CLIP),
    "fedeec-seed1": ("fedeec", ["seed=1"]),
    "fedeec-mobility-seed1": ("fedeec", ["topology.mobility=0.2", "seed=1"]),
    "fedeec-clip-seed1": ("fedeec", [*CLIP, "seed=1"]),
    "fedeec-clip-mobility-seed1": ("fedeec", [*CLIP, "topology.mobility=0.2", "seed=1"]),
}
PANELS = {
    "static (beta 10)": ["fedeec", "fedeec-skr-both", "fedagg", "hierfavg", "fedeec-clip",
                         "fedagg-clip"],
    "dynamic: moves 0.2, dropout 0.2, edge 1 down r8-12": [
        "fedeec-dynamic", "fedagg-dynamic", "hierfavg-dynamic", "fedeec-clip-dynamic",
        "fedeec-beta1-dynamic"],
    "mobility 0.2 alone, against static": [
        "fedeec", "fedeec-mobility", "fedeec-clip", "fedeec-clip-mobility", "fedeec-seed1",
        "fedeec-mobility-seed1", "fedeec-clip-seed1", "fedeec-clip-mobility-seed1"],
    "beta 1": ["fedagg-beta1", "fedeec-beta1", "fedeec-beta1-dynamic"],
}
FEDEEC = Suite("fedeec", RUNS, "FedEEC, CIFAR-10, cpu profile",
               shared={"fedagg": "fedagg", "hierfavg": "fedagg", "fedagg-beta1": "fedagg"},
               panels=PANELS)

if __name__ == "__main__":
    main(FEDEEC, __doc__)
