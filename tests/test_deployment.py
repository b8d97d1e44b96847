"""The Deployment Engine, as the README's "On real machines" does it: a SuperLink and four
SuperNodes on 127.0.0.1 ports of their own, TLS with certificates made here, SuperNode
authentication (registered keys only), `flwr run` of our app. Every process started here is
stopped by its pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
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


def register(env: dict[str, str], public_key: Path, deadline: float) -> None:
    """``flwr supernode register`` of one key, asked again until the SuperLink is up."""
    while True:
        done = subprocess.run([FLWR, "supernode", "register", str(public_key), "deploy"],
                              env=env, capture_output=True, text=True, timeout=60)
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stdout + done.stderr
            return
        time.sleep(0.5)  # the SuperLink is still starting: ask again


def keys(folder: Path, name: str) -> Path:
    """An ECDSA key pair for a SuperNode (``name``, ``name.pub``, OpenSSH format, as
    ``ssh-keygen -t ecdsa -b 384`` makes); returns the private key's path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    (folder / name).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    (folder / f"{name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return folder / name


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """A SuperLink (TLS, SuperNode authentication) and 4 registered SuperNodes, plus one
    unregistered SuperNode that must be turned away; yields the environment of `flwr run` and
    a folder."""
    folder = tmp_path_factory.mktemp("deployment")
    certificates = write_certificates(folder / "certificates")
    env = flower_env(folder / "flwr-home")
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certificates["ca.crt"]}"\n')
    logs = folder / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *command: str) -> subprocess.Popen[bytes]:
        processes.append(subprocess.Popen(list(command), env=env, stderr=subprocess.STDOUT,
                                          stdout=(logs / f"{name}.log").open("w")))
        return processes[-1]

    def supernode(name: str, partition: int, key: Path) -> subprocess.Popen[bytes]:
        return start(name, str(BIN / "flower-supernode"), "--root-certificates",
                     str(certificates["ca.crt"]), "--superlink", f"127.0.0.1:{port}",
                     "--auth-supernode-private-key", str(key), "--max-retries", "3",
                     "--node-config", f"partition-id={partition} num-partitions={NUM_NODES}",
                     "--port", str(free_port()))

    try:
        start("superlink", str(BIN / "flower-superlink"), "--enable-supernode-auth",
              "--ssl-ca-certfile", str(certificates["ca.crt"]),
              "--ssl-certfile", str(certificates["server.pem"]),
              "--ssl-keyfile", str(certificates["server.key"]), "--host", "127.0.0.1",
              "--port", str(port), "--database", str(folder / "state.db"),
              "--disable-runtime-dependency-installation")
        deadline = time.monotonic() + 120
        for i in range(NUM_NODES):
            key = keys(folder, f"node{i}")
            register(env, key.with_suffix(".pub"), deadline)
            supernode(f"node{i}", i, key)
        intruder = supernode("intruder", 0, keys(folder, "intruder"))
        assert intruder.wait(timeout=120) != 0  # not registered: refused, it gives up
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
def test_flwr_run_on_a_superlink_with_four_authenticated_supernodes_over_tls(
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
