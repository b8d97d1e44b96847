"""Device side: what a device does for each message type."""

from flower_eec.clients.device import describe, evaluate_local, train

__all__ = ["describe", "evaluate_local", "train"]
