"""examples/fedagg_app, a Flower app with its own CNNs and data, runs flower-eec's FedAgg:
in process (LocalGrid) and under `flwr run` (SuperLink + Ray)."""

from __future__ import annotations

import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import FLWR, flower_env, stop_processes_mentioning
from flwr.app import Context, Message, RecordDict, UserConfig

from flower_eec.grid.local import LocalGrid
from flower_eec.protocol import names

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "fedagg_app"
ROUND_LINE = re.compile(r"\[ROUND (\d+)/(\d+)\] (\d+) devices, (\d+) failed, cloud \{'accuracy'")


@pytest.fixture()
def fedagg_app(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(APP_DIR))
    from fedagg_app import client_app, server_app, task

    yield client_app, server_app, task
    for name in [m for m in sys.modules if m.startswith("fedagg_app")]:
        del sys.modules[name]


def test_own_model_and_data_under_fedagg(  # type: ignore[no-untyped-def]
        fedagg_app, caplog: pytest.LogCaptureFixture) -> None:
    """Three rounds on 4 devices and 2 edges: every device answers every round with the
    strategy's knobs, and the cloud model is tested on the app's own test set."""
    client_app, server_app, task = fedagg_app
    run_config: UserConfig = {"num-rounds": 3, "num-devices": 4, "num-edges": 2,
                              "num-train": 160, "num-test": 80, "seed": 0,
                              "temperature": 2.5, "lr": 0.02, "batch-size": 16}
    distil_configs: list[dict] = []

    def spied(message: Message, context: Context) -> Message:
        if message.metadata.message_type == names.DISTIL:
            distil_configs.append(dict(message.content[names.CONFIG]))
        return client_app.app(message, context)

    grid = LocalGrid(spied, num_nodes=4, run_config=run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)
    with caplog.at_level(logging.INFO, logger="flwr"):
        result = server_app.run_fedagg(grid, context)

    rounds = [tuple(map(int, m.groups())) for m in ROUND_LINE.finditer(caplog.text)]
    assert rounds == [(r, 3, 4, 0) for r in (1, 2, 3)]  # round, of, devices, failed
    # every device's reply was usable: the edges learnt from all 160 training images
    assert all(result.train_metrics_clientapp[r]["num-examples"] == 160 for r in (1, 2, 3))
    # the devices tested the models they keep, on their shares of the 80 test images
    assert all(result.evaluate_metrics_clientapp[r]["num-examples"] == 80 for r in (1, 2, 3))
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2, 3]
    cloud_losses = [result.evaluate_metrics_serverapp[r]["loss"] for r in (0, 1, 2, 3)]
    assert all(math.isfinite(loss) for loss in cloud_losses)
    assert cloud_losses[3] < cloud_losses[0]  # the cloud learnt from the devices' knowledge
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in result.evaluate_metrics_serverapp.values())
    # what the server was configured with is what every device trained with
    assert len(distil_configs) == 3 * 4
    assert {(c["T"], c["lr"], c["batch-size"]) for c in distil_configs} == {(2.5, 0.02, 16)}
    # the tiers keep models of their own sizes: device 8, edges 16, cloud 32 channels wide
    [kept] = grid.contexts[1000].state.array_records.values()  # the model a device keeps
    assert kept.to_torch_state_dict()["head.weight"].shape == (task.NUM_CLASSES, 4 * 8)
    cloud = result.arrays.to_torch_state_dict()
    assert cloud["head.weight"].shape == (task.NUM_CLASSES, 4 * 32)


def test_the_dataset_is_deterministic_with_its_own_statistics(  # type: ignore[no-untyped-def]
        fedagg_app) -> None:
    _, _, task = fedagg_app
    (x1, y1), (x2, y2) = task.make_images(64, seed=3), task.make_images(64, seed=3)
    assert x1.dtype == torch.uint8 and x1.shape == (64, 3, 32, 32)
    assert bool((x1 == x2).all()) and bool((y1 == y2).all())
    train, test = task.load_data(200, 50, 0)
    assert len(train) == 200 and len(test) == 50 and train.mean == test.mean
    assert all(0.0 < s < 1.0 for s in (*train.mean, *train.std))


@pytest.mark.e2e
def test_flwr_run_of_the_example(tmp_path: Path) -> None:
    """`flwr run examples/fedagg_app` with nothing installed but flower-eec: Flower loads the app
    from its bundle. Every round completes on 4 SuperNodes with no failed device."""
    home = tmp_path / "flwr-home"
    command = [FLWR, "run", str(APP_DIR), "--stream",
               "--federation-config", "num-supernodes=4",
               "--run-config", "num-rounds=2 num-train=400 num-test=100"]
    try:
        done = subprocess.run(command, cwd=tmp_path, env=flower_env(home), capture_output=True,
                              text=True, timeout=600)
    finally:
        stopped = stop_processes_mentioning(str(home))
    output = done.stdout + done.stderr
    assert stopped, "flwr run should have started a SuperLink under this test's FLWR_HOME"
    assert done.returncode == 0, output[-3000:]
    rounds = [tuple(map(int, m.groups())) for m in ROUND_LINE.finditer(output)]
    assert rounds == [(1, 2, 4, 0), (2, 2, 4, 0)], output[-3000:]
    assert "finished:failed" not in output
