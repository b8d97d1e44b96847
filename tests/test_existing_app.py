"""A plain Flower app (examples/existing_app) runs flower-eec's HierFedAvg unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict, UserConfig

from flower_eec.grid.local import LocalGrid

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "existing_app"


@pytest.fixture()
def existing_app(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(APP_DIR))
    from existing_app import client_app, server_app

    yield client_app, server_app
    for name in [m for m in sys.modules if m.startswith("existing_app")]:
        del sys.modules[name]


def test_standard_client_app_under_hierfedavg(existing_app) -> None:  # type: ignore[no-untyped-def]
    client_app, server_app = existing_app
    run_config: UserConfig = {"num-rounds": 3, "num-devices": 4, "num-edges": 2,
                              "edge-rounds": 2, "lr": 0.5}
    grid = LocalGrid(client_app.app, num_nodes=4, run_config=run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)

    result = server_app.run_hierfavg(grid, context)

    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2, 3]
    first, last = result.train_metrics_clientapp[1], result.train_metrics_clientapp[3]
    assert last["train_loss"] < first["train_loss"]
    assert 0.0 <= result.evaluate_metrics_clientapp[3]["accuracy"] <= 1.0
