"""The ServerApp of an existing Flower project, with edges and a cloud from flower-eec."""

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from existing_app.client_app import make_model
from flower_eec.strategies import HierFedAvg
from flower_eec.topology import Topology

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_hierfavg(grid, context)


def run_hierfavg(grid: Grid, context: Context) -> Result:
    """HierFAVG over ``num-devices`` SuperNodes split into ``num-edges`` edges; returns Flower's
    ``Result``."""
    strategy = HierFedAvg(topology=Topology(num_devices=int(context.run_config["num-devices"]),
                                            num_edges=int(context.run_config["num-edges"])),
                          edge_rounds=int(context.run_config["edge-rounds"]))
    return strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model().state_dict()),
                          num_rounds=int(context.run_config["num-rounds"]),
                          train_config=ConfigRecord({"lr": float(context.run_config["lr"])}))
