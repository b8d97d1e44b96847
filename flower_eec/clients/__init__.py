"""Device side, public: per method, a device you register in your own ClientApp with your own
model and data (``device.register(app)``)."""

from flower_eec.clients.device import Device, Knobs, TrainSettings, register
from flower_eec.clients.eclm import ECLMDevice
from flower_eec.clients.fedagg import FedAggDevice
from flower_eec.clients.fedin import FedINDevice
from flower_eec.clients.weights import WeightsDevice
from flower_eec.core.learning import Images

__all__ = ["Device", "ECLMDevice", "FedAggDevice", "FedINDevice", "Images", "Knobs",
           "TrainSettings", "WeightsDevice", "register"]
