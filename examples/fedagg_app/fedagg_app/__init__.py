"""A Flower app whose own small CNNs learn its own synthetic images with flower-eec's FedAgg."""
