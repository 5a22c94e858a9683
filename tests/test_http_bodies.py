"""A backend's HTTP answer read no further than its cap, compressed or not (a real HTTP server on loopback)."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from vmcp_opt.backends.http_bodies import BodyTooLarge, cap_json_bodies

pytestmark = pytest.mark.anyio

CAP = 1_000_000
SMALL = b'{"jsonrpc": "2.0", "id": 1, "result": {"text": "' + b"x" * 100_000 + b'"}}'
BODIES = {
    "/small": (SMALL, None),
    "/small-gzip": (gzip.compress(SMALL), "gzip"),
    "/big": (b"x" * 3_000_000, None),
    # 100 MB of spaces in ~100 KB: what the cap must stop while inflating, not after.
    "/bomb": (gzip.compress(b" " * 100_000_000, compresslevel=9), "gzip"),
    "/not-gzip": (b"this is not gzip at all", "gzip"),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Bodies(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body, encoding = BODIES[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Bodies)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(event_hooks={"response": [cap_json_bodies("up", CAP)]})


@pytest.mark.parametrize("path", ["/small", "/small-gzip"])
async def test_an_answer_within_the_cap_arrives_whole_and_inflated(server: str, path: str) -> None:
    async with client() as http:
        response = await http.get(server + path)
    assert response.content == SMALL


@pytest.mark.parametrize("path", ["/big", "/bomb"])
async def test_an_answer_past_the_cap_stops_there_naming_the_backend(server: str, path: str) -> None:
    async with client() as http, http.stream("GET", server + path) as response:
        read = 0
        with pytest.raises(BodyTooLarge) as stopped:
            async for chunk in response.aiter_bytes():
                read += len(chunk)
    assert read <= CAP
    assert str(stopped.value).startswith("backend 'up' answered with more than 1,000,000 bytes")


async def test_a_body_that_does_not_inflate_is_a_decoding_error(server: str) -> None:
    async with client() as http:
        with pytest.raises(httpx2.DecodingError, match="backend 'up' sent a body that does not inflate"):
            await http.get(server + "/not-gzip")
