"""A cancellation that overtakes its request's POST (the SDK posts each message from a task of its own) still stops
it: the POST is never sent, and the SDK gets the abandoned request's error at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import mcp_types as types
import pytest

from vmcp_opt.backends.open_answers import REMEMBERED_ABANDONED, AnswerClient, OpenAnswers

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Backend(ThreadingHTTPServer):
    """A real local HTTP server answering every JSON-RPC request POST at once, and noting its id."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posted: list[Any] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mcp"


class _Handler(BaseHTTPRequestHandler):
    server: Backend

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.posted.append(body["id"])
        answer = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sdk_body(request_id: int) -> dict[str, Any]:
    """What the SDK's streamable HTTP client posts for a request (mcp/client/streamable_http.py)."""
    message = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method="tools/call", params={"name": "slow"})
    return message.model_dump(by_alias=True, mode="json", exclude_unset=True)


async def test_a_request_abandoned_before_its_post_is_not_sent(backend: Backend) -> None:
    answers = OpenAnswers()
    async with AnswerClient(backend="b", answers=answers) as client:
        answers.abandon(7)  # its notifications/cancelled came first
        response = await client.post(backend.url, json=sdk_body(7))
        answer = response.json()
        assert answer["id"] == 7 and answer["error"]["code"] == types.INTERNAL_ERROR
        assert "stopped waiting" in answer["error"]["message"]
        served = await client.post(backend.url, json=sdk_body(8))
        assert served.json() == {"jsonrpc": "2.0", "id": 8, "result": {}}
        # Consumed by its first open: a later request of the same id (once 7 ended) is sent.
        again = await client.post(backend.url, json=sdk_body(7))
        assert again.json() == {"jsonrpc": "2.0", "id": 7, "result": {}}
    assert backend.posted == [8, 7]
    assert len(answers) == 0 and answers.remembered == 0


async def test_the_ids_remembered_abandoned_are_bounded(backend: Backend) -> None:
    answers = OpenAnswers()
    for request in range(1000):
        answers.abandon(request)
    assert answers.remembered == REMEMBERED_ABANDONED <= 64
    async with AnswerClient(backend="b", answers=answers) as client:
        newest = await client.post(backend.url, json=sdk_body(999))
        assert "error" in newest.json()
        oldest = await client.post(backend.url, json=sdk_body(0))  # pushed out: sent as any request
        assert oldest.json() == {"jsonrpc": "2.0", "id": 0, "result": {}}
    assert backend.posted == [0]
