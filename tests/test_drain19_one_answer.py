"""A call cut off by the shutdown gets exactly one answer.

When uvicorn cancels a request whose answer is an SSE stream, `Drain` ends the stream with a JSON-RPC error
for the call, unless the call's answer (a result or error event under its id) already went out: then the stream
only ends. The window this is about lies between the result event and the body's final empty chunk (a few
event-loop checkpoints in sse-starlette and in the lazy stream path), and a real server cannot be stopped in it
deterministically; so these tests drive the `Drain` ASGI wrapper in-process, with a tiny fake endpoint that sends
events and then waits to be cancelled. The real-server behaviour (an error event for a call still running) is
checked in tests/test_shutdown19_signals.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from vmcp_opt.server.drain import Drain

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "t", "arguments": {}}}
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def event(message: dict[str, Any]) -> bytes:
    return f"event: message\r\ndata: {json.dumps(message, separators=(',', ':'))}\r\n\r\n".encode()


RESULT = event({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "done"}]}})
PROGRESS = event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 7, "progress": 1}})


def cut_off_after(chunks: list[bytes], call: dict[str, Any] = CALL) -> list[Message]:
    """What the client is sent for `call` when the endpoint streams `chunks` (one body message each) and the
    request is then cancelled, as uvicorn does at shutdown."""
    sent: list[Message] = []
    streamed = asyncio.Event()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        streamed.set()
        await asyncio.sleep(3600)  # the checkpoint before the final empty body, where the cancellation lands
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def main() -> None:
        body = json.dumps(call).encode()

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [], "query_string": b""}
        request = asyncio.create_task(Drain(endpoint, 1 << 20)(scope, receive, send))
        await asyncio.wait_for(streamed.wait(), 5)
        request.cancel()
        await asyncio.wait_for(request, 5)  # `_cut_off` ends the request: no CancelledError escapes

    asyncio.run(main())
    return sent


def answers(sent: list[Message], request_id: object = 7) -> list[dict[str, Any]]:
    """The JSON-RPC responses under `request_id` among the SSE events `sent`."""
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    found = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[6:] for line in block.split(b"\n") if line.startswith(b"data: "))
        message = json.loads(data) if data else None
        if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
            found.append(message)
    return found


def assert_complete(sent: list[Message]) -> None:
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert sum(1 for m in sent if m["type"] == "http.response.body" and not m.get("more_body")) == 1


def test_a_call_cut_off_after_its_result_event_gets_no_second_answer() -> None:
    sent = cut_off_after([PROGRESS, RESULT])
    assert [a.get("result") is not None for a in answers(sent)] == [True]
    assert_complete(sent)


def test_a_result_event_split_across_chunks_is_still_seen() -> None:
    # Split inside the data line, and between the "\r" and "\n" of a line end.
    cut = RESULT.index(b'"result"')
    crlf = RESULT.index(b"\r\n\r\n") + 1
    sent = cut_off_after([PROGRESS[:10], PROGRESS[10:] + RESULT[:cut], RESULT[cut:crlf], RESULT[crlf:]])
    assert len(answers(sent)) == 1
    assert_complete(sent)


def test_a_result_event_longer_than_the_kept_head_is_still_seen() -> None:
    big = event({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "x" * 300_000}]}})
    sent = cut_off_after([big[i : i + 16_384] for i in range(0, len(big), 16_384)])
    assert len(answers(sent)) == 1
    assert_complete(sent)


def test_a_call_cut_off_before_its_result_ends_with_one_error_to_retry() -> None:
    sent = cut_off_after([PROGRESS])
    [error] = answers(sent)
    assert "shutting down" in error["error"]["message"] and "retry" in error["error"]["message"]
    assert_complete(sent)


def test_a_request_to_the_client_with_the_same_id_is_not_the_calls_answer() -> None:
    # The server's own requests (sampling, elicitation) number their ids apart from the client's.
    ask = event({"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {"messages": []}})
    sent = cut_off_after([ask])
    [error] = answers(sent)
    assert "shutting down" in error["error"]["message"]
    assert_complete(sent)


def test_an_answer_under_another_id_is_not_the_calls_answer() -> None:
    other = event({"jsonrpc": "2.0", "id": "7", "result": {}})  # a string id is another id than the number 7
    sent = cut_off_after([other])
    [error] = answers(sent)
    assert "shutting down" in error["error"]["message"]
    assert_complete(sent)
