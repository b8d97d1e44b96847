"""Pure math on tensors (no Flower, no config): losses, passes, averaging, the FedIN QP, ECLM routing."""
