"""A 2025-03-26 client's JSON-RPC batch over a real gateway, in front of the conformance backend (stdio) and the held
backend: every answer is an event of one SSE stream, as it comes and in the batch's order (one message at a time);
a message refused on its own gets its error under its id; each message is served as the client wrote it (a
non-ASCII one is not re-encoded past `server.max_body_bytes`); a server→client request in the middle of a call
reaches the client, whose answer in a POST of its own lets the batch go on; a client that goes away ends its
batch (the drain then finds nothing in flight, and logs no cut-off); SIGTERM's drain waits for the batch as one
call, answering its requests not started "shutting down", and a stop that cuts a batch off ends its stream whole."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import EXAMPLES, Gateway, running_gateway, sse_messages, wait_until, write_config
from tests.test_interop21_old_clients import HEADERS, initialize

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
HELD_SERVER = EXAMPLES / "backends" / "held_server.py"
MAX_BODY = 8000
# 2,000 CJK characters: 6,000 bytes as UTF-8, 12,000 as `\u` escapes (over MAX_BODY).
WIDE = "漢" * 2000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "server": {"max_body_bytes": MAX_BODY},
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("rev21-batches"), config)) as running:
        yield running


def opened(gateway: Gateway, capabilities: dict[str, Any] | None = None) -> dict[str, str]:
    """The headers of a 2025-03-26 session's requests (that version sends no MCP-Protocol-Version)."""
    opening = initialize("2025-03-26")
    opening["params"]["capabilities"] = capabilities or {}
    answer = httpx2.post(gateway.url, json=opening, headers=HEADERS, timeout=30)
    assert answer.status_code == 200, answer.text
    headers = {**HEADERS, "mcp-session-id": answer.headers["mcp-session-id"]}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(gateway.url, json=initialized, headers=headers, timeout=30).status_code == 202
    return headers


def call(request_id: str, name: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def test_every_answer_is_an_event_in_the_batchs_order_and_a_wide_message_is_served(gateway: Gateway) -> None:
    headers = opened(gateway)
    batch = [
        call("progress", "test_tool_with_progress", {}, progressToken="p"),  # its answer streams
        {"jsonrpc": "2.0", "id": "wide", "method": "ping", "params": {"_meta": {"pad": WIDE}}},
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
        {"jsonrpc": "2.0", "id": "listed", "method": "tools/list"},
        42,  # no JSON-RPC message: an error with id null
    ]
    body = json.dumps(batch, ensure_ascii=False).encode()
    assert len(body) < MAX_BODY < len(json.dumps(batch).encode())
    answer = httpx2.post(gateway.url, content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["mcp-session-id"] == headers["mcp-session-id"]
    messages = [message for _, message in sse_messages(iter(answer.text.splitlines())) if message is not None]
    answers = [message for message in messages if "method" not in message]
    assert [message.get("id") for message in answers] == ["progress", "wide", "listed", None]
    progress = [message for message in messages if message.get("method") == "notifications/progress"]
    assert [note["params"]["progress"] for note in progress] == [0, 50, 100]
    assert messages.index(progress[-1]) < messages.index(answers[0])  # each event as it came
    assert answers[0]["result"]["content"][0]["text"].startswith("Progress reported under token")
    assert answers[1]["result"] == {}  # not "over 8,000 bytes": the message was not re-encoded
    assert "test_simple_text" in [tool["name"] for tool in answers[2]["result"]["tools"]]
    assert answers[3]["error"]["code"] == -32600


def test_a_refused_message_is_answered_in_order_and_a_boolean_id_is_not_copied_into_it(gateway: Gateway) -> None:
    headers = opened(gateway)
    batch = [
        call("progress", "test_tool_with_progress", {}, progressToken="p"),
        {"jsonrpc": "2.0", "id": "bad", "method": "tools/call", "params": {"name": 7}},
        {"jsonrpc": "2.0", "id": True, "method": "ping"},  # a boolean is no id: not copied into the error's
    ]
    answer = httpx2.post(gateway.url, content=json.dumps(batch), headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    answers = [m for _, m in sse_messages(iter(answer.text.splitlines())) if m is not None and "method" not in m]
    assert [message.get("id") for message in answers] == ["progress", "bad", None]
    assert answers[1]["error"]["code"] == -32602
    assert answers[2]["error"]["code"] == -32600
    assert "id must be a string or an integer, not a boolean" in answers[2]["error"]["message"]


def test_an_unknown_session_refuses_the_batch_as_a_whole(gateway: Gateway) -> None:
    headers = {**HEADERS, "mcp-session-id": "no-such-session"}
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
    answer = httpx2.post(gateway.url, content=json.dumps(batch), headers=headers, timeout=30)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/json")


def test_a_batch_of_notifications_only_is_accepted_with_202(gateway: Gateway) -> None:
    headers = opened(gateway)
    batch = [{"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}] * 2
    answer = httpx2.post(gateway.url, content=json.dumps(batch), headers=headers, timeout=30)
    assert answer.status_code == 202
    assert answer.content == b""


def test_an_elicitation_in_the_middle_of_a_batch_reaches_the_client_and_its_answer_the_call(gateway: Gateway) -> None:
    headers = opened(gateway, {"elicitation": {}})
    batch = [
        call("asks", "test_elicitation", {"message": "who are you?"}),
        {"jsonrpc": "2.0", "id": "after", "method": "ping"},
    ]
    answers: list[dict[str, Any]] = []
    with httpx2.stream("POST", gateway.url, content=json.dumps(batch), headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        for _, message in sse_messages(stream.iter_lines()):
            if message is None:
                continue
            if message.get("method") == "elicitation/create":
                assert message["params"]["message"] == "who are you?"
                reply = {"action": "accept", "content": {"username": "ann", "email": "ann@example.com"}}
                answered = {"jsonrpc": "2.0", "id": message["id"], "result": reply}
                assert httpx2.post(gateway.url, json=answered, headers=headers, timeout=30).status_code == 202
            elif "method" not in message:
                answers.append(message)
    assert [message["id"] for message in answers] == ["asks", "after"]
    text = answers[0]["result"]["content"][0]["text"]
    assert text == 'User response: action=accept, content={"username": "ann", "email": "ann@example.com"}'


def held_config(directory: Path) -> Path:
    backend = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    return write_config(directory, {"backends": [backend], "server": {"drain_timeout": 30}})


def wait_for(path: Path) -> None:
    """Until another process makes `path` (the held backend, once a call is there)."""
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigterm_waits_for_the_batch_and_answers_its_messages_not_started_shutting_down(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with running_gateway(held_config(tmp_path)) as running:
        headers = opened(running)
        batch = [
            call("first", "held_held_echo", {"message": "finished", "gate": str(gate)}),
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},  # no answer, even refused
            call("second", "held_held_echo", {"message": "never", "gate": f"{gate}-second"}),
            {"jsonrpc": "2.0", "id": 3, "method": "ping"},
        ]

        def drain_then_open() -> None:
            wait_for(Path(f"{gate}.started"))  # the first message is at the backend
            running.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while "draining:" not in running.output() and time.monotonic() < deadline:
                time.sleep(0.05)
            gate.touch()  # the first call ends while draining: the drain must still wait for the batch

        driver = threading.Thread(target=drain_then_open)
        driver.start()
        try:
            # The stream's headers come with the first answer, once the gate is open.
            with httpx2.stream("POST", running.url, content=json.dumps(batch), headers=headers, timeout=30) as stream:
                assert stream.status_code == 200
                lines = list(stream.iter_lines())  # raises on a stream cut off without its closing chunk
        finally:
            driver.join()
        assert stream.headers["connection"] == "close"
        assert running.proc.wait(timeout=60) == 0
    answers = [m for _, m in sse_messages(iter(lines)) if m is not None and "method" not in m]
    assert [message["id"] for message in answers] == ["first", "second", 3]
    assert answers[0]["result"]["content"][0]["text"] == "finished"
    for refused in answers[1:]:
        assert refused["error"]["code"] == -32000
        assert "shutting down" in refused["error"]["message"]
        assert refused["error"]["data"] == {"retry_after": 1}
    assert not Path(f"{gate}-second.started").exists()  # never served: the drain did not run it
    output = running.output()
    assert "drained in" in output, output
    assert "Exception in ASGI application" not in output
    assert "cut off by the shutdown" not in output  # nothing was left running when the server stopped


def test_a_batch_its_client_left_ends_and_its_call_at_the_backend_holds_the_drain(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never made: the held call would wait for ever
    with running_gateway(held_config(tmp_path)) as running:
        headers = opened(running)
        batch = [
            call("held", "held_held_echo", {"message": "never", "gate": str(gate)}),
            call("next", "held_held_echo", {"message": "never", "gate": f"{gate}-next"}),
            call("last", "held_held_echo", {"message": "never", "gate": f"{gate}-last"}),
        ]
        body = json.dumps(batch).encode()
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n{head}content-length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
            sock.sendall(request.encode() + body)
            wait_for(Path(f"{gate}.started"))
        # The client is gone with the call at the backend: the batch ends; its call at the backend runs on and
        # holds the drain until it finishes.
        running.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining:" in running.output(), 60, running.output)
        gate.touch()
        assert running.proc.wait(timeout=60) == 0
    output = running.output()
    assert "drained in" in output, output
    assert "still running after" not in output
    assert not Path(f"{gate}-next.started").exists()  # the batch's next message was never served
    # A client that left is no shutdown: the messages after it are not driven into the drain's cut-off path.
    assert "cut off by the shutdown" not in output, output


def test_a_batch_the_stop_cuts_off_answers_every_request_and_its_stream_ends_whole(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never made: the first call is still at the backend when the server stops
    backend = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    settings = {"backends": [backend], "server": {"drain_timeout": 0}, "timeouts": {"shutdown": 0.5}}
    with running_gateway(write_config(tmp_path, settings)) as running:
        headers = opened(running)
        batch = [
            call("first", "held_held_echo", {"message": "never", "gate": str(gate)}),
            call("second", "held_held_echo", {"message": "never", "gate": f"{gate}-second"}),
            {"jsonrpc": "2.0", "id": 3, "method": "ping"},
        ]

        def stop() -> None:
            wait_for(Path(f"{gate}.started"))
            running.proc.send_signal(signal.SIGTERM)  # a drain of 0s: the server stops, cancelling the batch

        driver = threading.Thread(target=stop)
        driver.start()
        try:
            with httpx2.stream("POST", running.url, content=json.dumps(batch), headers=headers, timeout=30) as stream:
                assert stream.status_code == 200
                lines = list(stream.iter_lines())  # raises on a stream cut off without its closing chunk
        finally:
            driver.join()
        assert running.proc.wait(timeout=60) == 0
    answers = [m for _, m in sse_messages(iter(lines)) if m is not None and "method" not in m]
    assert [message["id"] for message in answers] == ["first", "second", 3]
    assert all(message["error"]["code"] == -32000 for message in answers)
    assert "stopped this request before it finished" in answers[0]["error"]["message"]  # the drain's cut-off
    assert "did not start this request" in answers[1]["error"]["message"]
    assert not Path(f"{gate}-second.started").exists()
    output = running.output()
    assert "Exception in ASGI application" not in output, output
    assert output.count("cut off by the shutdown") == 1, output  # the one message running, not the batch's rest
