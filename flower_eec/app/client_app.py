"""The flower-eec ClientApp: every registered method's device, routed by message type."""

from flwr.clientapp import ClientApp

from flower_eec.clients.device import register
from flower_eec.run.registry import client_devices

app = ClientApp()
register(app, *client_devices())
