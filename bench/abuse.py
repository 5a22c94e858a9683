"""A misbehaving backend against a real gateway process (issue 22, rows 2-4, 9, 10, 12), with figures.

One gateway over examples/backends/hostile_server.py and a well-behaved demo backend, on loopback. Each
attack runs while another task polls `/healthz` every 10 ms; per attack it prints what happened, the
slowest `/healthz` answer during it (the event-loop stall a client would see), the gateway's CPU time and
its RSS before and after, and whether a distinctive secret showed anywhere. Bounded in count and time.

    .venv/bin/python bench/abuse.py [--big-mb 50] [--flood 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import psutil
from mcp import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import (  # noqa: E402
    EXAMPLES,
    counting_http_server,
    demo_backend,
    running_gateway,
    write_config,
)

SECRET = "sekrit-abuse-7777"
HOSTILE = EXAMPLES / "backends" / "hostile_server.py"


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def measured(
    base: str, proc: psutil.Process, attack: Callable[[], Awaitable[str]]
) -> tuple[str, float, float, float, float]:
    """(outcome, slowest /healthz in ms, gateway CPU s, RSS before MB, RSS after MB) of one attack."""
    slowest = 0.0
    done = anyio.Event()

    async def poll() -> None:
        nonlocal slowest
        async with httpx2.AsyncClient() as http:
            while not done.is_set():
                started = time.perf_counter()
                await http.get(f"{base}/healthz", timeout=120.0)
                slowest = max(slowest, time.perf_counter() - started)
                await anyio.sleep(0.01)

    rss_before = proc.memory_info().rss / 2**20
    cpu_before = sum(proc.cpu_times()[:2])
    outcome = ""
    async with anyio.create_task_group() as group:
        group.start_soon(poll)
        try:
            with anyio.fail_after(300):
                outcome = await attack()
        finally:
            done.set()
    cpu = sum(proc.cpu_times()[:2]) - cpu_before
    return outcome, slowest * 1000, cpu, rss_before, proc.memory_info().rss / 2**20


async def run(big_mb: int, flood: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, counting_http_server() as (ref_base, hits):
        secret_file = Path(tmp) / "secret.json"
        secret_file.write_text(json.dumps({"type": "integer", "description": SECRET}), encoding="utf-8")
        hostile = {
            "name": "hostile",
            "command": sys.executable,
            "args": [str(HOSTILE)],
            "env": {
                "HOSTILE_TOKEN": SECRET,
                "HOSTILE_REF_URL": f"{ref_base}/s.json",
                "HOSTILE_REF_FILE": str(secret_file),
            },
        }
        config = {"backends": [hostile, demo_backend("notes")], "failure": {"mode": "fail"}}
        with running_gateway(write_config(Path(tmp), config)) as gateway:
            proc = psutil.Process(gateway.proc.pid)
            rows: list[tuple[str, str, float, float, float, float]] = []
            async with Client(gateway.url) as client:

                async def served() -> str:
                    names = {tool.name for tool in (await client.list_tools()).tools}
                    hostile_names = sorted(n for n in names if n.startswith("hostile_"))
                    return f"gateway up; hostile serves {len(hostile_names)} of 12 listed tools"

                async def redos() -> str:
                    started = time.perf_counter()
                    result = await client.call_tool("hostile_redos", {"a": "a" * 30 + "!"})
                    return f"refused={result.is_error} in {(time.perf_counter() - started) * 1000:.1f} ms"

                async def refs() -> str:
                    remote = await client.call_tool("hostile_remote_ref", {"a": "x"})
                    local = await client.call_tool("hostile_file_ref", {"a": "x"})
                    leaked = SECRET in text(remote) + text(local)
                    return f"URL fetches={len(hits)}, file contents shown={leaked}"

                async def list_changed_flood() -> str:
                    before = json.loads(text(await client.call_tool("hostile_stats", {})))["tools/list"]
                    await client.call_tool("hostile_flood", {"count": flood})
                    await anyio.sleep(2.5)  # the interval (1 s) passes: the trailing re-fetch runs
                    after = json.loads(text(await client.call_tool("hostile_stats", {})))["tools/list"]
                    return f"{flood} notifications -> {(after - before) // 2} re-fetches"

                async def big_result() -> str:
                    started = time.perf_counter()
                    result = await client.call_tool("hostile_big", {"bytes": big_mb * 2**20})
                    took = time.perf_counter() - started
                    return f"error={result.is_error} ({len(text(result))} chars) in {took:.1f} s"

                for name, attack in (
                    ("unservable tools (dup, bad schema, 100k name)", served),
                    ("ReDoS pattern ^(a+)+$ vs 30 a's + '!'", redos),
                    ("remote and file:// $ref", refs),
                    (f"list_changed flood x{flood}", list_changed_flood),
                    (f"{big_mb} MB result (cap 10 MB)", big_result),
                ):
                    rows.append((name, *await measured(gateway.base, proc, attack)))
                readyz = httpx2.get(f"{gateway.base}/readyz", timeout=10.0).text
        log = gateway.output()
    stderr_leak = SECRET in log or SECRET in readyz
    print(f"{'attack':48} {'outcome':52} {'/healthz max ms':>15} {'CPU s':>6} {'RSS MB':>13}")
    for name, outcome, stall, cpu, before, after in rows:
        print(f"{name:48} {outcome:52} {stall:15.1f} {cpu:6.2f} {before:6.0f}->{after:<6.0f}")
    print(f"secret in the gateway's log or /readyz (backend stderr, env): {stderr_leak}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--flood", type=int, default=2000)
    args = parser.parse_args()
    anyio.run(run, args.big_mb, args.flood)


if __name__ == "__main__":
    main()
