"""Checkpoints of a run: what its next round needs, saved atomically after rounds, and the
final models in a form anyone can load (``torch.load`` of a state dict)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.common.logger import log

from flower_eec.errors import ConfigError
from flower_eec.run.results import atomic_path

CHECKPOINT = "checkpoint.pt"
MODELS = "models"


@dataclass
class Checkpoint:
    """The state of a run after ``round``: the cloud arrays, the strategy's ``state()``, every
    random generator the server uses, and the results recorded so far."""

    round: int
    cloud: ArrayRecord
    strategy: dict[str, Any]
    rng: dict[str, Any]
    rounds: list[dict[str, Any]]
    notes: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """Python's (Flower's sampling), numpy's and torch's global generators."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(out: Path, checkpoint: Checkpoint) -> None:
    """Write ``out/checkpoint.pt`` (write, then rename: a kill leaves the previous one whole)."""
    content = {"round": checkpoint.round,
               "cloud": checkpoint.cloud.to_torch_state_dict(),
               "strategy": checkpoint.strategy, "rng": checkpoint.rng,
               "rounds": checkpoint.rounds, "notes": checkpoint.notes}
    with atomic_path(out / CHECKPOINT) as path:
        torch.save(content, path)


def load(out: Path) -> Checkpoint:
    """The checkpoint in ``out``.

    Raises:
        ConfigError: There is none, or it cannot be read.
    """
    path = out / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{out} holds no checkpoint ({CHECKPOINT}) to resume from: it is not "
                          "the results folder of a run, or the run saved none "
                          "(checkpoint.every=0)")
    try:
        content = torch.load(path, weights_only=False)
        return Checkpoint(round=int(content["round"]), cloud=ArrayRecord(content["cloud"]),
                          strategy=content["strategy"], rng=content["rng"],
                          rounds=content["rounds"], notes=content["notes"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise ConfigError(f"cannot read the checkpoint {path}: {exc}") from None


def save_models(out: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write each model's state dict as ``out/models/<name>.pt``."""
    folder = out / MODELS
    folder.mkdir(parents=True, exist_ok=True)
    for name, state_dict in models.items():
        with atomic_path(folder / f"{name}.pt") as path:
            torch.save(state_dict, path)
    log(INFO, "Final models saved in %s (%s)", folder, ", ".join(f"{n}.pt" for n in models))
