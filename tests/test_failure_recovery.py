"""Failure handling end to end: real gateway, real backend processes, real kills.

Short health intervals and cool-downs keep each test to a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
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
from mcp.shared.exceptions import MCPError

from tests.support import (
    Gateway,
    api_keys_file,
    bearer_client,
    demo_backend,
    free_port,
    http_demo_backend,
    running_gateway,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CALL_TIMEOUT = 10.0
FAST: dict[str, Any] = {
    "health": {"interval": 0.3, "timeout": 1.0, "unhealthy_threshold": 2, "healthy_threshold": 2},
    "failure": {
        "circuit_breaker": {"failure_threshold": 1, "cooldown": 30.0, "trial_calls": 2},
        "restart": {"initial_delay": 0.2, "max_delay": 1.0},
    },
    "timeouts": {"call": CALL_TIMEOUT, "connect": 15.0},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def readyz(gateway: Gateway) -> dict[str, Any]:
    body: dict[str, Any] = httpx2.get(f"{gateway.base}/readyz", timeout=5.0).json()
    return body


def backend(gateway: Gateway, name: str) -> dict[str, Any]:
    return next(b for b in readyz(gateway)["backends"] if b["name"] == name)


async def eventually(check: Callable[[], bool], within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await anyio.sleep(0.1)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def whoami(client: Client, tool: str) -> dict[str, Any]:
    result = await client.call_tool(tool, {})
    assert not result.is_error, text(result)
    info: dict[str, Any] = json.loads(text(result))
    return info


async def test_killed_stdio_backend_fails_the_call_in_flight_then_is_restarted_and_its_circuit_closes(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("victim"), demo_backend("bystander")], **FAST})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            events: list[str] = []

            async def collect_changes() -> None:
                async with client.listen(tools_list_changed=True) as subscription:
                    async for event in subscription:
                        events.append(type(event).__name__)

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(collect_changes)
                first_pid = (await whoami(client, "victim_whoami"))["pid"]
                outcome: dict[str, Any] = {}

                async def slow_call() -> None:
                    started = time.monotonic()
                    outcome["result"] = await client.call_tool("victim_slow_echo", {"message": "hi", "seconds": 60})
                    outcome["elapsed"] = time.monotonic() - started

                task_group.start_soon(slow_call)
                await anyio.sleep(0.5)
                os.kill(first_pid, signal.SIGKILL)
                await eventually(lambda: "result" in outcome, within=CALL_TIMEOUT + 2, what="an answer to the call")
                assert outcome["result"].is_error
                assert "victim" in text(outcome["result"])
                assert outcome["elapsed"] < CALL_TIMEOUT

                # The circuit opened (fed by the failed call); the other backend keeps answering meanwhile.
                assert backend(gateway, "victim")["circuit"]["times_opened"] >= 1
                assert (await client.call_tool("bystander_slow_echo", {"message": "ok", "seconds": 0})).content

                # Restarted (a new process), back in the catalogue, healthy, circuit closed again.
                await eventually(
                    lambda: (
                        (b := backend(gateway, "victim"))["state"] == "ready"
                        and b["health"]["state"] == "healthy"
                        and b["circuit"]["state"] == "closed"
                    ),
                    what="victim restarted with its circuit closed",
                )
                assert backend(gateway, "victim")["restarts"] >= 1
                assert (await whoami(client, "victim_whoami"))["pid"] != first_pid
                tools = {tool.name for tool in (await client.list_tools()).tools}
                assert "victim_whoami" in tools and "bystander_whoami" in tools
                # list_changed when the backend left and again when it came back.
                await eventually(lambda: len(events) >= 2, within=30, what="two list_changed events")
                task_group.cancel_scope.cancel()
    log = gateway.output()
    assert "backend victim circuit closed -> open" in log
    assert "backend victim health:" in log


async def test_hung_backend_times_out_then_its_open_circuit_refuses_at_once(tmp_path: Path) -> None:
    settings = {
        **FAST,
        "health": {"enabled": False},  # only real calls feed the breaker here
        "failure": {"circuit_breaker": {"failure_threshold": 1, "cooldown": 60.0}},
    }
    backends = [demo_backend("victim", call_timeout=1.5), demo_backend("bystander")]
    config = write_config(tmp_path, {"backends": backends, **settings})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            pid = (await whoami(client, "victim_whoami"))["pid"]
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                hung = await client.call_tool("victim_whoami", {})
                assert hung.is_error and time.monotonic() - started < 1.5 + 2.0  # the per-backend call_timeout
                # The message says how long and which setting.
                assert "timed out after 1.5s (call_timeout of this backend)" in text(hung), text(hung)
                started = time.monotonic()
                refused = await client.call_tool("victim_whoami", {})
                assert time.monotonic() - started < 0.5
                assert refused.is_error
                message = text(refused)
                assert "backend 'victim'" in message and "circuit open" in message and "next trial is in" in message
                assert not (await client.call_tool("bystander_slow_echo", {"message": "x", "seconds": 0})).is_error
            finally:
                os.kill(pid, signal.SIGCONT)


async def test_a_tool_whose_backend_is_down_is_reported_as_unavailable_not_unknown(tmp_path: Path) -> None:
    # A slow restart leaves a window in which the backend's tools are out of the catalogue.
    settings = {**FAST, "failure": {**FAST["failure"], "restart": {"initial_delay": 4.0, "max_delay": 4.0}}}
    config = write_config(tmp_path, {"backends": [demo_backend("victim"), demo_backend("bystander")], **settings})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            pid = (await whoami(client, "victim_whoami"))["pid"]
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: backend(gateway, "victim")["state"] != "ready", what="the backend seen down")
            # The catalogue is rebuilt on a worker thread once the backend is seen down: wait for it.
            with anyio.fail_after(30):
                while True:
                    listed = {tool.name for tool in (await client.list_tools()).tools}
                    if "victim_whoami" not in listed:
                        break
                    await anyio.sleep(0.05)
            assert "bystander_whoami" in listed
            down = await client.call_tool("victim_whoami", {})
            assert down.is_error
            message = text(down)
            assert "tool 'victim_whoami' is served by backend 'victim'" in message
            assert "Unknown tool" not in message
            with pytest.raises(MCPError, match="Unknown tool: 'victim_no_such_tool'"):
                await client.call_tool("victim_no_such_tool", {})
            # Back after the restart, under the same name.
            await eventually(lambda: backend(gateway, "victim")["state"] == "ready", what="the restart")
            assert (await whoami(client, "victim_whoami"))["pid"] != pid


DOWN_POLICY = """\
permit(principal in Group::"dev", action, resource);
permit(principal in Group::"ops", action, resource == Tool::"local_whoami");
"""


async def test_a_tool_whose_backend_is_down_is_denied_to_a_caller_the_policy_refuses_and_never_shows_its_error(
    tmp_path: Path,
) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"], "bob": ["ops"]})
    (tmp_path / "policy.cedar").write_text(DOWN_POLICY)
    audit = tmp_path / "audit.log"
    port = free_port()
    first = http_demo_backend(port)
    url = first.__enter__()
    stopped = False
    try:
        config = {
            "backends": [{"name": "web", "transport": "streamable-http", "url": url}, demo_backend("local")],
            "auth": {
                "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
                "authorization": {"policies": "policy.cedar"},
            },
            "telemetry": {"audit": {"enabled": True, "output": str(audit)}},
            **FAST,
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            async with (
                bearer_client(gateway.url, keys["bob"]) as as_bob,
                bearer_client(gateway.url, keys["alice"]) as as_alice,
            ):
                await eventually(lambda: backend(gateway, "web")["state"] == "ready", what="web ready")
                with pytest.raises(MCPError) as refused:  # as for a tool that does not exist
                    await as_bob.call_tool("web_whoami", {})
                assert (refused.value.code, refused.value.message) == (-32602, "Unknown tool: 'web_whoami'")
                first.__exit__(None, None, None)
                stopped = True
                await eventually(lambda: backend(gateway, "web")["state"] != "ready", what="web out of service")
                assert backend(gateway, "web")["last_error"]  # the detail stays in /readyz
                # bob may not use it: the same answer as while the backend was up, nothing about the backend.
                with pytest.raises(MCPError) as refused_down:
                    await as_bob.call_tool("web_whoami", {})
                assert refused_down.value.error == refused.value.error
                # alice may: told the backend is down, without its URL or the connection error.
                down = await as_alice.call_tool("web_whoami", {})
                assert down.is_error
                message = text(down)
                assert "tool 'web_whoami' is served by backend 'web', which is" in message
                assert url not in message and str(port) not in message and "Error" not in message
            await eventually(lambda: len(audited_calls(audit, "web_whoami")) == 3, what="three audited calls")
        assert audited_calls(audit, "web_whoami") == [("bob", "denied"), ("bob", "denied"), ("alice", "failure")]
    finally:
        if not stopped:
            first.__exit__(None, None, None)


def audited_calls(audit: Path, tool: str) -> list[tuple[str, str]]:
    """(user, outcome) of each audited call of `tool`, in order."""
    events = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()] if audit.exists() else []
    return [
        (e["subjects"].get("user_id"), e["outcome"])
        for e in events
        if e["type"] == "mcp_tool_call" and e["target"].get("name") == tool
    ]


async def test_http_backend_stopped_and_started_again_is_reconnected(tmp_path: Path) -> None:
    port = free_port()
    first = http_demo_backend(port)
    url = first.__enter__()
    stopped = False
    try:
        config = {
            "backends": [{"name": "web", "transport": "streamable-http", "url": url}, demo_backend("local")],
            **FAST,
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            async with Client(gateway.url) as client:
                assert (await whoami(client, "web_whoami"))["pid"]
                first.__exit__(None, None, None)
                stopped = True
                await eventually(
                    lambda: backend(gateway, "web")["health"]["state"] == "unhealthy", what="web unhealthy"
                )
                await eventually(
                    lambda: backend(gateway, "web")["state"] != "ready",
                    what="web out of service",
                )
                tools = {tool.name for tool in (await client.list_tools()).tools}
                assert "web_whoami" not in tools and "local_whoami" in tools
                assert not (await client.call_tool("local_slow_echo", {"message": "x", "seconds": 0})).is_error
                with http_demo_backend(port):
                    await eventually(
                        lambda: backend(gateway, "web")["state"] == "ready", within=30, what="web reconnected"
                    )
                    await eventually(lambda: backend(gateway, "web")["circuit"]["state"] == "closed", what="closed")
                    assert (await whoami(client, "web_whoami"))["pid"]
    finally:
        if not stopped:
            first.__exit__(None, None, None)


async def found_backends(client: Client, query: str) -> set[str]:
    result = await client.call_tool("find_tool", {"query": query, "limit": 20})
    assert result.structured_content is not None, text(result)
    return {tool["backend"] for tool in result.structured_content["tools"]}


async def test_an_optimized_backend_that_comes_back_is_not_embedded_again(tmp_path: Path) -> None:
    """Its tools leave find_tool while it is down and return with the vectors kept for them."""
    port = free_port()
    with http_demo_backend(port) as url:
        config = {
            "backends": [{"name": "web", "transport": "streamable-http", "url": url}, demo_backend("local")],
            "optimizer": {"enabled": True, "index_dir": str(tmp_path / "indexes")},
            **FAST,
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            async with Client(gateway.url) as client:
                with anyio.fail_after(120):
                    while (await client.call_tool("find_tool", {"query": "note"})).structured_content[  # type: ignore[index]  # noqa: ASYNC110
                        "ranking"
                    ] != "hybrid":
                        await anyio.sleep(0.3)
                assert await found_backends(client, "save a note") == {"web", "local"}
    # The backend went away with its context; the gateway above is gone too. A new gateway, same index
    # (wide log lines: one record per line):
    first = http_demo_backend(port)
    url = first.__enter__()
    stopped = False
    try:
        with running_gateway(write_config(tmp_path, config)) as gateway:
            async with Client(gateway.url) as client:
                await eventually(lambda: backend(gateway, "web")["state"] == "ready", what="web ready")
                first.__exit__(None, None, None)
                stopped = True
                await eventually(lambda: backend(gateway, "web")["state"] != "ready", what="web out of service")
                await eventually(lambda: "removed 5" in gateway.output(), what="web's tools removed from the index")
                assert await found_backends(client, "save a note") == {"local"}
                with http_demo_backend(port):
                    await eventually(lambda: backend(gateway, "web")["state"] == "ready", within=30, what="back")
                    await eventually(lambda: back_in_index(gateway.output()), within=60, what="web back in the index")
                    assert await found_backends(client, "save a note") == {"web", "local"}
        updates = [line for line in gateway.output().splitlines() if "index updated: embedded" in line]
        assert len(updates) >= 3 and all("embedded 0," in line for line in updates), gateway.output()
    finally:
        if not stopped:
            first.__exit__(None, None, None)


def back_in_index(log: str) -> bool:
    """Whether a vector index update after the one that removed web's 5 tools holds as many tools as before
    it. (Counting "index updated" lines raced: "keyword index updated" lines count too.)"""
    updates = [line for line in log.splitlines() if "index updated: embedded" in line]
    removed = next((i for i, line in enumerate(updates) if "removed 5" in line), None)
    if removed is None:
        return False
    full = max(_tools_in(line) for line in updates[:removed])
    return any(_tools_in(line) == full for line in updates[removed + 1 :])


def _tools_in(update: str) -> int:
    found = re.search(r"\((\d+) tools", update)
    return int(found.group(1)) if found else -1


def dead_backends(secret: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "crashes",
            "command": sys.executable,
            "args": ["-c", "raise SystemExit(3)"],
            "env": {"API_TOKEN": secret},
        },
        {
            "name": "nowhere",
            "transport": "streamable-http",
            "url": f"http://127.0.0.1:{free_port()}/mcp",
            "headers": {"Authorization": f"Bearer {secret}-header"},
        },
    ]


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_fail_mode_refuses_to_start_naming_the_backends_that_could_not_connect(tmp_path: Path, transport: str) -> None:
    config = {
        "backends": [demo_backend("live"), *dead_backends("sekrit-one-1234")],
        "failure": {"mode": "fail"},
        "timeouts": {"connect": 5.0},
    }
    path = write_config(tmp_path, config)
    how = ["--port", str(free_port())] if transport == "http" else ["--stdio"]
    proc = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(path), *how],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.PIPE if transport == "stdio" else subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    # 1: a failure a restart may get past (the backends may come up), said in lines, not a traceback
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    assert "could not connect" in output and "crashes" in output and "nowhere" in output
    assert "live (" not in output.split("could not connect")[1].splitlines()[0]
    assert "sekrit-one" not in output


async def test_best_effort_serves_the_backends_that_connected_and_never_shows_a_secret(tmp_path: Path) -> None:
    secret = "sekrit-two-5678"
    config = {"backends": [demo_backend("live"), *dead_backends(secret)], **FAST, "timeouts": {"connect": 5.0}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        answer = httpx2.get(f"{gateway.base}/readyz", timeout=5.0)
        body = answer.json()
        assert body["status"] == "degraded"
        assert answer.status_code == 200  # best_effort: still serving what is up, so keep sending traffic
        states = {b["name"]: b["state"] for b in body["backends"]}
        assert states["live"] == "ready" and states["crashes"] != "ready" and states["nowhere"] != "ready"
        async with Client(gateway.url) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "live_whoami" in tools and not any(name.startswith(("crashes_", "nowhere_")) for name in tools)
            assert not (await client.call_tool("live_slow_echo", {"message": "x", "seconds": 0})).is_error
        await anyio.sleep(1.0)  # a few reconnect attempts and health checks get logged
        assert secret not in json.dumps(readyz(gateway))
    assert secret not in gateway.output()


async def test_client_cancellation_reaches_the_backend(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], **FAST})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            with anyio.move_on_after(0.7):
                await client.call_tool("notes_slow_echo", {"message": "never", "seconds": 30})
            counts: dict[str, Any] = {}

            def cancelled() -> bool:
                return bool(counts.get("slow_echo_cancelled"))

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not cancelled():
                counts = await whoami(client, "notes_whoami")
                await anyio.sleep(0.2)
            assert counts["slow_echo_cancelled"] == 1
            # The breaker took no verdict from a cancelled call.
            assert backend(gateway, "notes")["circuit"]["state"] == "closed"
