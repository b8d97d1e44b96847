"""The Flower apps: ``ServerApp`` and ``ClientApp`` (thin: config -> objects -> start)."""
