"""A plain Flower app that plugs flower-eec's hierarchical strategy into its ServerApp."""
