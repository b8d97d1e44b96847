"""The flower-eec ServerApp: read the run config, run the chosen method, write the results."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flower_eec.run import experiment
from flower_eec.run.config import from_run_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under ``flwr run .`` and ``flower-eec run``."""
    experiment.run(grid, from_run_config(context.run_config))
