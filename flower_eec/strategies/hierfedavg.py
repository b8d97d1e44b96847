"""HierFAVG (Liu et al., ICC 2020, https://arxiv.org/abs/1905.06641): FedAvg at every edge.

The proof that an unmodified Flower strategy serves as a tier of ``Hierarchical``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flower_eec.strategies.hierarchical import Hierarchical
from flower_eec.topology import Topology

MetricsAggregation = Callable[[list[RecordDict], str], MetricRecord]


class HierFedAvg(Hierarchical):
    """``Hierarchical`` with Flower's ``FedAvg`` at every edge.

    FedAvg's own options are taken as FedAvg takes them and given to each edge's FedAvg, which
    applies them to that edge's online devices: ``fraction_train=0.5`` samples half of each
    edge's devices; an edge with fewer online devices than a ``min_*_nodes`` sits that round
    out (the minimums default to 1 here, not FedAvg's 2, as edges are small).

    Devices see the edge round as ``server-round`` (see ``Hierarchical``).

    Parameters
    ----------
    topology : Topology
        Cloud -> edges -> devices.
    edge_rounds : int (default: 1)
        Edge aggregations per cloud aggregation (kappa2).
    evaluate_devices : bool (default: True)
        Ask devices to evaluate the cloud model on their local test split each evaluated
        round (the default of ``fraction_evaluate``: 1.0, or 0.0 when False).
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in ``flwr.serverapp.strategy.FedAvg``, per edge. ``weighted_by_key`` also weighs
        the cloud's average of the edges.
    **kwargs
        Passed to ``Hierarchical`` (``evaluate_edges``, ``evaluate_every``, ``on_round``, ...).
    """

    def __init__(self, topology: Topology, edge_rounds: int = 1, evaluate_devices: bool = True,
                 *, fraction_train: float = 1.0, fraction_evaluate: float | None = None,
                 min_train_nodes: int = 1, min_evaluate_nodes: int = 1,
                 min_available_nodes: int = 1, weighted_by_key: str = "num-examples",
                 arrayrecord_key: str = "arrays", configrecord_key: str = "config",
                 train_metrics_aggr_fn: MetricsAggregation | None = None,
                 evaluate_metrics_aggr_fn: MetricsAggregation | None = None,
                 **kwargs: Any) -> None:
        if fraction_evaluate is None:
            fraction_evaluate = 1.0 if evaluate_devices else 0.0
        edge = FedAvg(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                      min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
                      min_available_nodes=min_available_nodes, weighted_by_key=weighted_by_key,
                      arrayrecord_key=arrayrecord_key, configrecord_key=configrecord_key,
                      train_metrics_aggr_fn=train_metrics_aggr_fn,
                      evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn)
        super().__init__(edge=edge, topology=topology, edge_rounds=edge_rounds,
                         weighted_by_key=weighted_by_key, **kwargs)
