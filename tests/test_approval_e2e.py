"""Approval before risky calls: a Cedar `@approval` policy makes the gateway ask the caller's user, through
elicitation, before the call runs; real `vmcp serve`, the demo backend and the SDK client in both eras."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.auth.api_keys import new_key

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

POLICY = """\
permit(principal in Group::"dev", action in [Action::"list_tools", Action::"call_tool"], resource);
@approval("Saving writes to the team's shared notes.")
permit(principal, action == Action::"call_tool", resource == Tool::"notes_save_note");
"""
KEY, KEY_HASH = new_key()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("approval")
    (directory / "keys.json").write_text(json.dumps([{"sha256": KEY_HASH, "subject": "alice", "groups": ["dev"]}]))
    (directory / "policy.cedar").write_text(POLICY)
    auth = {
        "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
        "authorization": {"policies": "policy.cedar"},
    }
    with running_gateway(write_config(directory, {"backends": [demo_backend("notes")], "auth": auth})) as running:
        yield running


def client(gateway: Gateway, mode: str, answer: types.ElicitResult | None, asked: list[str]) -> Client:
    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        assert answer is not None
        return answer

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    transport = streamable_http_client(gateway.url, http_client=http)
    if answer is None:
        return Client(transport, mode=mode)  # type: ignore[arg-type]
    return Client(transport, mode=mode, elicitation_callback=elicitation)  # type: ignore[arg-type]


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


ANSWERS = {
    "approved": (types.ElicitResult(action="accept", content={"approve": True}), None),
    "declined": (types.ElicitResult(action="decline"), "the user declined it"),
    "cancelled": (types.ElicitResult(action="cancel"), "the user cancelled it"),
    "said no": (types.ElicitResult(action="accept", content={"approve": False}), "the user not approved it"),
}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("case", sorted(ANSWERS))
async def test_a_call_needing_approval_runs_only_after_an_explicit_accept(
    gateway: Gateway, mode: str, case: str
) -> None:
    answer, refusal = ANSWERS[case]
    asked: list[str] = []
    marker = f"note-{mode}-{case.replace(' ', '-')}"
    async with client(gateway, mode, answer, asked) as alice:
        result = await alice.call_tool("notes_save_note", {"title": marker, "text": "x"})
        assert asked and "notes_save_note" in asked[0] and "shared notes" in asked[0]
        assert not (await alice.call_tool("notes_search_notes", {"query": marker})).is_error
        assert len(asked) == 1  # a call without an @approval policy asks nothing
    if refusal is None:
        assert not result.is_error and f"saved note '{marker}'" in text(result)
    else:
        assert result.is_error and refusal in text(result)
    outcome = "approved" if refusal is None else refusal.removeprefix("the user ").removesuffix(" it")
    assert "approval of notes_save_note for" in gateway.output() and f"(alice): {outcome}" in gateway.output()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_that_cannot_ask_its_user_is_refused_clearly(gateway: Gateway, mode: str) -> None:
    async with client(gateway, mode, None, []) as alice:
        with pytest.raises(MCPError) as refused:
            await alice.call_tool("notes_save_note", {"title": "t", "text": "x"})
        assert "needs the user's approval" in refused.value.error.message
        assert "does not support elicitation" in refused.value.error.message
        assert not (await alice.call_tool("notes_search_notes", {"query": "t"})).is_error
