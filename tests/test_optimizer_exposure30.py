"""What the optimizer and the health layer tell a caller of backends: their state, never a backend's last error
(its exception text and last stderr line carry hosts, paths and DSNs, which stay in /readyz and the log); only the
prerequisite issuers the caller may see, counted among those; and one IPv6 /64 as one client of the usage
recorder's open tasks, as the ledger counts it.

Real gateways, real stdio backends (written here) and the SDK's client; the usage recorder's bound through its
own class (10,000 clients' calls through a gateway would take minutes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.scripted_backend import scripted
from tests.support import Gateway, bearer_client, policed_config, running_gateway, write_config
from vmcp_opt.auth import Caller, Identification
from vmcp_opt.optimizer.usage import MAX_LIVE_CLIENTS, UsageGraph, UsageRecorder, usage_client

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# What a broken backend says on stderr: an internal host, a path and a DSN no client may read.
LAST_WORDS = "FATAL: cannot open /srv/payroll/prod.yaml; db=db-payroll.corp.internal:5432"
LEAKED = ("/srv/payroll", "db-payroll.corp.internal", "FATAL")

# Fails at start, with its last words on stderr.
BROKEN_BACKEND = f"""
import sys
sys.stderr.write({LAST_WORDS!r} + "\\n")
sys.exit(3)
"""

# `crash` writes its last words and exits; `hold` says it started (a marker file) and answers once released.
CRASHING_BACKEND = f"""
import os, sys, time
from pathlib import Path
from mcp.server.mcpserver import MCPServer

server = MCPServer("crashing")

@server.tool()
def crash() -> str:
    \"\"\"Exit with the last words on stderr.\"\"\"
    sys.stderr.write({LAST_WORDS!r} + "\\n")
    sys.stderr.flush()
    os._exit(3)

@server.tool()
def hold() -> str:
    \"\"\"Answer once the release file exists.\"\"\"
    Path(os.environ["HOLD_MARK"]).touch()
    release = Path(os.environ["HOLD_RELEASE"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "held"

server.run()
"""

# `delete_secret` needs a `secret_id`; `list_secrets` issues one, and so do two tools only admins may use.
VAULT_BACKEND = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("vault")

@server.tool()
def delete_secret(secret_id: str) -> str:
    \"\"\"Delete one stored secret of the vault by its id.\"\"\"
    return "deleted " + secret_id

@server.tool()
def list_secrets() -> list[str]:
    \"\"\"List the ids of the secrets stored in the vault.\"\"\"
    return ["s1"]

@server.tool()
def create_secret(name: str, value: str) -> str:
    \"\"\"Create a new secret in the vault.\"\"\"
    return "s2"

@server.tool()
def generate_secret() -> str:
    \"\"\"Generate a random new secret in the vault.\"\"\"
    return "s3"

server.run()
"""

VAULT_POLICY = """
permit(principal in Group::"admin", action, resource);
permit(principal in Group::"user", action in [Action::"list_tools", Action::"call_tool"], resource in Backend::"vault")
  when { resource is Tool && resource.name != "vault_create_secret" && resource.name != "vault_generate_secret" };
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def script(directory: Path, name: str, source: str, **extra: Any) -> dict[str, Any]:
    """A stdio backend entry running `source`, written to `directory`."""
    path = directory / f"{name}_backend.py"
    path.write_text(source, encoding="utf-8")
    return {"name": name, "command": sys.executable, "args": [str(path)], **extra}


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def readyz_backend(gateway: Gateway, name: str) -> dict[str, Any]:
    """The backend's detail in /readyz, as loopback reads it."""
    body = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()
    found: dict[str, Any] = next(b for b in body["backends"] if b["name"] == name)
    return found


async def eventually(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await anyio.sleep(0.1)


def assert_no_last_words(message: str) -> None:
    leaked = [word for word in LEAKED if word in message]
    assert not leaked, f"the backend's last error reached the client ({leaked}): {message}"


async def test_find_tool_names_a_backend_that_is_down_by_its_state_not_its_last_error(tmp_path: Path) -> None:
    backends = [script(tmp_path, "payroll", BROKEN_BACKEND), scripted("notes")]
    optimizer = {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": 0}
    config = write_config(tmp_path, {"backends": backends, "optimizer": optimizer})
    with running_gateway(config) as gateway:
        # The detail exists, for the operator: /readyz from loopback (and the log) carry it.
        await eventually(lambda: "db-payroll" in (readyz_backend(gateway, "payroll")["last_error"] or ""), "last error")
        async with Client(gateway.url) as client:
            result = await client.call_tool("find_tool", {"query": "pay the staff", "backends": ["payroll"]})
    message = text(result)
    assert result.is_error
    assert message.startswith("field 'backends': backend 'payroll' is configured but not connected ("), message
    assert_no_last_words(message)


async def test_an_open_circuit_refuses_a_call_by_its_state_not_the_backends_last_words(tmp_path: Path) -> None:
    mark, release = tmp_path / "hold.started", tmp_path / "hold.release"
    env = {"HOLD_MARK": str(mark), "HOLD_RELEASE": str(release)}
    settings = {
        "health": {"enabled": False},  # only calls feed the breaker: no ping closes the half-open circuit
        "failure": {
            "circuit_breaker": {"failure_threshold": 1, "cooldown": 60.0, "trial_calls": 1},
            "restart": {"initial_delay": 0.2, "max_delay": 1.0},
        },
    }
    config = write_config(tmp_path, {"backends": [script(tmp_path, "crashing", CRASHING_BACKEND, env=env)], **settings})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as first, Client(gateway.url) as second:
            await first.call_tool("crashing_crash", {})  # its own failure, which opens the circuit
            # Restarted: the new session's trial call is let through, one at a time.
            await eventually(
                lambda: (
                    (b := readyz_backend(gateway, "crashing"))["state"] == "ready"
                    and b["circuit"]["state"] == "half_open"
                ),
                "restarted with its circuit half-open",
            )
            assert "db-payroll" in readyz_backend(gateway, "crashing")["circuit"]["reason"]  # the operator's detail
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(first.call_tool, "crashing_hold", {})
                await eventually(mark.exists, "the trial call running")
                refused = await second.call_tool("crashing_hold", {})
                release.touch()
    message = text(refused)
    assert refused.is_error and "backend 'crashing' is unavailable (circuit open" in message, message
    assert_no_last_words(message)


async def test_a_restricted_caller_is_shown_the_issuer_it_may_use_whatever_hidden_ones_exist(tmp_path: Path) -> None:
    cfg = {
        "backends": [script(tmp_path, "vault", VAULT_BACKEND)],
        "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        "optimizer": {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": 0},
    }
    config, keys = policed_config(tmp_path, {"alice": ["admin"], "bob": ["user"]}, VAULT_POLICY, cfg)
    with running_gateway(config) as gateway:
        answers = {}
        for who in ("bob", "alice"):
            async with bearer_client(gateway.url, keys[who]) as client:
                found = await client.call_tool("find_tool", {"query": "delete a secret from the vault", "limit": 4})
            answers[who] = {tool["name"]: tool.get("supplies") for tool in found.structured_content["tools"]}
    # Bob may use one issuer of `secret_id`: it supplies the value, the two he may not see count for nothing.
    assert "vault_create_secret" not in answers["bob"] and "vault_generate_secret" not in answers["bob"]
    assert answers["bob"]["vault_list_secrets"] is not None, answers["bob"]
    assert answers["bob"]["vault_list_secrets"]["argument"] == "secret_id", answers["bob"]
    # Alice may use all three: too many to say which one, so none is raised as the one.
    assert not any(answers["alice"].get(name) for name in answers["alice"]), answers["alice"]


def test_one_ipv6_64_rotating_addresses_does_not_evict_other_clients_open_tasks() -> None:
    now = [0.0]
    graph = UsageGraph()
    recorder = UsageRecorder(graph, window=300.0, clock=lambda: now[0])

    def client(address: str) -> Any:  # an HTTP session without authentication: known by its address
        return usage_client(Caller(f"session:{address}", Identification.SESSION, "", address=address))

    alice = client("198.51.100.7")
    recorder.tool_used(alice, "notes_save_note")
    for host in range(MAX_LIVE_CLIENTS):  # one host of one /64, a new address for each call
        recorder.tool_used(client(f"2001:db8:0:1::{host:x}"), "notes_whoami")
    now[0] += 5
    recorder.tool_used(alice, "time_get_current_time")
    assert "time_get_current_time" in graph.companions("notes_save_note")
