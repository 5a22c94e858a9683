"""Against a real gateway process: a stdio backend that dies after its handshake is reported with its exit status
and last stderr line, like one that dies at start; a remote backend whose certificate is not trusted says how to
trust a private CA; with `failure.circuit_breaker.enabled: false` no circuit state changes are logged or shown."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client

from tests.scripted_backend import scripted
from tests.support import Gateway, free_port, running_gateway, stop_process, write_config
from tests.test_failure_recovery import backend, text
from vmcp_opt.backends.errors import TRUST_HINT

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Scripted backends: one whose `exit` tool exits with code 7, one whose `kill` tool SIGKILLs it (each writing a
# stderr line first), one whose `invalid` tool answers a result that fails validation (a failure for the circuit).
EXITS = scripted("exits", "--exit-in-call", "7", "--last-words", "fatal: lost the database connection")
KILLED = scripted("killed", "--kill-in-call", "--last-words", "about to be killed")
JUNK = scripted("junk", "--garbage-answers")


def calls_only_config(directory: Path, backends: list[dict[str, Any]], **failure: Any) -> Path:
    config: dict[str, Any] = {
        "backends": backends,
        # Only calls feed the circuit: no health check runs within these tests.
        "health": {"interval": 3600},
        "failure": {"restart": {"enabled": False}, **failure},
        "telemetry": {"metrics": {"enabled": True}},
    }
    return write_config(directory, config)


def wait_for(gateway: Gateway, name: str, state: str, within: float = 20.0) -> dict[str, Any]:
    """The backend's `/readyz` entry once it is in `state`, polled until `within` seconds have passed."""
    deadline = time.monotonic() + within
    while (entry := backend(gateway, name))["state"] != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"backend {name} not {state} within {within}s: {entry}\n{gateway.output()}")
        time.sleep(0.1)
    return entry


async def test_a_stdio_backend_that_dies_after_its_handshake_is_reported_with_its_exit_status(
    tmp_path: Path,
) -> None:
    with running_gateway(calls_only_config(tmp_path, [EXITS, KILLED])) as gateway:
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("exits_ok", {})).is_error
            exited = await client.call_tool("exits_exit", {})
            assert exited.is_error, text(exited)
            killed = await client.call_tool("killed_kill", {})
            assert killed.is_error, text(killed)
        exits = wait_for(gateway, "exits", "failed")["last_error"]
        assert exits == "the process exited with code 7; its last stderr line: fatal: lost the database connection"
        signalled = wait_for(gateway, "killed", "failed")["last_error"]
        assert signalled == "the process was killed by signal 9 (SIGKILL); its last stderr line: about to be killed"
        log = gateway.output()
        assert "backend exits failed: the process exited with code 7; its last stderr line: fatal" in log
        assert "backend killed failed: the process was killed by signal 9 (SIGKILL)" in log
        assert "process exited or stream ended" not in log


async def test_a_disabled_circuit_breaker_logs_no_circuit_and_forwards_every_call(tmp_path: Path) -> None:
    disabled = {"circuit_breaker": {"enabled": False, "failure_threshold": 2, "cooldown": 3600}}
    with running_gateway(calls_only_config(tmp_path, [JUNK], **disabled)) as gateway:
        async with Client(gateway.url) as client:
            for _ in range(5):  # more than the threshold: an enabled breaker opens at the second
                invalid = await client.call_tool("junk_invalid", {})
                assert invalid.is_error and "answered with an invalid result" in text(invalid), text(invalid)
            forwarded = await client.call_tool("junk_ok", {})
            assert not forwarded.is_error and text(forwarded) == "fine", text(forwarded)
        assert backend(gateway, "junk")["circuit"]["state"] == "disabled"
        metrics = httpx2.get(f"{gateway.base}/metrics", timeout=30).text  # the same word as /readyz, not "closed"
        assert 'vmcp_backend_circuit{backend="junk",state="disabled"} 1.0' in metrics, metrics
        assert "backend junk circuit" not in gateway.output()  # the breaker's every line starts so


async def test_an_enabled_circuit_breaker_opens_on_the_same_failures(tmp_path: Path) -> None:
    """The counterpart of the test above: the same calls do open a circuit that is enabled."""
    enabled = {"circuit_breaker": {"failure_threshold": 2, "cooldown": 3600}}
    with running_gateway(calls_only_config(tmp_path, [JUNK], **enabled)) as gateway:
        async with Client(gateway.url) as client:
            for _ in range(2):
                assert (await client.call_tool("junk_invalid", {})).is_error
            refused = await client.call_tool("junk_ok", {})
            assert refused.is_error and "circuit open" in text(refused)
        assert backend(gateway, "junk")["circuit"]["state"] == "open"
        assert "backend junk circuit closed -> open" in gateway.output()


# A streamable HTTP backend over TLS: tls_server.py PORT CERT KEY.
TLS_SERVER = r"""
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("tls")


@server.tool()
def hello() -> str:
    return "hello over TLS"


port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=port, ssl_certfile=cert, ssl_keyfile=key,
            log_level="warning")
"""


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, *, ca: bool) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(names, critical=False)
    return builder.sign(signer, hashes.SHA256())


def private_ca(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA of our own and a certificate for 127.0.0.1 it signed: (the CA's PEM, the server's cert, its key)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = _certificate(name, ca_key, ca_name, ca_key, ca=True)
    cert = _certificate("127.0.0.1", key, ca_name, ca_key, ca=False)
    directory.mkdir()
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@contextlib.contextmanager
def tls_backend(directory: Path, cert: Path, key: Path) -> Iterator[str]:
    script = directory / "tls_server.py"
    script.write_text(TLS_SERVER, encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(cert), str(key)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):  # up once its port takes connections (uvicorn binds after the app is built)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TLS backend did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        yield f"https://127.0.0.1:{port}/mcp"
    finally:
        stop_process(proc)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (the cert, its key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = _certificate("127.0.0.1", key, name, key, ca=False)
    paths = directory / "self.pem", directory / "self.key"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


async def test_an_untrusted_certificate_says_how_to_trust_its_ca_and_ssl_cert_file_does_it(tmp_path: Path) -> None:
    ca, cert, key = private_ca(tmp_path / "ours", "vmcp test CA")
    other_ca, _, _ = private_ca(tmp_path / "other", "another CA")
    with tls_backend(tmp_path, cert, key) as url, tls_backend(tmp_path, *self_signed(tmp_path)) as self_signed_url:
        backends = [
            {"name": "private", "transport": "streamable-http", "url": url},
            {"name": "selfsigned", "transport": "streamable-http", "url": self_signed_url},
        ]
        config = write_config(tmp_path, {"backends": backends, "failure": {"restart": {"enabled": False}}})
        # A bundle without our CA, whatever this machine's environment names.
        with running_gateway(config, env={"SSL_CERT_FILE": str(other_ca)}) as gateway:
            for name, why in (("private", "unable to get local issuer certificate"), ("selfsigned", "self-signed")):
                reason = wait_for(gateway, name, "failed")["last_error"]
                assert "CERTIFICATE_VERIFY_FAILED" in reason and why in reason, reason
                assert reason.endswith(f"; {TRUST_HINT}"), reason
            assert TRUST_HINT in gateway.output()
        with running_gateway(config, env={"SSL_CERT_FILE": str(ca)}) as gateway:
            assert wait_for(gateway, "private", "ready")["last_error"] is None
            async with Client(gateway.url) as client:
                answered = await client.call_tool("private_hello", {})
                assert not answered.is_error and text(answered) == "hello over TLS", text(answered)


async def test_an_ssl_cert_file_that_does_not_exist_is_named_in_the_reason(tmp_path: Path) -> None:
    """httpx loads the bundle for every HTTP client it makes, plain `http://` too: each such backend fails with a
    bare "[Errno 2] No such file or directory" unless the reason names the variable and the file."""
    url = f"http://127.0.0.1:{free_port()}/mcp"  # never reached: the client is not even made
    backends = [{"name": "remote", "transport": "streamable-http", "url": url}]
    config = write_config(tmp_path, {"backends": backends, "failure": {"restart": {"enabled": False}}})
    missing = tmp_path / "no-such-bundle.pem"
    with running_gateway(config, env={"SSL_CERT_FILE": str(missing)}) as gateway:
        reason = wait_for(gateway, "remote", "failed")["last_error"]
        assert reason.startswith(f"{url}: SSL_CERT_FILE names a file that does not exist ({missing}): "), reason
