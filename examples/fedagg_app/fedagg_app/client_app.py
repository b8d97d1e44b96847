"""The ClientApp: one FedAgg device per SuperNode, with this app's own CNN and data.

FedAggDevice answers FedAgg's messages; every training knob (T, learning rate, batch size, ...)
arrives with each message from the server, so this file only says which model and which images.
"""

from flwr.app import Context
from flwr.clientapp import ClientApp
from torch import nn

from fedagg_app.task import Net, datasets, shard
from flower_eec.clients import FedAggDevice, Images

DEVICE_WIDTH = 8  # the smallest of the three tiers: devices are the weakest machines


def device_model(context: Context) -> nn.Module:
    return Net(width=DEVICE_WIDTH)


def train_data(context: Context) -> Images:
    return shard(datasets(context)[0], context)


def test_data(context: Context) -> Images:
    return shard(datasets(context)[1], context)


app = ClientApp()
FedAggDevice(model_fn=device_model, train_data_fn=train_data,
             test_data_fn=test_data).register(app)
