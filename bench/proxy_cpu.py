"""CPU time per proxied tools/call: `vmcp serve` against mcp-proxy, both in front of the demo backend over
stdio, the same calls in one run. Latency on a shared 2-core machine swings with the neighbours' load; the
CPU a gateway process spends per call moves much less, and it is what a slow host turns into latency.

    .venv/bin/python bench/proxy_cpu.py [--calls 2000] [--rounds 4] [--profile DIR]

Each round sends `calls` calls through each gateway, in blocks of 50 with the gateways' order rotated every
block, once per handshake (2025-11-25 with a session, and the client's default era: 2026-07-28 where the
server offers it), and adds up each gateway process's CPU time over its blocks (every thread; the kernel's
schedstat, in ns), and its backend's. Prints µs of CPU
per call, the median over rounds. `--before REV`: a third gateway, `vmcp serve` from `git archive REV`, in
the same rounds. `--profile DIR`: then py-spy (raw, 250 Hz, `--gil`: only the thread holding the GIL, so
waits in syscalls drop out) on each gateway during twice `calls` more calls per handshake, written to
DIR/<gateway>-<mode>.txt (folded stacks) for bench/spy_shares.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
from mcp import Client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peer import PEER_VENV, peer_executable  # noqa: E402
from tests.support import DEMO_SERVER, demo_backend, free_port, running_gateway, wait_http, write_config  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODES = {"legacy": "2025-11-25 on both legs", "auto": "client's default era"}
TICK = os.sysconf("SC_CLK_TCK")
console = Console()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid`, in seconds: the scheduler's own count (schedstat, ns) where the
    kernel keeps one, else user + system from /proc/<pid>/stat (in clock ticks)."""
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (FileNotFoundError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK


@contextlib.contextmanager
def peer(venv: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [str(peer_executable(venv, console)), "--port", str(port), "--pass-environment"]
    proc = subprocess.Popen(
        [*command, "--log-level", "WARNING", sys.executable, str(DEMO_SERVER)], stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_http(url, expect=(200, 400, 404, 405, 406), proc=proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def backend_pid(pid: int) -> int:
    """The demo backend the gateway `pid` started (its one child running the demo server)."""
    for child in psutil.Process(pid).children(recursive=True):
        if any("demo_server" in part for part in child.cmdline()):
            return child.pid
    raise RuntimeError(f"no demo backend under {pid}")


Target = tuple[str, str, str, int]  # label, MCP URL, the echo tool's name there, the gateway's pid


async def cpu_per_call(targets: list[Target], calls: int, mode: str, block: int = 50) -> dict[str, tuple[float, float]]:
    """µs of each gateway's and of its backend's CPU per call: `calls` calls per gateway on one session each,
    in blocks of `block`, the gateways' order rotated every block so drift in the machine's load hits all."""
    spent = {label: [0.0, 0.0] for label, *_ in targets}
    async with contextlib.AsyncExitStack() as stack:
        open_ = []
        for label, url, tool, pid in targets:
            client = await stack.enter_async_context(Client(url, mode=mode))
            for _ in range(20):
                await client.call_tool(tool, {"message": "warm", "seconds": 0})
            open_.append((label, client, tool, pid, backend_pid(pid)))
        for turn in range(max(1, calls // block)):
            start = turn % len(open_)
            for label, client, tool, pid, backend in open_[start:] + open_[:start]:
                before = cpu_seconds(pid), cpu_seconds(backend)
                for _ in range(block):
                    result = await client.call_tool(tool, {"message": "ping", "seconds": 0})
                    assert not result.is_error
                spent[label][0] += cpu_seconds(pid) - before[0]
                spent[label][1] += cpu_seconds(backend) - before[1]
    done = max(1, calls // block) * block
    return {label: (gateway / done * 1e6, backend / done * 1e6) for label, (gateway, backend) in spent.items()}


def profile(url: str, tool: str, pid: int, calls: int, mode: str, out: Path) -> None:
    spy = shutil.which("py-spy") or "/tmp/spy/bin/py-spy"
    command = [spy, "record", "-r", "250", "-p", str(pid), "-f", "raw", "-o", str(out), "--gil"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    anyio.run(cpu_per_call, [("profiled", url, tool, pid)], calls, mode)
    proc.send_signal(2)
    proc.wait(30)
    console.print(f"profile: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV)
    parser.add_argument("--profile", type=Path, help="directory for py-spy's folded stacks of the gateway")
    parser.add_argument("--only", choices=["vmcp-opt", "mcp-proxy"], help="measure one gateway")
    parser.add_argument("--before", metavar="REV", help="also `vmcp serve` from the tree of git revision REV")
    args = parser.parse_args()
    if args.before:
        args.before = subprocess.run(
            ["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
    directory = RESULTS / "proxy_cpu"
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, {"backends": [demo_backend("web")], "server": {"log_level": "warning"}})
    samples: dict[tuple[str, str], list[float]] = {}
    backend_samples: dict[tuple[str, str], list[float]] = {}
    load = [os.getloadavg()[0]]
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(running_gateway(config, "--no-optimizer"))
        peer_url, peer_pid = stack.enter_context(peer(args.peer_venv))
        targets = [
            ("mcp-proxy 0.13", peer_url, "slow_echo", peer_pid),
            ("vmcp-opt", gateway.url, "web_slow_echo", gateway.proc.pid),
        ]
        if args.only:
            targets = [t for t in targets if t[0].startswith(args.only)]
        if args.before:
            tree = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
            old = stack.enter_context(running_gateway(config, "--no-optimizer", cwd=tree))
            targets.append((f"vmcp-opt at {args.before}", old.url, "web_slow_echo", old.proc.pid))
        for round_ in range(args.rounds):
            for mode in MODES:
                for label, (us, backend_us) in anyio.run(cpu_per_call, targets, args.calls, mode).items():
                    samples.setdefault((label, mode), []).append(us)
                    backend_samples.setdefault((label, mode), []).append(backend_us)
                    console.print(
                        f"round {round_ + 1} {mode:6} {label:22} {us:7.0f} µs CPU per call, backend {backend_us:5.0f} µs"
                    )
        load.append(os.getloadavg()[0])
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for mode in MODES:
                for label, url, tool, pid in targets:
                    out = args.profile / f"{label.split()[0]}-{mode}.txt"
                    profile(url, tool, pid, args.calls * 2, mode, out)
    table = Table(
        title=f"gateway CPU per tools/call, µs (median of {args.rounds} rounds of {args.calls}; load {load[0]:.1f} → {load[-1]:.1f})"
    )
    table.add_column("gateway")
    for mode in MODES:
        table.add_column(MODES[mode], justify="right")
    for label, *_ in targets:
        table.add_row(label, *(f"{statistics.median(samples[(label, mode)]):.0f}" for mode in MODES))
    for label, *_ in targets:
        cells = (f"{statistics.median(backend_samples[(label, mode)]):.0f}" for mode in MODES)
        table.add_row(f"its backend ({label})", *cells)
    console.print(table)


if __name__ == "__main__":
    main()
