"""Run a resolved config on Flower's Simulation Engine (Ray) from Python, as ``flwr run`` would.

The ClientApps read their run_config from an app directory; a temporary one carries the resolved
config as the single key ``config-json``, so server and devices see exactly the same settings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import tomli_w
from flwr.app import Context, RecordDict
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from flower_eec.app.client_app import app as client_app
from flower_eec.app.server_app import app as server_app
from flower_eec.run.config import Config, to_json


def _app_dir(path: Path, run_config: dict[str, str]) -> None:
    project = {
        "project": {"name": "flower-eec-run", "version": "0.0.0"},
        "tool": {"flwr": {"app": {
            "publisher": "flower-eec",
            "components": {"serverapp": "flower_eec.app.server_app:app",
                           "clientapp": "flower_eec.app.client_app:app"},
            "config": run_config,
        }}},
    }
    (path / "pyproject.toml").write_text(tomli_w.dumps(project))


def run_simulation(config: Config, verbose: bool = False) -> None:
    """Run ``config`` with one SuperNode per device; results go to ``config.out``."""
    run_config = {"config-json": to_json(config)}
    s = config.simulation
    backend_config = {"client_resources": {"num_cpus": s.client_cpus, "num_gpus": s.client_gpus}}
    with tempfile.TemporaryDirectory(prefix="flower-eec-") as app_dir:
        _app_dir(Path(app_dir), run_config)
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                          run_config=dict(run_config))
        _run_simulation(num_supernodes=config.topology.num_devices,
                        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app=client_app, server_app=server_app,
                        backend_config=backend_config,  # type: ignore[arg-type]
                        server_app_context=context, app_dir=app_dir,
                        # without is_app, Flower gives the SuperNodes an empty run_config
                        is_app=True, verbose_logging=verbose)
