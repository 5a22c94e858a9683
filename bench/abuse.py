"""A misbehaving backend, and a hostile HTTP client, against a real gateway process (issue 22), with figures.

One gateway over examples/backends/hostile_server.py and a well-behaved demo backend, on loopback. Each
attack runs while another process polls `/healthz` every 10 ms (bench/stalls.py); per attack it prints what happened, the
slowest `/healthz` answer during it (the event-loop stall a client would see), the gateway's CPU time and
its RSS before and after, and whether a distinctive secret showed anywhere. Bounded in count and time.
The client's attacks (rows 5, 7, 11, 12) run against a second gateway with a demo backend only; the
callers' (rows 1, 6: sampling clients, calls left waiting for input) against one fronting the conformance
backend, and row 8 (2026-07-28 calls against a 50,000-tool catalogue) against one with the optimizer off.

`--before REV` also starts a gateway running the package as it was at git revision REV (e.g. `main`, before
our own stdio transport) over the same backends, and alternates the large-result attacks between the two.

    .venv/bin/python bench/abuse.py [--big-mb 50] [--flood 2000] [--sessions 2000] [--slow 300] [--before REV]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import psutil
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.stalls import stall_watch  # noqa: E402
from tests.support import (  # noqa: E402
    EXAMPLES,
    Gateway,
    counting_http_server,
    demo_backend,
    running_gateway,
    write_config,
)

SECRET = "sekrit-abuse-7777"
REFETCH_WATCH = 10.0  # seconds /healthz is watched after a list_changed of the 50,000-tool backend
HOSTILE = EXAMPLES / "backends" / "hostile_server.py"


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def measured(
    base: str, proc: psutil.Process, attack: Callable[[], Awaitable[str]]
) -> tuple[str, float, float, float, float]:
    """(outcome, slowest /healthz in ms, gateway CPU s, RSS before MB, RSS after MB) of one attack."""
    rss_before = proc.memory_info().rss / 2**20
    cpu_before = sum(proc.cpu_times()[:2])
    with stall_watch(f"{base}/healthz") as stop:
        try:
            with anyio.fail_after(300):
                outcome = await attack()
        finally:
            slowest, _ = await anyio.to_thread.run_sync(stop)
    cpu = sum(proc.cpu_times()[:2]) - cpu_before
    return outcome, slowest, cpu, rss_before, proc.memory_info().rss / 2**20


def big_results(client: Client, size: int, count: int) -> Callable[[], Awaitable[str]]:
    """`count` calls at once for a result of `size` characters: how they ended and the slowest's time."""

    async def attack() -> str:
        outcomes: list[str] = []

        async def one() -> None:
            try:
                result = await client.call_tool("hostile_big", {"bytes": size})
                outcomes.append(f"error result '{text(result)[:40]}'" if result.is_error else "passed on")
            except MCPError as exc:
                outcomes.append(f"JSON-RPC error '{str(exc)[:40]}'")

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(one)
        return f"{', '.join(sorted(set(outcomes)))} in {time.perf_counter() - started:.1f} s"

    return attack


@contextlib.contextmanager
def gateway_at(revision: str, directory: Path, config: dict[str, object]) -> Iterator[Gateway]:
    """A gateway running the package as it was at `revision` (git archive of vmcp_opt/), same config."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "vmcp_opt"], capture_output=True, check=True)
    directory.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, filter="data")
    with running_gateway(write_config(directory, config), env={"PYTHONPATH": str(directory)}, cwd=directory) as gateway:
        yield gateway


async def run(big_mb: int, flood: int, before: str | None) -> None:
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
                    listed = json.loads(text(await client.call_tool("hostile_stats", {})))["tools/list"]
                    await client.call_tool("hostile_flood", {"count": flood})
                    await anyio.sleep(2.5)  # the interval (1 s) passes: the trailing re-fetch runs
                    after = json.loads(text(await client.call_tool("hostile_stats", {})))["tools/list"]
                    return f"{flood} notifications -> {(after - listed) // 2} re-fetches"

                for name, attack in (
                    ("unservable tools (dup, bad schema, 100k name)", served),
                    ("ReDoS pattern ^(a+)+$ vs 30 a's + '!'", redos),
                    ("remote and file:// $ref", refs),
                    (f"list_changed flood x{flood}", list_changed_flood),
                ):
                    rows.append((name, *await measured(gateway.base, proc, attack)))
                sides = [("", gateway, client)]
                async with contextlib.AsyncExitStack() as stack:
                    if before is not None:
                        old = stack.enter_context(gateway_at(before, Path(tmp) / "before", config))
                        sides.insert(0, (f" [{before}]", old, await stack.enter_async_context(Client(old.url))))
                    # An allowed 8 MB result first (the circuit is still closed), then the oversize ones; the
                    # sides alternate, so the machine's load hits both alike.
                    for megabytes, count in ((8, 1), (big_mb, 1), (big_mb, 3)):
                        for label, side, side_client in sides:
                            name = f"{count} x {megabytes} MB result at once (cap 10 MB){label}"
                            attack = big_results(side_client, megabytes * 2**20, count)
                            rows.append((name, *await measured(side.base, psutil.Process(side.proc.pid), attack)))
                readyz = httpx2.get(f"{gateway.base}/readyz", timeout=10.0).text
        log = gateway.output()
    stderr_leak = SECRET in log or SECRET in readyz
    print_rows(rows)
    print(f"secret in the gateway's log or /readyz (backend stderr, env): {stderr_leak}")


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b", "version": "0"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def run_client_attacks(sessions: int, slow: int) -> None:
    """Rows 5, 7, 11, 12: what one HTTP client can make the gateway hold."""
    limits = {"http_header_timeout": 2, "max_connections": max(50, slow // 2)}
    with tempfile.TemporaryDirectory() as tmp:
        config = {"backends": [demo_backend("notes", env={"API_TOKEN": SECRET})], "limits": limits}
        with running_gateway(write_config(Path(tmp), config)) as gateway:
            proc = psutil.Process(gateway.proc.pid)
            host = {"Host": f"127.0.0.1:{gateway.port}"}

            async def initialize_flood() -> str:
                statuses: dict[int, int] = {}
                transport = httpx2.AsyncHTTPTransport(local_address="127.0.0.1")
                async with httpx2.AsyncClient(transport=transport, timeout=60) as http:
                    limiter = anyio.CapacityLimiter(20)

                    async def one() -> None:
                        async with limiter:
                            status = (await http.post(gateway.url, json=INITIALIZE, headers=ACCEPT)).status_code
                            statuses[status] = statuses.get(status, 0) + 1

                    async with anyio.create_task_group() as group:
                        for _ in range(sessions):
                            group.start_soon(one)
                other = httpx2.Client(transport=httpx2.HTTPTransport(local_address="127.0.0.2"), timeout=60)
                with other:
                    others = other.post(gateway.url, json=INITIALIZE, headers={**ACCEPT, **host}).status_code
                return f"{dict(sorted(statuses.items()))}; another address: {others}"

            def hold_slow(count: int, partial: bytes) -> tuple[int, int]:
                socks = []
                for _ in range(count):
                    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
                    sock.sendall(partial)
                    socks.append(sock)
                closed = refused = 0
                for sock in socks:
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    refused += data.startswith(b"HTTP/1.1 503")
                    closed += data == b""
                    sock.close()
                return closed, refused

            async def slow_headers() -> str:
                started = time.perf_counter()
                closed, refused = await anyio.to_thread.run_sync(
                    hold_slow, slow, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                )
                took = time.perf_counter() - started
                return f"{closed} closed by timeout, {refused} refused at cap, all in {took:.1f} s"

            async def idle_connections() -> str:
                closed, refused = await anyio.to_thread.run_sync(hold_slow, slow, b"")
                return f"{closed} idle closed, {refused} refused at cap {limits['max_connections']}"

            async def bad_ids() -> str:
                async with httpx2.AsyncClient(timeout=60) as http:
                    codes, largest = [], 0
                    for request_id in [None, True, {"x": "y" * 10_000}, [1]] * 50:
                        body = {**INITIALIZE, "id": request_id}
                        response = await http.post(gateway.url, headers=ACCEPT, content=json.dumps(body))
                        codes.append(response.json()["error"]["code"] if response.status_code == 400 else 0)
                        largest = max(largest, len(response.content))
                return f"{codes.count(-32600)} of {len(codes)} answered -32600, answers <= {largest} B"

            async def rebinding() -> str:
                async with httpx2.AsyncClient(timeout=60) as http:
                    evil = await http.get(f"{gateway.base}/readyz", headers={"Host": "evil.example"})
                    port = await http.get(f"{gateway.base}/readyz", headers={"Host": "127.0.0.1:evil.example.com"})
                return f"/readyz for evil.example: {evil.status_code}, 127.0.0.1:evil.example.com: {port.status_code}"

            rows = [
                (name, *await measured(gateway.base, proc, attack))
                for name, attack in (
                    (f"initialize flood x{sessions} (row 5)", initialize_flood),
                    (f"slow-header connections x{slow} (row 7)", slow_headers),
                    (f"idle connections x{slow} (row 7)", idle_connections),
                    ("ids null/bool/object/array x200 (row 12)", bad_ids),
                    ("DNS-rebinding Host on /readyz (row 11)", rebinding),
                )
            ]
        log = gateway.output()
    print_rows(rows)
    print(f"secret in the gateway's log: {SECRET in log}; tracebacks in it: {log.count('Traceback')}")


CONFORMANCE = EXAMPLES / "backends" / "conformance_server.py"


async def answer_sampling(context: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="ok"), model="m")


def backend_processes(gateway: Gateway, script: Path) -> int:
    count = 0
    for child in gateway.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            count += any(str(script) in part for part in child.cmdline())
    return count


def as_caller(gateway: Gateway, credential: str, **options: object) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {credential}"}, timeout=60)
    return Client(streamable_http_client(gateway.url, http_client=http), **options)  # type: ignore[arg-type]


async def run_caller_attacks(clients: int, tools: int) -> None:
    """Rows 1, 6 and 8: what callers can make the gateway hold, and a 2026-07-28 call's cost in a big catalogue."""
    conformance = {"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE)]}
    # One address for every client: the per-caller share (max_dedicated_sessions_per_caller) set to the total, so
    # the row shows the total's cap as before session 25 made the default an eighth of it.
    limits = {"max_dedicated_sessions": 8, "max_dedicated_sessions_per_caller": 8, "dedicated_idle_timeout": 60}
    config = {"backends": [conformance], "aggregation": {"conflict_resolution": "priority"}, "limits": limits}
    with tempfile.TemporaryDirectory() as tmp, running_gateway(write_config(Path(tmp), config)) as gateway:
        proc = psutil.Process(gateway.proc.pid)

        async def sampling_clients() -> str:
            async with contextlib.AsyncExitStack() as stack:
                connected = [
                    await stack.enter_async_context(
                        Client(gateway.url, mode="legacy", sampling_callback=answer_sampling)
                    )
                    for _ in range(clients)
                ]
                async with anyio.create_task_group() as group:
                    for client in connected:
                        group.start_soon(client.call_tool, "test_simple_text", {})
                during = backend_processes(gateway, CONFORMANCE)
            await anyio.sleep(2)
            after = backend_processes(gateway, CONFORMANCE)
            return f"{clients} clients: {during} backend processes (cap 8 + shared), {after} after they left"

        async def waiting_calls() -> str:
            async with (
                as_caller(gateway, "alice", sampling_callback=answer_sampling) as alice,
                as_caller(gateway, "bob", sampling_callback=answer_sampling) as bob,
            ):
                held = refused = 0
                for _ in range(5):  # never answered
                    try:
                        await alice.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
                        held += 1
                    except MCPError:
                        refused += 1
                other = await bob.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
                served = isinstance(other, types.InputRequiredResult)
            return f"one caller: {held} waiting, {refused} refused; another caller served: {served}"

        rows = [
            (f"{clients} sampling clients (row 1)", *await measured(gateway.base, proc, sampling_clients)),
            ("5 never-answered input rounds (row 6)", *await measured(gateway.base, proc, waiting_calls)),
        ]
    hostile = {
        "name": "hostile",
        "command": sys.executable,
        "args": [str(HOSTILE)],
        "env": {"HOSTILE_TOOLS": str(tools)},
    }
    config = {"backends": [hostile], "optimizer": {"enabled": False}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_gateway(write_config(Path(tmp), config), ready_timeout=300) as gateway,
    ):
        proc = psutil.Process(gateway.proc.pid)
        calls = 20

        async with as_caller(gateway, "carol") as carol:

            async def first_call() -> str:
                started = time.perf_counter()
                await carol.call_tool("hostile_echo", {"message": "first"})
                return f"first call (the SDK client lists the tools once): {time.perf_counter() - started:.1f} s"

            async def modern_calls() -> str:
                cpu = sum(proc.cpu_times()[:2])
                for _ in range(calls):
                    await carol.call_tool("hostile_echo", {"message": "hi"})
                per_call = (sum(proc.cpu_times()[:2]) - cpu) / calls * 1000
                return f"{calls} calls with arguments: {per_call:.1f} ms CPU each"

            async def refetch() -> str:
                started = time.perf_counter()
                await carol.call_tool("hostile_flood", {"count": 1})
                await anyio.sleep(REFETCH_WATCH)  # the re-fetch, its screen and the catalogue's rebuild
                return f"one list_changed, watched for {time.perf_counter() - started:.0f} s"

            for name, attack in (
                (f"2026-07-28 first call, {tools:,} tools (row 8)", first_call),
                (f"2026-07-28 calls, {tools:,} tools (row 8)", modern_calls),
                (f"re-fetch of {tools:,} tools (row 9)", refetch),
            ):
                rows.append((name, *await measured(gateway.base, proc, attack)))
    print_rows(rows)


def print_rows(rows: list[tuple[str, str, float, float, float, float]]) -> None:
    print(f"{'attack':48} {'outcome':52} {'/healthz max ms':>15} {'CPU s':>6} {'RSS MB':>13}")
    for name, outcome, stall, cpu, before, after in rows:
        print(f"{name:48} {outcome:52} {stall:15.1f} {cpu:6.2f} {before:6.0f}->{after:<6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=2000, help="initialize requests of the session flood")
    parser.add_argument("--slow", type=int, default=300, help="slow-header and idle connections")
    parser.add_argument("--only", choices=["backend", "client", "caller"], help="run one part")
    parser.add_argument("--clients", type=int, default=15, help="sampling clients of row 1")
    parser.add_argument("--tools", type=int, default=50_000, help="catalogue size of row 8")
    parser.add_argument("--before", metavar="REV", help="also run the large-result rows on the code at this revision")
    args = parser.parse_args()
    if args.only in (None, "backend"):
        anyio.run(run, args.big_mb, args.flood, args.before)
    if args.only in (None, "client"):
        anyio.run(run_client_attacks, args.sessions, args.slow)
    if args.only in (None, "caller"):
        anyio.run(run_caller_attacks, args.clients, args.tools)


if __name__ == "__main__":
    main()
