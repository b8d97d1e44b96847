"""FedEEC: FedAgg's agglomerative BSBODP with self-knowledge rectification (SKR).

Wu et al., "Beyond Model Scale Limits: End-Edge-Cloud Federated Learning with Self-Rectified
Knowledge Agglomeration", arXiv 2501.00693 (the journal extension of FedAgg). The SKR formula
was not available: ``losses.skr_target`` is our reconstruction (docs/methods.md, section FedEEC).
Mobile devices and flaky links are FedAgg's and ``Hierarchical``'s (the topology's moves,
dropouts, outages and orphans), so every method meets the same dynamics.
"""

from __future__ import annotations

from typing import Any

from flower_eec.strategies.fedagg import FedAgg


class FedEEC(FedAgg):
    """FedAgg whose distillation targets are rectified: ``skr="upward"`` by default.

    ``upward``: where a parent learns from a child (edge from device, cloud from edge), the
    target is ``skr_target`` (the teacher where it is right, else the student's own knowledge
    where that is right, else the teacher with the true class swapped to the top). ``both``: also
    where a child learns from its parent (edges from the cloud, and devices: their
    ``train.distil`` messages say so). ``off``: FedAgg, pass for pass.

    Parameters are those of ``FedAgg``; its devices are ``FedAggDevice``s.
    """

    def __init__(self, *args: Any, skr: str = "upward", **kwargs: Any) -> None:
        super().__init__(*args, skr=skr, **kwargs)
