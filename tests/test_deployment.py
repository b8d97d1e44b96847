"""The Deployment Engine, as the README's "On real machines" does it: a SuperLink and four
SuperNodes on 127.0.0.1 ports of their own, TLS with certificates made here, `flwr run` of our
app. Every process started here is stopped by its pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import (
    FLWR,
    descendants,
    flower_env,
    free_port,
    write_certificates,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NUM_NODES = 4
pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """A SuperLink (TLS) and 4 SuperNodes; yields the environment for `flwr run` and a folder."""
    folder = tmp_path_factory.mktemp("deployment")
    certificates = write_certificates(folder / "certificates")
    env = flower_env(folder / "flwr-home")
    port = free_port()
    logs = folder / "logs"
    logs.mkdir()
    commands = [[str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certificates["ca.crt"]),
                 "--ssl-certfile", str(certificates["server.pem"]),
                 "--ssl-keyfile", str(certificates["server.key"]), "--host", "127.0.0.1",
                 "--port", str(port), "--database", str(folder / "state.db"),
                 "--disable-runtime-dependency-installation"]]
    commands += [[str(BIN / "flower-supernode"), "--root-certificates",
                  str(certificates["ca.crt"]), "--superlink", f"127.0.0.1:{port}",
                  "--node-config", f"partition-id={i} num-partitions={NUM_NODES}",
                  "--port", str(free_port())] for i in range(NUM_NODES)]
    processes = [subprocess.Popen(command, env=env, stdout=(logs / f"{i}.log").open("w"),
                                  stderr=subprocess.STDOUT)
                 for i, command in enumerate(commands)]
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certificates["ca.crt"]}"\n')
    try:
        yield env, folder
    finally:
        started = [pid for p in processes for pid in descendants(p.pid)]
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in started:  # e.g. a SuperNode's SuperExec, if it outlived its parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("method", ["hierfavg", "fedagg"])
def test_flwr_run_on_a_superlink_with_four_supernodes_over_tls(
        federation: tuple[dict[str, str], Path], method: str) -> None:
    env, folder = federation
    out = folder / f"out-{method}"
    done = subprocess.run(
        [FLWR, "run", ".", "deploy", "--stream", "--run-config",
         f"method='{method}' profile='smoke' out='{out}'"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert (summary["status"], summary["completed_rounds"]) == ("finished", 2), output[-3000:]
    assert all(r["devices"]["failures"] == 0 and r["devices"]["participants"] == NUM_NODES
               for r in summary["rounds"])
    assert (out / "models" / "cloud.pt").stat().st_size > 0
    assert "Discovered 4 devices" in output
