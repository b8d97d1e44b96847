"""flower-eec: end-edge-cloud federated learning with size-heterogeneous models, on Flower."""

__version__ = "0.1.0"
