"""Grid plumbing: forwarding, the per-edge view, metering, discovery, the in-process LocalGrid."""
