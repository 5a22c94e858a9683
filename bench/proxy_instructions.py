"""Instructions per proxied tools/call, counted by callgrind: exact and blind to the machine's load, so a
change of a few percent in a gateway's per-call work shows on a shared, busy host where CPU time does not.

    .venv/bin/python bench/proxy_instructions.py [--calls 200] [--before REV ...] [--no-peer]

Each gateway (this tree's `vmcp serve`, the same from `git archive REV` for each `--before`, and mcp-proxy
0.13 unless `--no-peer`) runs under `valgrind --tool=callgrind --instr-atstart=no` in front of the demo
backend over stdio (the backend itself is not instrumented). Per handshake (2025-11-25 with a session, and
the client's default era) the client warms the path with 30 calls, then counting is switched on
(`callgrind_control -i on`, `-z`), `calls` calls are made, and the dump's total is divided by `calls`.
Instructions are not time (a cache miss or a syscall's wait is not in them), but per-call interpreter
work is, which is what a slow host turns into latency. Needs valgrind (Debian: `apt-get install valgrind`).
Start-up under valgrind takes a minute or two per gateway; they start together.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from mcp import Client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peer import PEER_VENV, peer_executable  # noqa: E402
from tests.support import DEMO_SERVER, demo_backend, free_port, stop_process, wait_http, write_config  # noqa: E402

MODES = {"legacy": "2025-11-25 on both legs", "auto": "client's default era"}
console = Console()


@dataclass
class Counted:
    label: str
    port: int
    tool: str
    proc: subprocess.Popen[bytes]
    out: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


def valgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


@contextlib.contextmanager
def started(label: str, command: list[str], port: int, tool: str, out: Path, cwd: Path | None) -> Iterator[Counted]:
    with (out.parent / f"{out.stem}.log").open("wb") as log:
        proc = subprocess.Popen(
            [*valgrind(out), *command], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}
        )
    try:
        yield Counted(label, port, tool, proc, out)
    finally:
        stop_process(proc)


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


async def per_call(target: Counted, calls: int, mode: str) -> float:
    """Instructions the gateway process executed per call over `calls` calls on one session."""
    async with Client(target.url, mode=mode) as client:
        for _ in range(30):
            await client.call_tool(target.tool, {"message": "warm", "seconds": 0})
        pid = str(target.proc.pid)  # valgrind runs the tool in the process it was started as
        control("-i", "on", pid)
        control("-z", pid)
        for _ in range(calls):
            result = await client.call_tool(target.tool, {"message": "ping", "seconds": 0})
            assert not result.is_error
        before = set(target.out.parent.glob(f"{target.out.name}*"))
        control("-d", pid)
        control("-i", "off", pid)
        deadline = time.monotonic() + 60
        while not (new := set(target.out.parent.glob(f"{target.out.name}*")) - before):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target.label}: no callgrind dump")
            await anyio.sleep(0.2)
        await anyio.sleep(1.0)  # the dump is written in one go; give it time to finish
        text = max(new, key=lambda p: p.stat().st_mtime).read_text(errors="replace")
        found = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.M)
        if found is None:
            raise RuntimeError(f"{target.label}: no total in the callgrind dump")
        return int(found.group(1)) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--before", action="append", default=[], metavar="REV", help="also vmcp serve at REV")
    parser.add_argument("--no-peer", action="store_true", help="leave mcp-proxy out")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        config = write_config(work, {"backends": [demo_backend("web")], "server": {"log_level": "warning"}})
        serve = [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--no-optimizer", "--port"]
        targets: list[Counted] = []
        trees: list[tuple[str, Path | None]] = [("vmcp-opt (this tree)", ROOT)]
        for rev in args.before:
            short = subprocess.run(
                ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout.strip()
            tree = work / f"tree-{short}"
            tree.mkdir()
            archive = subprocess.run(["git", "archive", short], cwd=ROOT, check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
            trees.append((f"vmcp-opt at {short}", tree))
        for index, (label, tree) in enumerate(trees):
            port = free_port()
            out = work / f"callgrind-{index}.out"
            targets.append(stack.enter_context(started(label, [*serve, str(port)], port, "web_slow_echo", out, tree)))
        if not args.no_peer:
            port = free_port()
            peer = [str(peer_executable(args.peer_venv, console)), "--port", str(port), "--pass-environment"]
            peer += ["--log-level", "WARNING", sys.executable, str(DEMO_SERVER)]
            # mcp-proxy's entry point is a script: run it with its venv's interpreter, under valgrind
            python = args.peer_venv / "bin" / "python"
            out = work / "callgrind-peer.out"
            targets.append(
                stack.enter_context(started("mcp-proxy 0.13", [str(python), *peer], port, "slow_echo", out, None))
            )
        for target in targets:
            wait_http(target.url, timeout=600, expect=(200, 400, 404, 405, 406), proc=target.proc)
            if target.label.startswith("vmcp"):
                wait_http(target.url.replace("/mcp", "/readyz"), timeout=600, proc=target.proc)
        counts: dict[tuple[str, str], float] = {}
        for mode in MODES:
            for target in targets:
                counts[(target.label, mode)] = anyio.run(per_call, target, args.calls, mode)
                console.print(
                    f"{mode:6} {target.label:24} {counts[(target.label, mode)] / 1e6:7.3f} M instructions/call"
                )
        load.append(os.getloadavg()[0])
    table = Table(
        title=f"gateway instructions per tools/call, millions ({args.calls} calls; load {load[0]:.1f} → {load[-1]:.1f})"
    )
    table.add_column("gateway")
    for mode in MODES:
        table.add_column(MODES[mode], justify="right")
    for target in targets:
        table.add_row(target.label, *(f"{counts[(target.label, mode)] / 1e6:.3f}" for mode in MODES))
    console.print(table)


if __name__ == "__main__":
    main()
