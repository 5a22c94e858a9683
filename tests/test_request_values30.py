"""A client message of very many JSON values is refused before anything parses it (F6), through a real gateway
process, a real stdio backend and raw HTTP in both protocol eras, and over stdio.

`server.max_body_bytes` bounds a body's bytes only: a 3.5 MB `_meta` of 300,000 keys passed it, and the SDK parsed
and validated it on the event loop several times (eight such pings at once held every other client 6.5-9.2 s). A
body past `limits.max_request_values` (a batch counted whole) is answered -32600 naming the count, the bound and the
setting, and the gateway goes on answering; a big request of few values (a 3 MB string, commas and all) passes. How
long the loop was held is a duration, which no ordering fact tells apart: the figures are in the change's report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest

from tests.support import Gateway, demo_backend, raw_session, running_gateway, write_config
from tests.test_interop21_old_clients import HEADERS, initialize
from vmcp_opt.backends.big_requests import as_given
from vmcp_opt.config.limits import DEFAULT_MAX_REQUEST_VALUES

# Past the default bound by a margin (each key and its value add one comma): ~0.9 MB, far within the byte cap.
MANY = DEFAULT_MAX_REQUEST_VALUES + 5_000
MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
# 3 MB of one string, with a comma in every other byte: one value, however many commas its text holds.
BIG_TEXT = "a," * 1_500_000
ERAS = ["2025-11-25", MODERN]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {"backends": [demo_backend("demo")], "optimizer": {"enabled": False}}
    with running_gateway(write_config(tmp_path_factory.mktemp("request-values30"), config)) as running:
        yield running


def keys(count: int) -> dict[str, int]:
    return {f"k{i}": 0 for i in range(count)}


def headers_for(gateway: Gateway, era: str, method: str, name: str | None = None) -> dict[str, str]:
    """A 2025-11-25 session's headers, or a 2026-07-28 request's (no session)."""
    if era != MODERN:
        return raw_session(gateway.url)
    headers = {**HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    return {**headers, "Mcp-Name": name} if name else headers


def request(era: str, request_id: int, method: str, params: dict[str, Any]) -> bytes:
    if era == MODERN:
        params = {**params, "_meta": {**MODERN_META, **params.get("_meta", {})}}
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return json.dumps(message, separators=(",", ":")).encode()


def refused_for_values(answer: httpx2.Response) -> dict[str, Any]:
    assert answer.status_code == 413, answer.text[:300]
    error = answer.json()["error"]
    assert error["code"] == -32600, error
    assert "limits.max_request_values" in error["message"] and f"{DEFAULT_MAX_REQUEST_VALUES:,}" in error["message"]
    assert error["data"]["limit"] == "limits.max_request_values"
    assert error["data"]["max_values"] == DEFAULT_MAX_REQUEST_VALUES
    assert error["data"]["values"] > DEFAULT_MAX_REQUEST_VALUES
    return dict(error)


@pytest.mark.parametrize("era", ERAS)
def test_a_request_of_too_many_values_is_refused_naming_the_setting_and_the_gateway_answers_on(
    gateway: Gateway, era: str
) -> None:
    method = "ping" if era != MODERN else "server/discover"
    headers = headers_for(gateway, era, method)
    big = request(era, 1, method, {"_meta": keys(MANY)})
    assert len(big) < 4 * 1024 * 1024  # within server.max_body_bytes: refused for its values, not its bytes
    refused_for_values(httpx2.post(gateway.url, content=big, headers=headers, timeout=60))
    small = httpx2.post(gateway.url, content=request(era, 2, method, {}), headers=headers, timeout=30)
    assert small.status_code == 200, small.text
    assert "result" in small.json()


def test_a_batch_is_counted_whole(gateway: Gateway) -> None:
    """Each message within the bound, the batch past it: refused before it is split (which parses it)."""
    opening = httpx2.post(gateway.url, json=initialize("2025-03-26"), headers=HEADERS, timeout=30)
    assert opening.status_code == 200, opening.text
    headers = {**HEADERS, "mcp-session-id": opening.headers["mcp-session-id"]}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(gateway.url, json=initialized, headers=headers, timeout=30).status_code == 202
    half = keys(MANY // 2)
    batch = [{"jsonrpc": "2.0", "id": i, "method": "ping", "params": {"_meta": half}} for i in (1, 2)]
    answer = httpx2.post(gateway.url, content=json.dumps(batch, separators=(",", ":")), headers=headers, timeout=60)
    refused_for_values(answer)
    ping = httpx2.post(gateway.url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=headers, timeout=30)
    assert ping.status_code == 200 and ping.json()["result"] == {}, ping.text


@pytest.mark.parametrize("era", ERAS)
def test_a_big_string_argument_still_passes(gateway: Gateway, era: str) -> None:
    headers = headers_for(gateway, era, "tools/call", "demo_slow_echo")
    params = {"name": "demo_slow_echo", "arguments": {"message": BIG_TEXT, "seconds": 0}}
    answer = httpx2.post(gateway.url, content=request(era, 5, "tools/call", params), headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    result = answer.json()["result"]
    assert not result.get("isError"), str(result)[:300]
    assert result["content"][0]["text"] == BIG_TEXT


def test_a_stdio_line_of_too_many_values_is_refused_under_its_id_and_the_next_is_served(tmp_path: Path) -> None:
    bound = 2048
    config = {"backends": [demo_backend("demo")], "optimizer": {"enabled": False}}
    config["limits"] = {"max_request_values": bound}
    client = {"name": "test", "version": "1"}
    lines = [
        {
            "jsonrpc": "2.0",
            "id": "init",
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client},
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"_meta": keys(bound + 100)}},
        [{"jsonrpc": "2.0", "id": i, "method": "ping", "params": {"_meta": keys(bound // 2 + 50)}} for i in (8, 9)],
        {"jsonrpc": "2.0", "id": 10, "method": "ping"},
    ]
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(write_config(tmp_path, config))],
        input=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    by_id = {answer.get("id"): answer for answer in answers}
    error = by_id[7]["error"]
    assert error["code"] == -32600 and "limits.max_request_values" in error["message"], error
    assert error["data"]["max_values"] == bound and error["data"]["values"] > bound
    # A batch line is counted whole, before it is split: its refusal names no id of its messages.
    assert 8 not in by_id and 9 not in by_id
    assert by_id[None]["error"]["data"]["limit"] == "limits.max_request_values"
    assert by_id[10]["result"] == {}


def test_a_big_meta_is_handed_to_the_sdk_without_its_copy() -> None:
    """A client's `_meta` is forwarded to the backend (up to the bound): a big one is kept as given, as big arguments
    are (backends/big_requests.py), its top level a copy of its own, which the SDK's stamp writes keys into."""
    meta = {"k": [[i] for i in range(20_000)], "small": 1}
    call = types.CallToolRequest(params=types.CallToolRequestParams(name="x", arguments={}, _meta=meta))  # type: ignore[typeddict-unknown-key]
    given = as_given(call).model_dump(by_alias=True, mode="json", exclude_none=True)
    assert given == call.model_dump(by_alias=True, mode="json", exclude_none=True)
    sent_meta, own_meta = given["params"]["_meta"], dict(call.params.meta or {})
    assert sent_meta["k"] is own_meta["k"]  # not copied
    sent_meta["io.modelcontextprotocol/protocolVersion"] = MODERN  # as the SDK's 2026-07-28 stamp writes
    assert "io.modelcontextprotocol/protocolVersion" not in (call.params.meta or {})
