"""A backend's big answer must not hold the gateway's event loop (F9), through a real gateway process, a real
stdio backend writing raw JSON-RPC lines and a real SDK client.

An answer with more values than `limits.max_result_values` (counted on its raw JSON before it is parsed) is
refused with an error naming the backend, the count and the setting; the backend stays in service and another
backend's calls are answered. A notification past it is dropped with a warning, the backend kept. A stdio line
within `limits.max_result_bytes` carries a result within it: it is not measured again (the measure counted 8 a
number, and refused 30,000 zeros, a 90 kB line, as over a 100 kB cap). Over streamable HTTP the body's values
are counted as it arrives, a listing page's not.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from tests.test_failure_recovery import backend, text

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# A stdio backend writing raw JSON-RPC lines; its tools answer with `n` values of some shape.
VALUES_SERVER = r"""
import json, sys

out = sys.stdout.buffer
LISTED = int(sys.argv[1]) if len(sys.argv) > 1 else 0


def emit(obj):
    out.write((json.dumps(obj) + "\n").encode())
    out.flush()


def tool(name):
    props = {"n": {"type": "integer"}, "k": {"type": "integer"}}
    return {"name": name, "description": f"tool {name}", "inputSchema": {"type": "object", "properties": props}}


TOOLS = [tool(name) for name in ("ok", "zeros", "lists", "texts", "csv", "notify")]
TOOLS += [tool(f"extra{i}") for i in range(LISTED)]

for raw in sys.stdin.buffer:
    msg = json.loads(raw)
    mid, method = msg.get("id"), msg.get("method")
    if mid is None:
        continue
    if method == "initialize":
        result = {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "values", "version": "1"},
        }
        emit({"jsonrpc": "2.0", "id": mid, "result": result})
    elif method == "ping":
        emit({"jsonrpc": "2.0", "id": mid, "result": {}})
    elif method == "tools/list":
        emit({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        name, args = msg["params"]["name"], msg["params"].get("arguments") or {}
        n = int(args.get("n", 0))
        res = {"content": [{"type": "text", "text": "fine"}]}
        if name == "zeros":
            res["structuredContent"] = {"a": [0] * n}
        elif name == "lists":
            res["structuredContent"] = {"items": [[i] for i in range(n)]}
        elif name == "texts":
            res = {"content": [{"type": "text", "text": ""} for _ in range(n)]}
        elif name == "csv":
            res = {"content": [{"type": "text", "text": "a,b,[c],{d}\n" * n}]}
        elif name == "notify":
            fat = {"jsonrpc": "2.0", "method": "notifications/message",
                   "params": {"level": "info", "data": [[i] for i in range(n)]}}
            for _ in range(int(args.get("k", 1))):
                emit(fat)
        emit({"jsonrpc": "2.0", "id": mid, "result": res})
    else:
        emit({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no"}})
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def values_backend(tmp_path: Path, listed: int = 0) -> dict[str, Any]:
    script = tmp_path / "values_server.py"
    script.write_text(VALUES_SERVER, encoding="utf-8")
    return {"name": "h", "command": sys.executable, "args": [str(script), str(listed)]}


def gateway_config(backends: list[dict[str, Any]], **limits: Any) -> dict[str, Any]:
    # No health check runs within a test: the backend's state is the calls' doing alone.
    return {"backends": backends, "limits": limits, "health": {"interval": 3600}, "timeouts": {"call": 30}}


def assert_refused_for_values(result: types.CallToolResult, backend_name: str, count: str) -> None:
    message = text(result)
    assert result.is_error, message
    assert f"backend '{backend_name}'" in message and "limits.max_result_values" in message, message
    assert count in message, message


def assert_kept_in_service(gateway: Any, name: str) -> None:
    state = backend(gateway, name)
    assert state["state"] == "ready" and state["restarts"] == 0, state
    assert state["circuit"]["state"] == "closed", state


class HealthzProbe:
    """The slowest /healthz answer while it runs (a thread of its own: the test's client shares nothing with it)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthzProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            httpx2.get(f"{self.base}/healthz", timeout=60.0).raise_for_status()
            self.slowest = max(self.slowest, time.monotonic() - started)
            time.sleep(0.05)


async def test_an_answer_with_too_many_values_is_refused_and_the_backend_kept(tmp_path: Path) -> None:
    config = gateway_config([values_backend(tmp_path), demo_backend("demo")])
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            # 1.3M zeros: a 2.6 MB line, far under limits.max_result_bytes (10 MiB).
            with anyio.fail_after(60):
                zeros = await client.call_tool("h_zeros", {"n": 1_300_000})
            assert_refused_for_values(zeros, "h", "1,300,0")
            assert "(65,536)" in text(zeros), text(zeros)
            # Three at once of 500,000 one-item lists (4.9 MB each), with another backend's call and /healthz
            # meanwhile: it took 5 s of event loop, and two of the calls hit their timeout.
            results: list[types.CallToolResult] = []

            async def lists() -> None:
                results.append(await client.call_tool("h_lists", {"n": 500_000}))

            with HealthzProbe(gateway.base) as probe, anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    for _ in range(3):
                        group.start_soon(lists)
                    demo = await client.call_tool("demo_search_notes", {"query": "x"})
            assert not demo.is_error, text(demo)
            assert len(results) == 3
            for result in results:
                assert_refused_for_values(result, "h", "1,000,0")
            assert probe.slowest < 2.5, f"/healthz took {probe.slowest:.2f}s while the answers came"
            with anyio.fail_after(60):
                texts = await client.call_tool("h_texts", {"n": 100_000})
            assert_refused_for_values(texts, "h", "(65,536)")
            with anyio.fail_after(60):
                # One text of 200,000 commas and brackets: one value, passed on whole.
                csv = await client.call_tool("h_csv", {"n": 50_000})
            assert not csv.is_error and text(csv) == "a,b,[c],{d}\n" * 50_000
            # The backend answered, correctly and in time: still in service, its circuit untouched.
            assert_kept_in_service(gateway, "h")
            with anyio.fail_after(60):
                fine = await client.call_tool("h_ok", {})
            assert not fine.is_error and text(fine) == "fine"
    assert "Traceback" not in gateway.output()


async def test_a_notification_with_too_many_values_is_dropped_and_the_backend_kept(tmp_path: Path) -> None:
    config = gateway_config([values_backend(tmp_path)])
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            with anyio.fail_after(60):
                # Ten notifications of 1.2M values (12 MB each: past the line cap they were dropped unparsed
                # already), then ten of 300,000 (2.6 MB, under it): each was parsed, holding the event loop.
                first = await client.call_tool("h_notify", {"n": 1_200_000, "k": 10})
                second = await client.call_tool("h_notify", {"n": 300_000, "k": 10})
            assert text(first) == "fine" and text(second) == "fine"
            assert_kept_in_service(gateway, "h")
    log = gateway.output()
    assert "limits.max_result_values (65,536): dropped unparsed (no response id at either end)" in log, log[-3000:]


async def test_a_stdio_line_within_the_cap_is_not_measured_again(tmp_path: Path) -> None:
    config = gateway_config([values_backend(tmp_path)], max_result_bytes=100_000)
    with running_gateway(write_config(tmp_path, config)) as gateway:
        # A 2025-11-25 client: its calls go on the backend's shared session (backends/connection.py); a 2026-07-28
        # client's on a session of its own (backends/session_pool.py), which measures as it did.
        async with Client(gateway.url, mode="legacy") as client:
            with anyio.fail_after(60):
                # 30,000 zeros: a 90 kB line (`0, ` each), within the 100 kB cap; the old measure counted 240,000.
                zeros = await client.call_tool("h_zeros", {"n": 30_000})
            assert not zeros.is_error, text(zeros)
            assert zeros.structured_content == {"a": [0] * 30_000}
            with anyio.fail_after(60):
                # Past the cap (a 150 kB line, under the 1.1 MB line cap): measured, refused.
                over = await client.call_tool("h_zeros", {"n": 50_000})
            assert over.is_error and "limits.max_result_bytes" in text(over), text(over)
            assert "backend 'h'" in text(over)
            assert_kept_in_service(gateway, "h")


async def test_an_http_answer_with_too_many_values_is_not_read_further(tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    # The upstream gateway passes everything on; the one under test counts what comes from it.
    upstream = gateway_config([values_backend(tmp_path, listed=600)], max_result_values=10_000_000)
    with running_gateway(write_config(tmp_path / "up", upstream)) as up:
        config = gateway_config(
            [{"name": "up", "transport": "streamable-http", "url": up.url}, demo_backend("demo")],
            max_result_values=1024,
        )
        with running_gateway(write_config(tmp_path, config)) as gateway:
            async with Client(gateway.url) as client:
                # Its one page of 606 tools has ~6,000 values: a listing is not counted.
                tools = await client.list_tools()
                assert sum(tool.name.startswith("up_h_") for tool in tools.tools) == 606
                with anyio.fail_after(60):
                    zeros = await client.call_tool("up_h_zeros", {"n": 200_000})
                assert_refused_for_values(zeros, "up", "1,024")
                assert "not read further" in text(zeros), text(zeros)
                with anyio.fail_after(60):
                    few = await client.call_tool("up_h_zeros", {"n": 500})
                assert not few.is_error and few.structured_content == {"a": [0] * 500}
                assert_kept_in_service(gateway, "up")
