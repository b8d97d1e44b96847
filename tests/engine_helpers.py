"""What the engine tests share: an environment of their own for `flwr run`, and stopping only
the processes a test started (found by its own FLWR_HOME in their command line)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

FLWR = str(Path(sys.executable).parent / "flwr")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """The environment of a test's `flwr run`: its own FLWR_HOME and SuperLink ports (so it can
    never reach another user's SuperLink), offline, no telemetry."""
    env = dict(os.environ)
    # flwr starts `flower-superlink` by name: the interpreter's scripts folder must be on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
               FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
    return env


def stop_processes_mentioning(marker: str) -> list[int]:
    """Stop every process whose command line names ``marker`` (what this test started)."""
    stopped = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGTERM)
                stopped.append(int(proc.name))
            except ProcessLookupError:
                pass
    return stopped


def descendants(pid: int) -> list[int]:
    """The processes started, directly or not, by ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def write_certificates(folder: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A throw-away CA and a server certificate for ``host`` (TLS tests only): returns the paths
    of ``ca.crt``, ``server.pem`` and ``server.key``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flower-eec test CA")])

    def certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_builder = certificate(ca_name, ca_key).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True)
    server_builder = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]),
                                 server_key).add_extension(x509.SubjectAlternativeName(
                                     [x509.IPAddress(ipaddress.ip_address(host))]),
                                     critical=False)
    ca = ca_builder.sign(ca_key, hashes.SHA256())
    server = server_builder.sign(ca_key, hashes.SHA256())
    paths = {name: folder / name for name in ("ca.crt", "server.pem", "server.key")}
    paths["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server.pem"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["server.key"].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths
