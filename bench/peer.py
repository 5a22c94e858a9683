"""mcp-proxy, the peer the proxy benchmarks compare against, in front of the demo backend over stdio.

mcp-proxy (`PEER_PACKAGE`) is a bench-only dependency that pins an older `mcp` than ours, so it lives in its
own virtual environment, made on first use (bench/.peer-venv by default, gitignored).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from tests.support import DEMO_SERVER, free_port, serving_mcp

ROOT = Path(__file__).resolve().parent.parent
PEER_PACKAGE = "mcp-proxy==0.13.0"
PEER_VENV = ROOT / "bench" / ".peer-venv"


def peer_executable(venv: Path, console: Console) -> Path:
    """mcp-proxy's entry point, installed into its own virtual environment on first use."""
    executable = venv / "bin" / "mcp-proxy"
    if not executable.exists():
        console.print(f"installing {PEER_PACKAGE} into {venv} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", PEER_PACKAGE], check=True)
    return executable


@contextlib.contextmanager
def running_peer(venv: Path, console: Console, *options: str) -> Iterator[str]:
    """mcp-proxy serving streamable HTTP in front of the demo backend over stdio; yields its /mcp URL."""
    port = free_port()
    command = [str(peer_executable(venv, console)), "--port", str(port), "--pass-environment", *options]
    with serving_mcp([*command, "--log-level", "WARNING", sys.executable, str(DEMO_SERVER)], port) as url:
        yield url
