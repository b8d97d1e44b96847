"""The ServerApp: FedAgg over devices -> edges -> cloud, each tier with a CNN of its own width.

No weights travel: the devices send bridge codes of their images once, then every tier
distils from its neighbours' logits on those bridge samples.
"""

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from fedagg_app.task import NUM_CLASSES, Net, datasets, evaluate
from flower_eec.models.bridge import load_bridge
from flower_eec.strategies import FedAgg
from flower_eec.topology import Topology

EDGE_WIDTH, CLOUD_WIDTH = 16, 32  # larger than the devices' CNN (width 8)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_fedagg(grid, context)


def run_fedagg(grid: Grid, context: Context) -> Result:
    """Run ``num-rounds`` FedAgg rounds, testing the cloud model after each; returns Flower's
    ``Result`` (the cloud model and every round's metrics)."""
    config = context.run_config
    train, test = datasets(context)
    seed = int(config["seed"])
    torch.manual_seed(seed)  # the same starting edge and cloud models on every run
    strategy = FedAgg(
        topology=Topology(num_devices=int(config["num-devices"]),
                          num_edges=int(config["num-edges"])),
        cloud_model=Net(width=CLOUD_WIDTH), edge_model=Net(width=EDGE_WIDTH),
        bridge=load_bridge(),  # the shipped bridge; the devices load the same one by default
        mean=train.mean, std=train.std,  # the devices normalise with these too
        num_classes=NUM_CLASSES,
        T=float(config["temperature"]), lr=float(config["lr"]),
        batch_size=int(config["batch-size"]), seed=seed)

    def evaluate_cloud(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = Net(width=CLOUD_WIDTH)
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    return strategy.start(grid, ArrayRecord(strategy.cloud_model.state_dict()),
                          num_rounds=int(config["num-rounds"]), evaluate_fn=evaluate_cloud)
