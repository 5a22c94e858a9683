"""The event loop's longest stall while a stdio gateway answers a 50,000-tool `tools/list`, and a `ping` sent right
behind each list.

A `vmcp serve --stdio` gateway over `examples/backends/catalog_server.py` (optimizer off, so `tools/list` is the
whole catalogue), its diagnostics listener watched from another process (`bench.stalls.stall_watch`: its slowest
`/healthz` answer is the stall another client, or a backend's message, would wait). The bench reads the list's line
as bytes and parses only the first one and the pings' answers, so its own work does not show.

    .venv/bin/python bench/stdio_list_stall.py [--tools 50000] [--rounds 10] [--together 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.stalls import stall_watch  # noqa: E402
from tests.support import EXAMPLES, free_port, stop_process, wait_http, write_config  # noqa: E402

CATALOG = EXAMPLES / "backends" / "catalog_server.py"


def send(pipe: IO[bytes], *messages: dict[str, Any]) -> None:
    pipe.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
    pipe.flush()


def answer(out: IO[bytes], request_id: object) -> bytes:
    """The raw line answering `request_id` (notifications skipped)."""
    while True:
        raw = out.readline()
        if not raw:
            raise SystemExit("the gateway closed stdout")
        head = raw[:200]
        if b'"method"' in head and b'"id"' not in head:
            continue
        if request_id == "list" and b'"id":"list' in head:
            return raw
        if json.loads(raw).get("id") == request_id:
            return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data", help="the catalogue server's tool data (its --data; default: its own)")
    parser.add_argument("--together", type=int, default=1, help="lists asked at once in a round (then one ping)")
    parser.add_argument("--stderr", help="where the gateway's stderr goes (default: dropped with the run)")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        data = ["--data", args.data] if args.data else []
        backend = {"name": "cat", "command": sys.executable, "args": [str(CATALOG), "--tools", str(args.tools), *data]}
        config = write_config(
            Path(directory),
            {
                "backends": [backend],
                "optimizer": {"enabled": False},
                "server": {"startup_wait": 120},
                "limits": {"max_result_bytes": 64 * 2**20},  # the backend lists its 50,000 tools in one page
                "telemetry": {"metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"}},
            },
        )
        with (Path(args.stderr) if args.stderr else Path(directory) / "stderr.log").open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=sink,
            )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            health = f"http://127.0.0.1:{port}/healthz"
            wait_http(health, timeout=120)
            init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}}
            send(proc.stdin, {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": init})
            answer(proc.stdout, "init")
            send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            send(proc.stdin, {"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
            first = answer(proc.stdout, "list")
            count = len(json.loads(first)["result"]["tools"])
            print(f"{count} tools listed, a line of {len(first) / 2**20:.1f} MiB")
            stalls = []
            for number in range(args.rounds):
                with stall_watch(health, interval=0.005) as stop:
                    lists = [
                        {"jsonrpc": "2.0", "id": f"list{number}-{one}", "method": "tools/list"}
                        for one in range(args.together)
                    ]
                    send(proc.stdin, *lists, {"jsonrpc": "2.0", "id": number, "method": "ping"})
                    for _ in lists:
                        line = answer(proc.stdout, "list")
                        assert len(line) == len(first) + len(f"{number}-0"), "a list answer of another size"
                    pong = json.loads(answer(proc.stdout, number))
                    assert pong.get("result") == {}, pong
                    slowest, _ = stop()
                stalls.append(slowest)
            print(
                f"slowest /healthz over {args.rounds} rounds of {args.together} lists: p50 {statistics.median(stalls):.0f} ms, "
                f"max {max(stalls):.0f} ms ({', '.join(f'{s:.0f}' for s in stalls)})"
            )
        finally:
            stop_process(proc)


if __name__ == "__main__":
    main()
