"""Throughput against the peer: `hey` drives 32 concurrent connections of tools/call POSTs for a fixed time
at `vmcp serve` and at mcp-proxy, both in front of the demo backend over stdio, alternating in one run.

    .venv/bin/python bench/load.py --peer [--clients 32] [--seconds 20]

Each side gets its cheapest self-contained request, so no handshake is in the loop: the gateway a
2026-07-28 POST (no session), mcp-proxy (`--stateless`, it serves only 2025-11-25) a 2025-11-25 POST
without a session. Each side runs twice for half the time, in the order A B B A. Prints calls/s, p50/p99,
HTTP errors, the server's RSS before and after, and how busy `hey` itself was (the load generator must not
be the bottleneck: its share of one core is printed). Needs `hey` (`make setup-dev` installs it as root; else `apt-get install hey`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import psutil
from rich.console import Console
from rich.table import Table

from bench.peer import PEER_VENV, running_peer
from eval.metrics import percentile
from tests.support import demo_backend, running_gateway, write_config

console = Console()
MODERN = "2026-07-28"
ECHO = {"message": "x", "seconds": 0}


@dataclass
class Target:
    label: str
    url: str
    body: dict[str, object]
    headers: dict[str, str]
    pid: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rss_mb: list[float] = field(default_factory=list)
    driver_busy: list[float] = field(default_factory=list)


def modern_call(tool: str) -> tuple[dict[str, object], dict[str, str]]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "hey", "version": "1"},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": ECHO, "_meta": meta},
    }
    return body, {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool}


def legacy_call(tool: str) -> tuple[dict[str, object], dict[str, str]]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": ECHO}}, {}


def answered(target: Target) -> str:
    """One request, checked by hand: the body must hold a result (hey sees only HTTP statuses)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **target.headers}
    response = httpx2.post(target.url, json=target.body, headers=headers, timeout=30)
    text = response.text
    if response.status_code != 200 or '"result"' not in text or '"isError":true' in text:
        raise SystemExit(f"{target.label}: not a result: HTTP {response.status_code} {text[:300]}")
    return response.headers.get("content-type", "")


def drive(target: Target, clients: int, seconds: float) -> None:
    """`hey` for `seconds` at `clients` connections; its per-request CSV is added to `target`."""
    hey = shutil.which("hey")
    assert hey is not None
    # hey's CSV goes to a file: through a pipe nobody reads until it exits, a long run would fill it and stall.
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body, tempfile.TemporaryFile("w+") as rows:
        json.dump(target.body, body)
        body.flush()
        command = [hey, "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-D", body.name, "-o", "csv"]
        command += ["-T", "application/json", "-H", "Accept: application/json, text/event-stream"]
        for name, value in target.headers.items():
            command += ["-H", f"{name}: {value}"]
        began = time.monotonic()
        proc = subprocess.Popen([*command, target.url], stdout=rows)
        driver = psutil.Process(proc.pid)
        cpu = driver.cpu_times()
        while proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                cpu = driver.cpu_times()  # the last reading before it exits
            time.sleep(0.5)
        rows.seek(0)
        out = rows.read()
    wall = time.monotonic() - began
    target.seconds += wall
    target.driver_busy.append((cpu.user + cpu.system) / wall)
    for row in csv.DictReader(io.StringIO(out)):
        status = row["status-code"]
        if status == "200":
            target.latencies_ms.append(float(row["response-time"]) * 1000)
        else:
            target.errors[status] = target.errors.get(status, 0) + 1


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def report(targets: list[Target], clients: int, driver: str = "hey") -> None:
    table = Table(title=f"{clients} concurrent connections, tools/call of a trivial tool (demo backend, stdio)")
    for column in ("server", "calls/s", "p50 ms", "p99 ms", "errors", "RSS before → after MB", f"{driver}'s CPU"):
        table.add_column(column, justify="right")
    for t in targets:
        table.add_row(
            t.label,
            f"{len(t.latencies_ms) / t.seconds:.0f}",
            f"{percentile(t.latencies_ms, 50):.1f}",
            f"{percentile(t.latencies_ms, 99):.1f}",
            str(sum(t.errors.values())) + (f" {t.errors}" if t.errors else ""),
            f"{t.rss_mb[0]} → {t.rss_mb[-1]}",
            " / ".join(f"{busy:.0%}" for busy in t.driver_busy) + " of a core",
        )
    console.print(table)


def compare(clients: int, seconds: float, directory: Path, venv: Path = PEER_VENV) -> None:
    if shutil.which("hey") is None:
        raise SystemExit("hey not found: `make setup-dev` (as root) or `apt-get install hey` installs it")
    config = write_config(directory, {"backends": [demo_backend("web")], "server": {"log_level": "warning"}})
    with running_gateway(config, "--no-optimizer") as gateway, running_peer(venv, console, "--stateless") as peer:
        peer_proc = next(p for p in psutil.Process().children() if "mcp-proxy" in " ".join(p.cmdline()))
        targets = [
            Target("mcp-proxy 0.13", peer, *legacy_call("slow_echo"), pid=peer_proc.pid),
            Target("vmcp-opt", gateway.url, *modern_call("web_slow_echo"), pid=gateway.proc.pid),
        ]
        for target in targets:
            console.print(f"{target.label}: answered as {answered(target)}")
            target.rss_mb.append(rss_mb(target.pid))
        for target in [*targets, *reversed(targets)]:  # A B B A: drift in the machine's load hits both
            drive(target, clients, seconds / 2)
            target.rss_mb.append(rss_mb(target.pid))
    report(targets, clients)
