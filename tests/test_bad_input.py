"""Bad input never hurts: the real gateway gets garbage and malformed JSON-RPC, answers each with the
error the spec names, and keeps serving a normal client afterwards."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = pytest.mark.slow

SECRET = "sekrit-bad-input-9876"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SPEC_CODES = {-32700, -32600, -32601, -32602, -32603}
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("bad-input")
    config = {
        "backends": [demo_backend("notes", env={"API_TOKEN": SECRET})],
        "server": {"max_body_bytes": MAX_BODY, "log_level": "debug"},
        # Only so that the rate-limit gate reads tools/call bodies too (a budget no test here spends).
        "rate_limits": {"shared": {"rate": 1000, "burst": 1000}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


@pytest.fixture(scope="module")
def session(gateway: Gateway) -> dict[str, str]:
    """Headers of one legacy (2025-11-25) session opened by hand, as a raw client would."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    response = httpx2.post(gateway.url, headers=ACCEPT, json=initialize, timeout=10)
    assert response.status_code == 200
    headers = {**ACCEPT, "mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    httpx2.post(gateway.url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def post(gateway: Gateway, headers: dict[str, str], body: bytes) -> httpx2.Response:
    return httpx2.post(gateway.url, headers=headers, content=body, timeout=10)


def message_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message in a JSON or single-event SSE answer."""
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    message: dict[str, Any] = json.loads(text)
    return message


def error_of(response: httpx2.Response) -> dict[str, Any]:
    error: dict[str, Any] = message_of(response)["error"]
    return error


def test_malformed_json_is_a_parse_error(gateway: Gateway, session: dict[str, str]) -> None:
    response = post(gateway, session, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert response.status_code == 400 and error_of(response)["code"] == -32700


@pytest.mark.parametrize("body", [b"[1, 2]", b"42", b'"x"', b'{"id": 2, "method": "tools/list"}', b"{}"])
def test_json_that_is_not_json_rpc_is_an_invalid_request(
    gateway: Gateway, session: dict[str, str], body: bytes
) -> None:
    response = post(gateway, session, body)
    assert response.status_code == 400 and error_of(response)["code"] == -32600


def test_unknown_method_is_method_not_found(gateway: Gateway, session: dict[str, str]) -> None:
    response = post(gateway, session, json.dumps({"jsonrpc": "2.0", "id": 3, "method": "no/such"}).encode())
    assert error_of(response)["code"] == -32601


def test_wrong_params_shape_is_invalid_params(gateway: Gateway, session: dict[str, str]) -> None:
    body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": 5}}
    assert error_of(post(gateway, session, json.dumps(body).encode()))["code"] == -32602


def test_oversized_body_is_refused_with_413_naming_the_setting_and_the_cap(
    gateway: Gateway, session: dict[str, str]
) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"x": "a" * MAX_BODY}})
    # With a Content-Length (refused before the body is read) and chunked (refused once the cap is passed).
    for content in (body.encode(), iter([body.encode()])):
        response = httpx2.post(gateway.url, headers=session, content=content, timeout=10)
        assert response.status_code == 413
        error = error_of(response)
        assert error["code"] == -32600 and error["data"] == {"limit": "server.max_body_bytes", "max_bytes": MAX_BODY}
        assert f"over {MAX_BODY:,} bytes (server.max_body_bytes)" in error["message"]


def test_a_content_length_over_the_cap_is_answered_before_any_body_arrives(gateway: Gateway) -> None:
    """Before, the gateway waited for the body until limits.http_body_timeout and closed without an answer."""
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Length: 999999999\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(head.encode() + b'{"jsonrpc": "2.0", "id": 1, ')
        answer = b""
        while b"server.max_body_bytes" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")


DEEP = "[" * 5000 + "]" * 5000  # deeper than `json.loads` follows: it raises RecursionError, not ValueError


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize"},  # read for its id
        {"jsonrpc": "2.0", "method": "subscriptions/listen"},  # read by the drain
        {"jsonrpc": "2.0", "method": "tools/call"},  # read by the rate-limit gate
    ],
    ids=["with an id", "subscriptions/listen", "tools/call"],
)
def test_a_deeply_nested_body_is_a_parse_error_without_a_traceback(gateway: Gateway, message: dict[str, Any]) -> None:
    body = json.dumps({**message, "params": {"x": "@"}}).replace('"@"', DEEP).encode()
    for _ in range(3):
        response = post(gateway, ACCEPT, body)
        assert response.status_code == 400 and error_of(response)["code"] == -32700, response.text
    output = gateway.output()
    assert "Traceback" not in output and "RecursionError" not in output


def test_unknown_session_id_is_404_with_a_json_rpc_error(gateway: Gateway, session: dict[str, str]) -> None:
    headers = {**session, "mcp-session-id": "0" * 32}
    response = post(gateway, headers, b'{"jsonrpc": "2.0", "id": 6, "method": "tools/list"}')
    assert response.status_code == 404 and error_of(response)["code"] in SPEC_CODES
    assert httpx2.delete(gateway.url, headers=headers, timeout=10).status_code == 404


def test_invalid_tool_arguments_name_the_field(gateway: Gateway, session: dict[str, str]) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "notes_slow_echo", "arguments": {"message": 5}},
    }
    response = post(gateway, session, json.dumps(body).encode())
    result = message_of(response)["result"]
    assert result["isError"] and "field 'message'" in result["content"][0]["text"]


METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/get",
    "resources/read",
    "completion/complete",
    "notifications/cancelled",
    "notifications/initialized",
    "logging/setLevel",
    "server/discover",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
rpc_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2, None]),
        "id": st.none() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False) | st.lists(st.integers()),
        "method": st.sampled_from(METHODS) | st.text(max_size=20),
        "params": json_values,
        "result": json_values,
        "error": json_values,
    },
)
frames = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    rpc_like.map(lambda v: json.dumps(v).encode()),
    st.lists(rpc_like, max_size=3).map(lambda v: json.dumps(v).encode()),
    rpc_like.map(lambda v: json.dumps(v).encode()[: max(1, len(json.dumps(v)) // 2)]),  # cut short
)
session_choice = st.sampled_from(["valid", "unknown", "none"])


def test_concurrent_requests_under_one_id_are_each_answered(gateway: Gateway, session: dict[str, str]) -> None:
    """The SDK routes answers by request id: before the check, a second request under an id still in flight
    took the first one's stream and one of them was never answered."""
    call = {"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {"name": "notes_slow_echo"}}
    call["params"]["arguments"] = {"message": "x", "seconds": 1}  # type: ignore[index]
    answers: list[httpx2.Response] = []

    async def one(client: httpx2.AsyncClient) -> None:
        answers.append(await client.post(gateway.url, headers=session, json=call))

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=30) as client, anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(one, client)

    anyio.run(main)
    assert len(answers) == 6  # none hung (a hang is a ReadTimeout)
    results = [a for a in answers if a.status_code == 200]
    assert results and all('"result"' in a.text for a in results)
    for refused in (a for a in answers if a.status_code != 200):
        assert refused.status_code == 409 and error_of(refused)["code"] == -32600 and refused.json()["id"] == 42


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=frames, which=session_choice)
def test_random_frames_get_spec_errors_and_never_a_500(
    gateway: Gateway, session: dict[str, str], body: bytes, which: str
) -> None:
    headers = dict(session)
    if which == "unknown":
        headers["mcp-session-id"] = "f" * 32
    elif which == "none":
        headers = dict(ACCEPT)
    response = post(gateway, headers, body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        assert error_of(response)["code"] in SPEC_CODES | {-32000, -32001, -32002, -32022}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_gateway_still_serves_a_real_client_after_the_garbage(gateway: Gateway, anyio_backend: str) -> None:
    async with Client(gateway.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "notes_slow_echo" in names
        result = await client.call_tool("notes_slow_echo", {"message": "still here", "seconds": 0})
        assert not result.is_error
    await anyio.lowlevel.checkpoint()
    assert gateway.proc.poll() is None
    assert SECRET not in gateway.output()
