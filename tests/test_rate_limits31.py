"""`rate_limits.per_caller` (and `shared`) bound every request the gateway forwards to a backend, not tool calls alone:
`resources/read`, `prompts/get`, `completion/complete` and `resources/subscribe` take the caller's token, refused as a
tool call is (HTTP 429 with Retry-After and the JSON-RPC error; over stdio the JSON-RPC error), counted and audited;
what the gateway answers from its catalogue (the lists, ping) stays free, and a request paid at the HTTP gate is not
charged again by the router. Before, a client with a budget of one call could read resources without end.

Over real processes: `vmcp serve` (HTTP and `--stdio`) over the demo backend, a raw HTTP client (to read the status
and headers the SDK client hides), the SDK's client over stdio, the audit log in a file, `/metrics`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.redis_server import running_redis
from tests.support import (
    EXAMPLES,
    Gateway,
    demo_backend,
    free_port,
    running_gateway,
    running_gateways,
    wait_until,
    write_config,
)
from tests.support import (
    metric_sample as sample,
)

pytestmark = pytest.mark.slow

BURST = 2
# One token per 1000 s: within a test, the burst is the budget.
LIMITS = {"per_caller": {"rate": 0.001, "burst": BURST}}
SETTING = "rate_limits.per_caller"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
PROMPT = "notes_summarize_notes"


def telemetry(directory: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"audit": {"enabled": True, "output": str(directory / "audit.log")}, "metrics": metrics}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rate-limits31")


@pytest.fixture(scope="module")
def gateway(directory: Path) -> Iterator[Gateway]:
    config = {
        "backends": [demo_backend("notes")],
        "rate_limits": LIMITS,
        "telemetry": telemetry(directory, {"enabled": True}),
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def client_from(address: str) -> httpx2.Client:
    """An HTTP client whose connections come from `address` (any 127.x.y.z is loopback on Linux): without a
    verified subject a caller's budget is its address's, so each test takes an address of its own."""
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=30)


class Session:
    """A 2025-11-25 session opened by hand over one client address."""

    def __init__(self, http: httpx2.Client, gateway: Gateway) -> None:
        self.http, self.url = http, gateway.url
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        opened = http.post(self.url, json=self._message(0, "initialize", hello), headers=HEADERS)
        assert opened.status_code == 200, opened.text
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        self.headers = {**HEADERS, **session}
        done = http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers)
        assert done.status_code == 202
        self.ids = 0

    @classmethod
    def joining(cls, session: Session, gateway: Gateway) -> Session:
        """`session` continued on another replica."""
        joined = cls.__new__(cls)
        joined.http, joined.url, joined.headers, joined.ids = session.http, gateway.url, session.headers, 100
        return joined

    @staticmethod
    def _message(request_id: int, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        return message if params is None else {**message, "params": params}

    def ask(self, method: str, params: dict[str, Any] | None = None) -> httpx2.Response:
        self.ids += 1
        return self.http.post(self.url, json=self._message(self.ids, method, params), headers=self.headers)


def answered(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a 200 (plain JSON, or the one SSE event carrying it)."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return dict(response.json())
    [data] = [line[5:] for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    return dict(json.loads(data))


def assert_refused(response: httpx2.Response, request_id: int) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["id"] == request_id
    assert body["error"]["data"]["limit"] == SETTING and body["error"]["data"]["retry_after"] > 0
    assert "rate limit reached" in body["error"]["message"]


def assert_free(session: Session) -> None:
    """The catalogue's answers and ping cost no token, whatever the budget holds."""
    for method in ("tools/list", "resources/list", "resources/templates/list", "prompts/list", "ping"):
        assert "result" in answered(session.ask(method)), method


def refusals(audit: Path) -> list[dict[str, Any]]:
    lines = audit.read_text().splitlines() if audit.exists() else []
    return [event for event in map(json.loads, lines) if event["type"] == "vmcp_rate_limited"]


def read(uri: str = "notes://all") -> dict[str, Any]:
    return {"uri": uri}


def completion() -> dict[str, Any]:
    return {"ref": {"type": "ref/prompt", "name": PROMPT}, "argument": {"name": "style", "value": "s"}}


def test_over_http_a_third_resource_read_is_429_and_the_lists_stay_free(gateway: Gateway, directory: Path) -> None:
    before = sample(gateway.base, "vmcp_rate_limited_total", setting=SETTING)
    with client_from("127.0.0.31") as http:
        session = Session(http, gateway)
        assert_free(session)
        # Paid once: at the gate, not again by the router, so exactly BURST reads pass.
        for _ in range(BURST):
            assert "result" in answered(session.ask("resources/read", read())), "a read within the budget"
        assert_refused(session.ask("resources/read", read()), session.ids)
        assert_refused(session.ask("prompts/get", {"name": PROMPT}), session.ids)
        assert_refused(session.ask("completion/complete", completion()), session.ids)
        assert_free(session)
        # Another address has a budget of its own.
        with client_from("127.0.0.32") as elsewhere:
            assert "result" in answered(Session(elsewhere, gateway).ask("resources/read", read()))
    assert sample(gateway.base, "vmcp_rate_limited_total", setting=SETTING) == before + 3
    found: list[dict[str, Any]] = []

    def audited() -> bool:
        found[:] = [e for e in refusals(directory / "audit.log") if e["source"]["value"] == "127.0.0.31"]
        return bool(found)

    wait_until(audited, message="no vmcp_rate_limited event for 127.0.0.31")
    # Each source's first refusal of the interval is written, the rest summarised (audit_summaries.py).
    assert found[0]["target"]["name"] == "resources/read" and found[0]["target"]["method"] == "resources/read"
    assert found[0]["outcome"] == "denied" and found[0]["metadata"]["extra"]["error_type"] == SETTING


def test_prompts_and_completions_share_the_callers_budget_with_tool_calls(gateway: Gateway) -> None:
    with client_from("127.0.0.33") as http:
        session = Session(http, gateway)
        call = session.ask("tools/call", {"name": "notes_search_notes", "arguments": {"query": "x"}})
        assert "result" in answered(call)
        assert "result" in answered(session.ask("prompts/get", {"name": PROMPT}))
        assert_refused(session.ask("completion/complete", completion()), session.ids)
        assert_refused(session.ask("tools/call", {"name": "notes_search_notes", "arguments": {"query": "x"}}), 4)


def test_a_subscription_pays_and_its_end_is_free(gateway: Gateway) -> None:
    """Each `resources/subscribe` is sent to the backend (a dedicated session may start for it); an unsubscribe
    stays free, as a client out of budget must still be able to drop what it holds."""
    with client_from("127.0.0.34") as http:
        session = Session(http, gateway)
        for _ in range(BURST):
            assert answered(session.ask("resources/subscribe", read())), "a subscription within the budget"
        assert_refused(session.ask("resources/subscribe", read()), session.ids)
        assert answered(session.ask("resources/unsubscribe", read()))


def test_over_stdio_a_third_read_is_the_json_rpc_error_counted_and_audited(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "backends": [demo_backend("notes")],
        "rate_limits": LIMITS,
        "telemetry": telemetry(tmp_path, {"enabled": True, "listen": f"127.0.0.1:{port}"}),
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(write_config(tmp_path, config))]
    )
    base = f"http://127.0.0.1:{port}"

    async def main() -> dict[str, Any]:
        async with Client(params) as client:
            for _ in range(BURST):
                assert (await client.read_resource("notes://all", cache_mode="bypass")).contents
            with pytest.raises(MCPError) as refused:
                await client.read_resource("notes://all", cache_mode="bypass")
            with pytest.raises(MCPError, match="rate limit reached"):
                await client.get_prompt(PROMPT)
            # The catalogue's answers stay free.
            assert (await client.list_tools(cache_mode="bypass")).tools
            assert (await client.list_resources(cache_mode="bypass")).resources
            assert (await client.list_prompts(cache_mode="bypass")).prompts
            # Counted before the refusal was answered; read while the gateway runs (its metrics listener stops with it).
            assert sample(base, "vmcp_rate_limited_total", setting=SETTING) == 2
        data = refused.value.error.data
        assert isinstance(data, dict)
        return data

    data = anyio.run(main)
    assert data["limit"] == SETTING and data["retry_after"] > 0
    audit = tmp_path / "audit.log"
    wait_until(lambda: refusals(audit), message="no vmcp_rate_limited event")
    first = refusals(audit)[0]
    assert first["target"]["name"] == "resources/read" and first["target"]["method"] == "resources/read"
    assert first["metadata"]["extra"]["error_type"] == SETTING


def test_a_subscription_replayed_into_a_restored_session_is_not_charged_again(tmp_path: Path) -> None:
    """A session opened on replica A and used on B is restored there by replaying what made it, one
    `resources/subscribe` per subscription, under the scope of the request that restored it: the caller paid for
    the subscription once, on A, and its budget (shared in Redis) must not pay it again on B."""
    conformance = {
        "name": "conformance",
        "command": sys.executable,
        "args": [str(EXAMPLES / "backends" / "conformance_server.py")],
    }
    with running_redis() as redis:
        config = {
            "backends": [conformance],
            "aggregation": {"conflict_resolution": "priority"},
            "redis": {"url": redis.url, "timeout": 1.0},
            "sessions": {"store": "redis"},
            "rate_limits": {**LIMITS, "store": "redis"},
        }
        with running_gateways(write_config(tmp_path, config), 2) as (first, second), client_from("127.0.0.35") as http:
            on_first = Session(http, first)
            assert "result" in answered(on_first.ask("resources/subscribe", read("test://watched-resource")))
            on_second = Session.joining(on_first, second)
            assert "result" in answered(on_second.ask("tools/list"))  # restores the session here, free
            assert "result" in answered(on_second.ask("resources/read", read("test://static-text")))
            assert_refused(on_second.ask("resources/read", read("test://static-text")), on_second.ids)
