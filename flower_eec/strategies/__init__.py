"""Server side: the tiers. ``Hierarchical`` nests any Flower strategy per edge."""

from flower_eec.grid.edge import EdgeGrid
from flower_eec.strategies.aggregation import weighted_average
from flower_eec.strategies.eclm import ECLM, EclmRoundReport
from flower_eec.strategies.fedagg import BridgeEdge, FedAgg
from flower_eec.strategies.fedeec import FedEEC
from flower_eec.strategies.fedin import FedIN, HierFedIN
from flower_eec.strategies.hierarchical import Hierarchical, RoundReport
from flower_eec.strategies.hierfedavg import HierFedAvg

__all__ = [
    "ECLM",
    "BridgeEdge",
    "EclmRoundReport",
    "EdgeGrid",
    "FedAgg",
    "FedEEC",
    "FedIN",
    "HierFedIN",
    "HierFedAvg",
    "Hierarchical",
    "RoundReport",
    "weighted_average",
]
