"""Running the project's own experiments: config, method registry, experiment, results, CLI."""
