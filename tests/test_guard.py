"""The step guard of every training pass (``learning.sgd``): non-finite or exploding steps are
skipped, logged and counted, up to the results of a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from torch import nn
from torch.nn import functional as F

from flower_eec.core import learning
from flower_eec.core.learning import SPIKE_WARMUP, Step, sgd, step_problem
from flower_eec.run.config import resolve, to_json
from flower_eec.run.devices import torch_threads


def test_step_problem_known_answers() -> None:
    recent = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3
    assert step_problem(0.5, 59.0, recent, spike=20.0) is None
    assert "over 20 times" in str(step_problem(0.5, 61.0, recent, spike=20.0))
    assert step_problem(0.5, 61.0, recent, spike=0.0) is None  # factor off
    assert step_problem(0.5, 1e9, recent[:SPIKE_WARMUP - 1], spike=20.0) is None  # too early
    assert "non-finite loss" in str(step_problem(math.nan, 1.0, recent, spike=20.0))
    assert "non-finite gradient" in str(step_problem(0.5, math.inf, recent, spike=0.0))


def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(10)]


def trained(data: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)

    def objective(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
        x, y = batch
        logits = model(x)
        return Step(F.cross_entropy(logits, y), logits, y)

    return model, sgd(model, data, objective, lr=0.1)


@pytest.mark.parametrize("bad", ["exploding", "nan"])
def test_a_crafted_bad_batch_is_skipped_as_if_it_were_not_there(bad: str) -> None:
    clean = batches(0)
    x, y = clean[7]
    crafted = (x * 1e5, y) if bad == "exploding" else (x * math.nan, y)
    model, stats = trained([*clean[:7], crafted, *clean[7:]])
    reference, reference_stats = trained(clean)
    assert stats.skipped == 1 and reference_stats.skipped == 0
    assert stats.steps == reference_stats.steps == 10
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_without_the_guard_the_crafted_batch_wrecks_the_weights() -> None:
    clean = batches(0)
    x, y = clean[7]
    data = [*clean[:7], (x * 1e5, y), *clean[7:]]
    torch.manual_seed(0)
    model = nn.Linear(4, 3)

    def objective(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
        logits = model(batch[0])
        return Step(F.cross_entropy(logits, batch[1]), logits, batch[1])

    stats = sgd(model, data, objective, lr=0.1, spike=0.0)
    assert stats.skipped == 0
    assert float(model.weight.detach().abs().max()) > 1e3  # what the guard prevents


def test_skipped_steps_reach_the_results_of_devices_and_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every third step is refused (devices share this process on the in-process grid): the
    round's results count the devices' and the server's skipped steps."""
    from test_fedagg import run

    calls = {"n": 0}
    real = learning.step_problem

    def every_third(*args: Any) -> str | None:
        calls["n"] += 1
        return "crafted" if calls["n"] % 3 == 0 else real(*args)

    monkeypatch.setattr(learning, "step_problem", every_third)
    config = resolve(None, {"method": "fedagg", "profile": "smoke", "out": str(tmp_path),
                            "train": {"rounds": 1}})
    summary, _ = run(config)
    skipped = summary["rounds"][0]["skipped_steps"]
    assert skipped["devices"] > 0 and skipped["server"] > 0
    assert skipped["devices"] + skipped["server"] == calls["n"] // 3


def test_devices_compute_with_their_threads_and_leave_the_servers_alone(tmp_path: Path) -> None:
    config = resolve("hierfavg", {"profile": "smoke", "out": str(tmp_path),
                                  "simulation": {"torch_threads": 1}})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []

        def call_next(msg: Message, context: Context) -> Message:
            seen.append(torch.get_num_threads())
            return msg

        context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                          run_config={"config-json": to_json(config)})
        torch_threads(Message(RecordDict(), dst_node_id=1, message_type="train"), context,
                      call_next)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

