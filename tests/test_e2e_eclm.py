"""ECLM end to end on Flower's real engine: `flwr run .` of the smoke profile (SuperLink + Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_e2e import ROOT, _flower_env, _stop_processes_mentioning

pytestmark = pytest.mark.e2e


def test_flwr_run_eclm_smoke(tmp_path: Path) -> None:
    """Three ECLM rounds on 4 SuperNodes: every device reports, adapts and is merged each round."""
    home, out = tmp_path / "flwr-home", tmp_path / "out"
    command = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
               "--federation-config", "num-supernodes=4",
               "--run-config", f"profile='smoke' method='eclm' out='{out}' "
                               "overrides='train.rounds=3'"]
    try:
        done = subprocess.run(command, cwd=ROOT, env=_flower_env(home), capture_output=True,
                              text=True, timeout=600)
    finally:
        stopped = _stop_processes_mentioning(str(home))
    assert stopped, "flwr run should have started a SuperLink under this test's FLWR_HOME"
    assert (out / "results.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert summary["method"] == "eclm"
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    for record in summary["rounds"]:
        assert (record["devices"]["participants"], record["devices"]["failures"]) == (4, 0)
        assert 0 <= record["devices"]["mean_local_accuracy"] <= 1
        assert record["comm_bytes"]["device_to_cloud"] > 0
        assert record["eclm"]["mean_submodel_params"] < record["eclm"]["full_model_params"]
    # smoke shifts labels and budgets every round: every device gets a new sub-model each round
    assert all(r["eclm"]["rederived"] == 4 for r in summary["rounds"])
    assert "eclm_offline" in summary
    assert 0.0 <= summary["final"]["cloud_accuracy"] <= 1.0
