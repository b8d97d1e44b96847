"""Shared fixtures: Flower's task identity, so that tests can build Messages outside a runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flower_eec.grid.flower_internals import task_identity as flower_task_identity


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Set the task identity that ``Message()`` needs, and restore the previous one afterwards."""
    with flower_task_identity(run_id=1):
        yield
