"""A broken token endpoint (`auth.type: oauth_client_credentials`) against a real gateway process: a nonsense
`expires_in` does not make the gateway fetch a token per request, and an answer that never ends or never stops
growing fails within `auth.timeout` with a reason naming the backend, never the secret."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from tests.loop_server import LoopServer
from tests.support import running_gateway, write_config
from tests.test_remote_answers import hostile_backend

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECRET = "client-secret-7f3a9c"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TokenEndpoint(LoopServer):
    """A token endpoint on plain asyncio answering as `mode` says; counts the requests."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            length = next(int(line.split(":")[1]) for line in head.split("\r\n") if line.startswith("content-length:"))
            await reader.readexactly(length)
            self.requests += 1
            await self._answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.mode == "negative":
            body = json.dumps({"access_token": f"tok-{self.requests}", "expires_in": -5}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(body)
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500000000\r\n\r\n")
        for _ in range(3600):
            writer.write(b" " if self.mode == "drip" else b" " * 1_000_000)
            await writer.drain()
            await asyncio.sleep(1 if self.mode == "drip" else 0)


@contextmanager
def token_endpoint(mode: str) -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint(mode)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def config(backend_port: int, token_port: int) -> dict[str, Any]:
    auth = {
        "type": "oauth_client_credentials",
        "token_url": f"http://127.0.0.1:{token_port}/token",
        "client_id": "vmcp",
        "client_secret": {"env": "REMOTE_TOKEN_SECRET"},
        "timeout": 1,
    }
    backend = {"name": "h", "transport": "streamable-http", "url": f"http://127.0.0.1:{backend_port}/mcp", "auth": auth}
    return {"backends": [backend], "health": {"interval": 3600}, "timeouts": {"connect": 20}}


def last_error(base: str, needle: str, timeout: float = 15.0) -> str:
    """The backend's `last_error` in /readyz once it holds `needle` (or the last one seen)."""
    deadline = time.monotonic() + timeout
    error = ""
    while time.monotonic() < deadline:
        error = str(httpx2.get(f"{base}/readyz", timeout=5).json()["backends"][0]["last_error"])
        if needle in error:
            break
        time.sleep(0.1)
    return error


async def test_a_token_that_claims_a_negative_lifetime_is_not_fetched_per_request(tmp_path: Path) -> None:
    with hostile_backend() as backend, token_endpoint("negative") as tokens:
        path = write_config(tmp_path, config(backend.port, tokens.port))
        with running_gateway(path, env={"REMOTE_TOKEN_SECRET": SECRET}) as gateway:
            async with Client(gateway.url) as client:
                at_start = tokens.requests
                for _ in range(5):
                    assert (await client.call_tool("h_ok", {})).is_error is False
            assert tokens.requests == at_start, f"{tokens.requests - at_start} token requests for 5 calls"


@pytest.mark.parametrize(
    ("mode", "reason"), [("drip", "no answer within 1s"), ("flood", "an answer larger than 64 KiB")]
)
def test_a_token_answer_that_never_ends_fails_within_the_timeout(tmp_path: Path, mode: str, reason: str) -> None:
    with hostile_backend() as backend, token_endpoint(mode) as tokens:
        path = write_config(tmp_path, config(backend.port, tokens.port))
        with running_gateway(path, env={"REMOTE_TOKEN_SECRET": SECRET}, wait_ready=False) as gateway:
            error = last_error(gateway.base, reason)
            assert f"backend 'h': token endpoint unreachable: {reason}" in error
            assert SECRET not in gateway.output()
