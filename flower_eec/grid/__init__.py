"""Grid plumbing: forwarding, the per-edge view, metering, discovery and the in-process LocalGrid."""
