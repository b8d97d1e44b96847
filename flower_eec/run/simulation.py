"""Run a resolved config on Flower's Simulation Engine (Ray) from Python, as ``flwr run`` would.

Flower's public ``flwr.simulation.run_simulation`` starts both apps with an empty run_config.
So the apps are built here around the config: the ServerApp runs it directly, and the ClientApp
carries it to every node in a mod that gives each call's context the run_config ``config-json``
(what ``flwr run`` would pass) for the duration of the call, so server and devices see exactly
the same settings.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation as flower_run_simulation

from flower_eec import noise
from flower_eec.clients.device import register
from flower_eec.run import experiment
from flower_eec.run.config import Config, to_json
from flower_eec.run.devices import torch_threads
from flower_eec.run.registry import client_devices


class RunConfigMod:
    """A ClientApp mod that hands every call the run's config as its ``context.run_config``.

    The node's own run_config is put back after the call: Flower refuses to store a context
    whose run_config changed.
    """

    def __init__(self, run_config: dict[str, str]) -> None:
        self.run_config = dict(run_config)

    def __call__(self, msg: Message, context: Context,
                 call_next: Callable[[Message, Context], Message]) -> Message:
        own = context.run_config
        context.run_config = dict(self.run_config)
        try:
            return call_next(msg, context)
        finally:
            context.run_config = own


def simulation_apps(config: Config) -> tuple[ServerApp, ClientApp]:
    """Our ServerApp and ClientApp, both bound to ``config``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        experiment.run(grid, config)

    client_app = ClientApp(mods=[RunConfigMod({"config-json": to_json(config)}), torch_threads,
                                 noise.hiding_mod])
    register(client_app, *client_devices())
    return server_app, client_app


def run_simulation(config: Config, verbose: bool = False) -> None:
    """Run ``config`` with one SuperNode per device; results go to ``config.out``."""
    s = config.simulation
    server_app, client_app = simulation_apps(config)
    log(INFO, "Starting Ray with %d SuperNodes (%d CPU%s, %g GPU each); they run the devices",
        config.topology.num_devices, s.client_cpus, "" if s.client_cpus == 1 else "s",
        s.client_gpus)
    flower_run_simulation(server_app=server_app, client_app=client_app,
                          num_supernodes=config.topology.num_devices,
                          backend_config={"client_resources": {"num_cpus": s.client_cpus,
                                                               "num_gpus": s.client_gpus}},
                          verbose_logging=verbose)
