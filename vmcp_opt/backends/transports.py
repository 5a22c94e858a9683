"""Open a backend's transport (stdio, streamable HTTP, SSE) through the official SDK's clients."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp.client._transport import TransportStreams
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from vmcp_opt.config import BackendConfig


def stdio_parameters(backend: BackendConfig, base_dir: Path) -> StdioServerParameters:
    """Resolve command and cwd against the config file's directory; put our interpreter's bin first on PATH.

    A config that says `command: python` then runs the interpreter the gateway itself runs on, with the
    demo backends installed beside it, whether or not the virtualenv is activated.
    """
    assert backend.command is not None
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, backend.env.get("PATH", os.environ.get("PATH", ""))])
    command = backend.command
    if ("/" in command or command.startswith(".")) and not Path(command).is_absolute():
        command = str((base_dir / command).resolve())
    else:
        command = shutil.which(command, path=path) or command
    # Backends run in the config file's directory unless told otherwise, so relative args resolve there too.
    cwd = str((base_dir / (backend.cwd or ".")).resolve())
    return StdioServerParameters(command=command, args=backend.args, env={**backend.env, "PATH": path}, cwd=cwd)


@asynccontextmanager
async def open_transport(
    backend: BackendConfig, base_dir: Path, connect_timeout: float
) -> AsyncIterator[TransportStreams]:
    if backend.transport == "stdio":
        async with stdio_client(stdio_parameters(backend, base_dir)) as streams:
            yield streams
    elif backend.transport == "streamable-http":
        assert backend.url is not None
        timeout = httpx2.Timeout(connect_timeout, read=None)
        async with (
            httpx2.AsyncClient(headers=backend.headers, timeout=timeout) as http_client,
            streamable_http_client(backend.url, http_client=http_client) as streams,
        ):
            yield streams
    else:
        assert backend.url is not None
        async with sse_client(backend.url, headers=backend.headers, timeout=connect_timeout) as streams:
            yield streams
