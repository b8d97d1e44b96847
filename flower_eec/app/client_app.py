"""The flower-eec ClientApp: every registered method's device, routed by message type."""

from flwr.clientapp import ClientApp

from flower_eec.clients.device import register
from flower_eec.run.registry import methods

app = ClientApp()


def _devices() -> list:
    """One device per protocol (methods that share a device class share its handlers)."""
    chosen: dict[type, object] = {}
    for entry in methods().values():
        device = entry.device()
        chosen.setdefault(type(device), device)
    return list(chosen.values())


register(app, *_devices())  # type: ignore[arg-type]
