"""A standard Flower ClientApp: train and evaluate a small CNN, nothing flower-eec specific.

It answers only ``train`` and ``evaluate``. flower-eec asks one node for ``query.describe``,
learns from its error reply that this app does not answer it, and places the nodes by sorted node
id (``Hierarchical(..., discover=False)`` would not ask at all).
"""

from functools import lru_cache

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from flower_eec.data import make_synthetic

app = ClientApp()


def make_model() -> nn.Module:
    """A small CNN for 3x32x32 images and 10 classes."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))


@lru_cache(maxsize=1)
def dataset():  # type: ignore[no-untyped-def]
    """A synthetic dataset, the stand-in for the user's own data."""
    return make_synthetic(num_train=400, num_test=100, seed=0)


def load_shard(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's slice of the dataset."""
    data = dataset()
    pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    x = torch.from_numpy(data.x_train[pid::num]).float() / 255
    return x, torch.from_numpy(data.y_train[pid::num])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One epoch of SGD from the received weights."""
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_shard(context)
    lr = float(msg.content["config"]["lr"])
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    for start in range(0, len(y), 32):
        loss = nn.functional.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    metrics = MetricRecord({"train_loss": float(loss.detach()), "num-examples": len(y)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the received weights on this node's data."""
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_shard(context)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return Message(RecordDict({"metrics": MetricRecord({"accuracy": accuracy,
                                                        "num-examples": len(y)})}),
                   reply_to=msg)
