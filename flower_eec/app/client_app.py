"""The flower-eec ClientApp: every registered method's device, routed by message type."""

from flwr.clientapp import ClientApp

from flower_eec.clients.device import register
from flower_eec.run.devices import torch_threads
from flower_eec.run.registry import client_devices

app = ClientApp(mods=[torch_threads])
register(app, *client_devices())
