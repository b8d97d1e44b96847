"""Starting a method's strategy so that its run can be resumed: checkpoints after rounds, the
run going on from the last one (``config.resume``), the final models saved.

Hierarchical strategies run their own loop from any round (``Hierarchical.start``'s
``first_round``); flat ones (Flower's ``FedAvg``, ``FedIN``) run ``flat_loop``, the round of
Flower's ``Strategy.start`` from any round. A strategy's ``state()`` / ``load_state()``, where
it has them, carry what it keeps across rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flower_eec import progress
from flower_eec.errors import ConfigError
from flower_eec.protocol.knobs import refuse_clashes
from flower_eec.run import checkpoint
from flower_eec.run.config import Config
from flower_eec.run.results import Recorder
from flower_eec.strategies.hierarchical import Hierarchical, RoundReport

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def resume_point(config: Config, recorder: Recorder) -> checkpoint.Checkpoint | None:
    """The checkpoint a resumed run goes on from (its recorded rounds restored), or None."""
    if not config.resume:
        return None
    assert recorder.out is not None
    saved = checkpoint.load(recorder.out)
    if saved.round >= config.train.rounds:
        raise ConfigError(f"the checkpoint in {recorder.out} is of round {saved.round}, and the "
                          f"run has {config.train.rounds} rounds: nothing is left to run (raise "
                          "train.rounds to go on)")
    recorder.restore(saved.rounds, saved.notes)
    log(INFO, "Resuming %s from the checkpoint of round %d in %s", config.method, saved.round,
        recorder.out)
    return saved


def checkpointer(config: Config, recorder: Recorder, strategy: Any
                 ) -> Callable[[int, ArrayRecord], bool]:
    """After round ``r`` with cloud arrays ``a``: save a checkpoint when one is due (every
    ``checkpoint.every`` rounds and after the last); says whether it saved one."""
    out, every = recorder.out, config.checkpoint.every

    def save(server_round: int, arrays: ArrayRecord) -> bool:
        if out is None or not every or (server_round % every and
                                        server_round != config.train.rounds):
            return False
        checkpoint.save(out, checkpoint.Checkpoint(
            server_round, arrays, state_of(strategy), checkpoint.rng_state(), recorder.rounds,
            recorder.notes))
        return True

    return save


def state_of(strategy: Any) -> dict[str, Any]:
    """The strategy's ``state()``; Flower's own strategies keep nothing across rounds."""
    return strategy.state() if hasattr(strategy, "state") else {}


def start_hierarchical(strategy: Hierarchical, grid: Grid, config: Config,
                       recorder: Recorder, initial: ArrayRecord,
                       evaluate_fn: EvaluateFn | None = None, **options: Any) -> Result:
    """``strategy.start`` for ``config.train.rounds`` rounds, resumable (see the module).
    ``options`` go to ``start``."""
    saved = resume_point(config, recorder)
    first_round, state = 1, None
    if saved is not None:
        initial, state, first_round = saved.cloud, saved.strategy, saved.round + 1
        strategy.last_checkpoint = saved.round
    recorded, save = strategy.on_round, checkpointer(config, recorder, strategy)

    def on_round(report: RoundReport) -> None:
        if recorded is not None:
            recorded(report)
        if save(report.round, strategy.cloud_arrays):
            strategy.last_checkpoint = report.round

    strategy.on_round = on_round
    if saved is not None:
        checkpoint.set_rng_state(saved.rng)  # as late as possible: as the run had them
    result = strategy.start(grid, initial, num_rounds=config.train.rounds,
                            timeout=config.simulation.timeout, evaluate_fn=evaluate_fn,
                            first_round=first_round, state=state, **options)
    _save_models(recorder.out, strategy.models())
    return result


def start_flat(strategy: Strategy, grid: Grid, config: Config, recorder: Recorder,
               initial: ArrayRecord, evaluate_fn: EvaluateFn,
               train_config: ConfigRecord | None = None,
               evaluate_config: ConfigRecord | None = None) -> ArrayRecord:
    """A flat Flower strategy for ``config.train.rounds`` rounds through ``flat_loop``,
    resumable (see the module); ``evaluate_fn`` records the round (it is called after each);
    ``train_config`` and ``evaluate_config`` go to every train and evaluate message.
    Returns the final arrays."""
    saved = resume_point(config, recorder)
    first_round = 1
    if saved is not None:
        initial, first_round = saved.cloud, saved.round + 1
        if hasattr(strategy, "load_state"):
            strategy.load_state(saved.strategy)
    save = checkpointer(config, recorder, strategy)

    def evaluate_and_save(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = evaluate_fn(server_round, arrays)
        if server_round:
            save(server_round, arrays)
        return metrics

    if saved is not None:
        checkpoint.set_rng_state(saved.rng)
    arrays = flat_loop(strategy, grid, initial, first_round, config.train.rounds,
                       timeout=config.simulation.timeout, train_config=train_config,
                       evaluate_config=evaluate_config, evaluate_fn=evaluate_and_save)
    _save_models(recorder.out, {"cloud": arrays.to_torch_state_dict()})
    return arrays


def flat_loop(strategy: Strategy, grid: Grid, arrays: ArrayRecord, first_round: int,
              num_rounds: int, *, timeout: float = 3600,
              train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> ArrayRecord:
    """The rounds ``first_round .. num_rounds`` of Flower's ``Strategy.start``, call for call
    (``tests/test_resume.py`` pins them to it): train, the devices' evaluation, then
    ``evaluate_fn``; round 0's ``evaluate_fn`` only when starting at round 1. Flower's
    ``start`` always starts at round 1, so a resumed run needs this loop. Returns the final
    arrays."""
    train_config = train_config or ConfigRecord()
    evaluate_config = evaluate_config or ConfigRecord()
    knobs = getattr(strategy, "train_knobs", {}), getattr(strategy, "evaluate_knobs", {})
    refuse_clashes(train_config, knobs[0], "train_config", type(strategy).__name__)
    refuse_clashes(evaluate_config, knobs[1], "evaluate_config", type(strategy).__name__)
    log(INFO, "Starting %s strategy: rounds %d to %d", type(strategy).__name__, first_round,
        num_rounds)
    if evaluate_fn is not None and first_round == 1:
        evaluate_fn(0, arrays)
    for server_round in progress.rounds(first_round, num_rounds):
        replies = grid.send_and_receive(
            strategy.configure_train(server_round, arrays, train_config, grid), timeout=timeout)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        replies = grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout)
        strategy.aggregate_evaluate(server_round, replies)
        if evaluate_fn is not None:
            evaluate_fn(server_round, arrays)
    return arrays


def _save_models(out: Path | None, models: dict[str, Any]) -> None:
    if out is not None:
        checkpoint.save_models(out, models)
