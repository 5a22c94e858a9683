"""A stdio backend's stderr against a real gateway process: megabytes without a newline, a flood of lines, and a
crash at start after both. The gateway keeps serving, holds none of it (its RSS before and after), logs each
line cut to a few KB and at a bounded rate, counting what it drops, and a failure's reason shows a cut line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import psutil
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MIB = 2**20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# A backend on the SDK. At start it writes NOISY_START_MIB MiB of stderr without a newline; NOISY_EXIT=1 then
# writes a last line (a long one) and exits instead of serving. Its tools: `shout` writes `mib` MiB of stderr
# without a newline, `flood` ends any such line and writes `count` short lines.
NOISY_SERVER = r"""
import os
import sys

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

PIECE = b"x" * 65536


def shout(mib):
    for _ in range(mib * 16):
        sys.stderr.buffer.write(PIECE)
    sys.stderr.buffer.flush()


shout(int(os.environ.get("NOISY_START_MIB", "0")))
if os.environ.get("NOISY_EXIT"):
    sys.stderr.buffer.write(b"\nfatal: cannot start: " + b"y" * 100_000 + b"\n")
    sys.stderr.buffer.flush()
    sys.exit(3)

OBJECT = {"type": "object", "properties": {"mib": {"type": "integer"}, "count": {"type": "integer"}}}
TOOLS = [types.Tool(name="shout", input_schema=OBJECT), types.Tool(name="flood", input_schema=OBJECT)]


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx, params):
    arguments = params.arguments or {}
    if params.name == "shout":
        shout(int(arguments.get("mib", 0)))
    else:
        lines = b"".join(b"flood %d\n" % i for i in range(int(arguments.get("count", 0))))
        sys.stderr.buffer.write(b"\n" + lines)
        sys.stderr.buffer.flush()
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{params.name} done")])


async def main():
    server = Server("noisy", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
"""


def noisy_backend(directory: Path, **env: str) -> dict[str, Any]:
    script = directory / "noisy_server.py"
    script.write_text(NOISY_SERVER, encoding="utf-8")
    return {"name": "noisy", "command": sys.executable, "args": [str(script)], "env": env}


@contextmanager
def noisy_gateway(directory: Path, **env: str) -> Iterator[Gateway]:
    with running_gateway(write_config(directory, {"backends": [noisy_backend(directory, **env)]})) as gateway:
        yield gateway


def stderr_lines(log: str, start: str) -> list[str]:
    return [line for line in log.splitlines() if f"backend noisy stderr: {start}" in line]


def logged_within(gateway: Gateway, wanted: str, seconds: float) -> str:
    """The gateway's log once it holds `wanted`, or after `seconds` (a generous bound, not a measurement)."""
    deadline = time.monotonic() + seconds
    while wanted not in gateway.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    return gateway.output()


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_megabytes_of_stderr_without_a_newline_are_not_held_and_the_backend_serves(tmp_path: Path) -> None:
    with noisy_gateway(tmp_path, NOISY_START_MIB="8") as gateway:
        async with Client(gateway.url) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == {"noisy_shout", "noisy_flood"}
            await client.call_tool("noisy_shout", {"mib": 1})  # warmed up: what the first calls allocate
            process = psutil.Process(gateway.proc.pid)
            before = process.memory_info().rss
            shouted = await client.call_tool("noisy_shout", {"mib": 64})
            after = process.memory_info().rss
            assert not shouted.is_error and text(shouted) == "shout done"
            again = await client.call_tool("noisy_flood", {"count": 1})
            assert not again.is_error and text(again) == "flood done"
        assert httpx2.get(f"{gateway.base}/healthz", timeout=10.0).status_code == 200
        log = gateway.output()
    # 64 MiB went through; a gateway keeping the line would have grown by at least that much.
    assert after - before < 24 * MIB, f"RSS grew by {(after - before) / MIB:.1f} MiB"
    [cut] = stderr_lines(log, "xxx")  # the start's 8 MiB, then more of the same line: one log line, cut
    assert len(cut) < 4096 and re.search(r"… \(a line longer than [\d,]+ bytes, cut\)$", cut), cut[-200:]
    assert len(log) < MIB
    assert stderr_lines(log, "flood 0")  # lines after the endless one are logged again


async def test_a_flood_of_stderr_lines_is_logged_at_a_bounded_rate_and_the_rest_counted(tmp_path: Path) -> None:
    count = 20_000
    with noisy_gateway(tmp_path) as gateway:
        async with Client(gateway.url) as client:
            flooded = await client.call_tool("noisy_flood", {"count": count})
            assert not flooded.is_error
            assert not (await client.call_tool("noisy_flood", {"count": 0})).is_error  # still serving
    log = gateway.output()  # complete: the gateway has stopped, and said how many lines it dropped
    logged = len(stderr_lines(log, "flood "))
    dropped = sum(int(n) for n in re.findall(r"backend noisy: (\d+) more stderr lines not logged", log))
    empty = sum(line.endswith("backend noisy stderr: ") for line in log.splitlines())
    assert logged < 500, f"{logged} of {count} stderr lines logged"
    # Every line is either in the log or in a count (with the empty line each call starts with).
    assert logged + empty + dropped == count + 2, (logged, empty, dropped)


async def test_the_count_of_dropped_stderr_lines_is_logged_while_the_backend_runs_quietly(tmp_path: Path) -> None:
    with noisy_gateway(tmp_path) as gateway:
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("noisy_flood", {"count": 5_000})).is_error
        # The backend writes nothing more and keeps running: the count must not wait for its exit.
        log = logged_within(gateway, "more stderr lines not logged", seconds=10)
    assert re.search(r"backend noisy: \d+ more stderr lines not logged", log)


def test_a_backend_that_exits_at_start_after_megabytes_of_stderr_shows_a_cut_last_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [noisy_backend(tmp_path, NOISY_START_MIB="16", NOISY_EXIT="1")]})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "backends", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    [summary] = json.loads(done.stdout)
    error = summary["last_error"]
    assert summary["state"] == "failed" and "its last stderr line: fatal: cannot start: yyy" in error, error
    assert len(error) < 1000, f"a reason of {len(error):,} characters"
    # Cut twice (by the relay, then for the reason): the length shown is still the line's, not the cut text's.
    shown = re.search(r"… \(a line longer than ([\d,]+) bytes, cut\)$", error)
    assert shown is not None and int(shown.group(1).replace(",", "")) > 8000, error[-120:]
    assert len(done.stdout) + len(done.stderr) < 64 * 1024
