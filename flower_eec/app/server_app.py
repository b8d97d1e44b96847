"""The flower-eec ServerApp: read the run config, run the chosen method, write the results."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flower_eec import noise
from flower_eec.run import experiment
from flower_eec.run.config import from_run_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under ``flwr run .`` and Flower's Deployment Engine. An error ends the run as
    failed (``flwr ls``: ``finished:failed``)."""
    # First: Flower starts Ray while this runs, and Ray's warning on start is one of the known
    # noises. Our own errors (a federation of the wrong size, a bad config) then reach the log
    # as one line, not a traceback (see flower_eec.noise).
    noise.hide()
    experiment.run(grid, from_run_config(context.run_config))
