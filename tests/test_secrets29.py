"""Secrets in text the gateway relays from its backends: a real gateway, hostile backends, a real SDK client.

A backend may quote what the gateway sent it (an API key, a token the gateway fetched, a secret file's new
content) in a JSON-RPC error or a ping's error, and a stdio backend may print a database URL with its password to
stderr. None of it may reach a client, the audit file, the gateway's log or `/readyz`; the rest of the message
still does. `vmcp validate` shows neither a URL's password nor a `${VAR}`'s value.

The backends: tests/hostile_echo_backend29.py (HTTP, echoes credentials) and tests/hostile_dsn_backend29.py
(stdio, prints DSNs). The token endpoint is a real OpenID provider (tests/oidc/issuer.mjs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import (
    ROOT,
    Gateway,
    free_port,
    running_gateway,
    running_issuer,
    stop_processes,
    wait_http,
    write_config,
)
from tests.test_auth_e2e import private_jwk

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ECHO_BACKEND = ROOT / "tests" / "hostile_echo_backend29.py"
DSN_BACKEND = ROOT / "tests" / "hostile_dsn_backend29.py"
API_KEY = "ApiKeyFromEnv-2901-zz"
FILE_KEY = "FileKeyBefore-2902-zz"
ROTATED_KEY = "FileKeyRotated-2903-zz"
CLIENT_SECRET = "GatewayClientSecret-2904-zz"
ARG_PASSWORD = "ArgDsnPassword-2905"
ENV_PASSWORD = "EnvDsnPassword-2906"
LINE_PASSWORD = "LineDsnPassword-2907"
DSN_PASSWORDS = (ARG_PASSWORD, ENV_PASSWORD, LINE_PASSWORD)
DEADLINE = 60.0  # seconds a condition the gateway reaches by itself (a failed ping, a restart) is waited for


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class World:
    gateway: Gateway
    directory: Path

    @property
    def audit(self) -> str:
        path = self.directory / "audit.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def seen(self) -> list[dict[str, Any]]:
        """What the echo backends received: each request's method and credentials."""
        path = self.directory / "seen.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def sent_tokens(self) -> set[str]:
        """The bearer tokens the gateway fetched and sent (not in any config)."""
        headers = (rec["creds"].get("Authorization", "") for rec in self.seen())
        return {value.removeprefix("Bearer ") for value in headers if value.startswith("Bearer ")}

    def readyz(self) -> str:
        return httpx2.get(f"{self.gateway.base}/readyz", timeout=10).text

    def backend(self, name: str) -> dict[str, Any]:
        body = json.loads(self.readyz())
        return next(entry for entry in body["backends"] if entry["name"] == name)

    def everywhere(self) -> str:
        """Every place a secret must not reach besides a client's answer: the log, the audit, /readyz."""
        return "\n".join([self.gateway.output(), self.audit, self.readyz()])


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("secrets29")
    seen = directory / "seen.jsonl"
    ports = {name: free_port() for name in ("keyed", "oauth", "pinged", "rotated")}
    echo_ping = {"pinged", "rotated"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ECHO_BACKEND),
                str(port),
                name,
                str(seen),
                *(["--echo-ping"] if name in echo_ping else []),
            ]
        )
        for name, port in ports.items()
    ]
    try:
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/mcp", expect=(405,))
        (directory / "key.txt").write_text(FILE_KEY + "\n")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        settings = {
            "port": free_port(),
            "jwks": {"keys": [private_jwk(key, "k1")]},
            "clients": [{"client_id": "gateway", "client_secret": CLIENT_SECRET}],
        }
        with running_issuer(directory, settings) as issuer:
            config = write_config(directory, _config(directory, ports, issuer))
            env = {"API_KEY29": API_KEY, "CLIENT_SECRET29": CLIENT_SECRET}
            with running_gateway(config, "--log-level", "debug", env=env) as gateway:
                yield World(gateway, directory)
    finally:
        stop_processes(procs)


def _config(directory: Path, ports: dict[str, int], issuer: str) -> dict[str, Any]:
    def url(name: str) -> str:
        return f"http://127.0.0.1:{ports[name]}/mcp"

    def client_credentials(name: str) -> dict[str, Any]:
        return {
            "type": "oauth_client_credentials",
            "token_url": f"{issuer}/token",
            "client_id": "gateway",
            "client_secret": {"env": "CLIENT_SECRET29"},
            "resource": url(name),
            "scopes": ["mcp"],
        }

    http = "streamable-http"
    file_header = {"type": "header", "headers": {"X-Api-Key": {"file": "key.txt"}}}
    return {
        "backends": [
            {
                "name": "keyed",
                "transport": http,
                "url": url("keyed"),
                "auth": {"type": "header", "headers": {"X-Api-Key": {"env": "API_KEY29"}}},
            },
            {"name": "oauth", "transport": http, "url": url("oauth"), "auth": client_credentials("oauth")},
            {"name": "pinged", "transport": http, "url": url("pinged"), "auth": client_credentials("pinged")},
            {"name": "rotated", "transport": http, "url": url("rotated"), "auth": file_header},
            {
                "name": "pg",
                "command": sys.executable,
                "args": [str(DSN_BACKEND), f"postgresql://app:{ARG_PASSWORD}@db:5432/prod", "--crash"],
                "env": {"DATABASE_URL": f"postgres://app:{ENV_PASSWORD}@db/x"},
            },
            {
                "name": "dsn",
                "command": sys.executable,
                "args": [str(DSN_BACKEND), "sqlite:///tmp/none.db"],
                # Under a key that does not look secret, in prose: only its URL says it holds a password.
                "env": {"FAILURE_LINE": f"fatal: login failed for postgres://admin:{LINE_PASSWORD}@db/prod"},
            },
        ],
        "health": {"interval": 1},
        "server": {"log_format": "plain"},
        "telemetry": {"audit": {"enabled": True, "output": str(directory / "audit.log"), "include_data": True}},
        "data_dir": str(directory / "data"),
    }


def _client(world: World) -> Client:
    return Client(streamable_http_client(world.gateway.url, http_client=httpx2.AsyncClient(timeout=60)))


async def _answer(client: Client, tool: str) -> str:
    """The text a client gets for a tool call: its error result's, or its protocol error's message and data."""
    try:
        result = await client.call_tool(tool, {})
    except MCPError as exc:
        return f"{exc.error.message} {json.dumps(exc.error.data)}"
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _leaked(text: str, secrets: set[str] | tuple[str, ...]) -> list[str]:
    return [secret for secret in secrets if secret in text]


async def test_backend_errors_quoting_the_credentials_sent_reach_nobody(world: World) -> None:
    async with _client(world) as client:
        answers = {tool: await _answer(client, tool) for tool in ("keyed_rpcerr", "keyed_plainerr", "oauth_rpcerr")}
        with pytest.raises(MCPError) as prompt:  # a prompt's (or a resource's) error, relayed as an error
            await client.get_prompt("keyed_echo")
        answers["keyed_echo"] = f"{prompt.value.error.message} {prompt.value.error.data}"
    tokens = world.sent_tokens()
    assert tokens, "the gateway sent no fetched token"
    secrets = {API_KEY, *tokens}
    for tool, text in answers.items():
        assert not _leaked(text, secrets), f"{tool}: {text}"
    assert "bad creds" in answers["keyed_rpcerr"] and "X-Api-Key" in answers["keyed_rpcerr"]
    assert "(expired)" in answers["keyed_plainerr"]
    assert "bad creds" in answers["oauth_rpcerr"] and "Bearer ***" in answers["oauth_rpcerr"]
    assert "prompt refused" in answers["keyed_echo"] and "X-Api-Key" in answers["keyed_echo"]
    wait_for("the calls' audit records", lambda: world.audit.count("rpcerr") >= 2)
    assert not _leaked(world.everywhere(), secrets)


def test_a_fetched_token_echoed_by_a_ping_stays_out_of_readyz_and_the_log(world: World) -> None:
    wait_for(
        "a failed ping of the token backend in /readyz", lambda: "ping refused" in json.dumps(world.backend("pinged"))
    )
    tokens = {
        rec["creds"]["Authorization"].removeprefix("Bearer ")
        for rec in world.seen()
        if rec["backend"] == "pinged" and rec["method"] == "ping"
    }
    assert tokens
    assert not _leaked(world.everywhere(), tokens)
    assert "ping refused, key was Bearer ***" in json.dumps(world.backend("pinged"))


def test_a_rotated_secret_file_echoed_by_a_ping_stays_out_of_readyz_and_the_log(world: World) -> None:
    wait_for("a failed ping in /readyz", lambda: "ping refused, key was ***" in json.dumps(world.backend("rotated")))
    (world.directory / "key.txt").write_text(ROTATED_KEY + "\n")
    wait_for(
        "a ping with the rotated key",
        lambda: any(rec["creds"].get("X-Api-Key") == ROTATED_KEY and rec["method"] == "ping" for rec in world.seen()),
    )
    rotated_at = time.time()
    wait_for(
        "a health check after the rotation", lambda: world.backend("rotated")["health"]["last_check_at"] > rotated_at
    )
    assert "ping refused, key was ***" in world.gateway.output()
    assert not _leaked(world.everywhere(), (FILE_KEY, ROTATED_KEY))


def test_a_url_password_in_a_stdio_backends_args_env_and_stderr_stays_masked(world: World) -> None:
    wait_for("the crashing backend's stderr line in /readyz", lambda: "could not connect" in world.readyz())
    pg = world.backend("pg")
    assert "could not connect to postgresql://***@db:5432/prod" in pg["last_error"]
    output = world.gateway.output()
    assert "connecting to postgresql://***@db:5432/prod and postgres://***@db/x" in output
    assert not _leaked(world.everywhere(), DSN_PASSWORDS)


async def test_a_url_password_in_a_dying_backends_stderr_line_is_masked_and_the_client_told_only_the_exit(
    world: World,
) -> None:
    async with _client(world) as client:
        answer = await _answer(client, "dsn_die")
    assert "the process exited" in answer and "login failed" not in answer, answer  # the line: log and /readyz
    assert "fatal: login failed for postgres://***@db/prod" in world.gateway.output()
    assert not _leaked(answer, DSN_PASSWORDS)
    assert not _leaked(world.everywhere(), DSN_PASSWORDS)


def test_validate_shows_neither_a_url_password_nor_an_expanded_arg(tmp_path: Path) -> None:
    typo = {
        "name": "typo",
        "transport": "streamable-http",
        "url": f"htps://a:{ARG_PASSWORD}@example.com/mcp?token={ENV_PASSWORD}",
    }
    expanded = {"name": "f", "command": sys.executable, "args": ["--password", "${DB_PW29}"]}
    runs = [_validate(tmp_path, "typo.yaml", typo), _validate(tmp_path, "expanded.yaml", expanded)]  # side by side
    shown_typo, shown_expanded = (run.communicate(timeout=120)[0] for run in runs)
    assert (_leaked(shown_typo, DSN_PASSWORDS), _leaked(shown_expanded, DSN_PASSWORDS)) == ([], [])
    assert "backends[0].url: must start with http:// or https://" in shown_typo and "example.com/mcp" in shown_typo
    assert "backends[0].args[1]: '${DB_PW29}'" in shown_expanded and "does not exist" in shown_expanded


def _validate(directory: Path, name: str, backend: dict[str, Any]) -> subprocess.Popen[str]:
    """`vmcp validate` of a config with `backend`, started; `${DB_PW29}` set. A wide console: no line is wrapped."""
    config = directory / name
    config.write_text(json.dumps({"backends": [backend]}))
    return subprocess.Popen(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "400", "DB_PW29": LINE_PASSWORD},
    )
