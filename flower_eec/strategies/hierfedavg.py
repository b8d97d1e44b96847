"""HierFAVG (Liu et al., ICC 2020, https://arxiv.org/abs/1905.06641): FedAvg at every edge.

The proof that an unmodified Flower strategy serves as a tier of ``Hierarchical``.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg

from flower_eec.strategies.hierarchical import Hierarchical
from flower_eec.topology import Topology


class HierFedAvg(Hierarchical):
    """``Hierarchical`` with Flower's ``FedAvg`` over all online devices of each edge.

    Parameters
    ----------
    topology : Topology
        Cloud -> edges -> devices.
    edge_rounds : int (default: 1)
        Edge aggregations per cloud aggregation (kappa2).
    evaluate_devices : bool (default: True)
        Ask devices to evaluate the cloud model on their local test split each evaluated round.
    **kwargs
        Passed to ``Hierarchical`` (``evaluate_edges``, ``evaluate_every``, ``on_round``, ...).
    """

    def __init__(self, topology: Topology, edge_rounds: int = 1, evaluate_devices: bool = True,
                 **kwargs: Any) -> None:
        edge = FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1,
                      fraction_evaluate=1.0 if evaluate_devices else 0.0)
        super().__init__(edge=edge, topology=topology, edge_rounds=edge_rounds, **kwargs)
