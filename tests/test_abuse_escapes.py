"""A client cannot slip past the gateway's checks by spelling its request with JSON `\\u` escapes.

The HTTP gates look for `"tools/call"` and `"id"` in a body's bytes before parsing it; `"tools\\u002fcall"`
parses to the same method and `"\\u0069d"` to the same key. A real `vmcp serve`, a raw HTTP client.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from tests.support import Gateway, demo_backend, raw_session, running_gateway, write_config

# One call per 1000 s: within a test, one call is the whole budget.
LIMITS = {"per_caller": {"rate": 0.001, "burst": 1}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("abuse-escapes")
    config = write_config(directory, {"backends": [demo_backend("notes")], "rate_limits": LIMITS})
    with running_gateway(config) as running:
        yield running


def test_a_tool_call_spelled_with_escapes_is_refused_with_429_like_any_other(gateway: Gateway) -> None:
    headers = raw_session(gateway.url)
    plain = '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "notes_whoami", "arguments": {}}}'
    first = httpx2.post(gateway.url, content=plain, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    escaped = plain.replace('"id": 1', '"id": 2').replace("tools/call", "tools\\u002fcall")
    refused = httpx2.post(gateway.url, content=escaped, headers=headers, timeout=30)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "1000"
    assert refused.json()["error"]["data"]["limit"] == "rate_limits.per_caller"


def test_a_null_id_under_an_escaped_key_is_an_invalid_request_not_a_silent_202(gateway: Gateway) -> None:
    headers = raw_session(gateway.url)
    answer = httpx2.post(
        gateway.url, content='{"jsonrpc": "2.0", "\\u0069d": null, "method": "ping"}', headers=headers, timeout=30
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == -32600
    assert "not null" in answer.json()["error"]["message"]
