"""Shared fixtures: Flower's task identity, so that tests can build Messages outside a runtime;
one torch thread per pytest-xdist worker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from flower_eec.grid.flower_internals import task_identity as flower_task_identity

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n auto` starts one worker per core: a worker whose torch used every core would
    # fight the others for them (the in-process grid's server computes in the worker)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Set the task identity that ``Message()`` needs, and restore the previous one afterwards."""
    with flower_task_identity(run_id=1):
        yield
