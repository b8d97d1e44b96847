"""Pure math on tensors (no Flower, no config): losses, passes, averaging, FedIN QP, ECLM."""
