"""Calls that ask the user, in the audit log, for a 2026-07-28 client (its call answered `InputRequiredResult`, its
retry bringing the answer) and a 2025-11-25 one (asked mid-call on its session): a workflow with an elicitation step
writes one `workflow_started` and one end with the run's real outcome, after its steps, every event with the run's
`workflow_id`; a plain tool call whose backend asks, or that needs the user's approval, is no `success` until it has
run. A real `vmcp serve` in front of the conformance backend, real SDK clients in both eras."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from tests.support import EXAMPLES, Gateway, policed_config, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
POLICY = """\
permit(principal in Group::"dev", action in [Action::"list_tools", Action::"call_tool"], resource);
@approval("Images are expensive.")
permit(principal, action == Action::"call_tool", resource == Tool::"test_image_content");
"""
ASK = {
    "id": "ask",
    "type": "elicitation",
    "message": "Go on?",
    "requested_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
}


def asking_workflow(name: str, last_tool: str) -> dict[str, Any]:
    """`before` and the question run side by side; `after` waits for the answer."""
    return {
        "name": name,
        "description": f"Asks the user, then calls {last_tool}.",
        "steps": [
            {"id": "before", "tool": "test_simple_text"},
            ASK,
            {"id": "after", "tool": last_tool, "depends_on": ["ask"]},
        ],
    }


# workflow -> (its end's type, its outcome)
RUNS = {
    "ask_then_fail": ("workflow_failed", "application_error"),
    "ask_then_succeed": ("workflow_completed", "success"),
}
MODES = {"legacy": "2025-11-25", "auto": "2026-07-28"}
WORKFLOW_ENDS = {"workflow_completed", "workflow_failed", "workflow_timed_out"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str, Path]]:
    directory = tmp_path_factory.mktemp("workflow_audit27")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "workflows": [
            asking_workflow("ask_then_fail", "test_error_handling"),
            asking_workflow("ask_then_succeed", "test_simple_text"),
        ],
        # With data: each test ends with a marker call whose arguments say the log holds all it wrote before.
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "include_data": True}},
    }
    path, keys = policed_config(directory, {"alice": ["dev"]}, POLICY, config)
    with running_gateway(path) as gateway:
        yield gateway, keys["alice"], directory / "audit.log"


def client(gateway: Gateway, key: str, mode: str, answer: types.ElicitResult) -> Client:
    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return answer

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    transport = streamable_http_client(gateway.url, http_client=http)
    return Client(transport, mode=mode, elicitation_callback=elicitation)  # type: ignore[arg-type]


def lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


async def events_since(alice: Client, log: Path, start: int) -> list[dict[str, Any]]:
    """The events written since line `start`, once the log holds a marker call made now: the events of what this
    test did were queued before the marker's (each call's events are queued before its answer is sent), and the
    log writes them in order."""
    marker = uuid.uuid4().hex
    await alice.call_tool("json_schema_2020_12_tool", {"name": marker})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        written = lines(log)[start:]
        for at, event in enumerate(written):
            if (event.get("data") or {}).get("request") == {"name": marker}:
                return written[:at]
        await anyio.sleep(0.02)
    raise AssertionError("the marker call's event was not written within 30 s")


def named(events: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    return [e for e in events if e["target"].get("name") == tool or e["target"].get("workflow_name") == tool]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("workflow", sorted(RUNS))
async def test_a_run_that_asks_its_user_is_audited_once_from_start_to_its_real_end(
    served: tuple[Gateway, str, Path], mode: str, workflow: str
) -> None:
    gateway, key, log = served
    start = len(lines(log))
    answer = types.ElicitResult(action="accept", content={"word": "yes"})
    async with client(gateway, key, mode, answer) as alice:
        assert alice.protocol_version == MODES[mode]
        result = await alice.call_tool(workflow, {})
        events = await events_since(alice, log, start)
    end_type, outcome = RUNS[workflow]
    assert result.is_error == (outcome != "success")

    run = [e for e in named(events, workflow) if e["type"].startswith("workflow_")]
    assert [e for e in named(events, workflow) if not e["type"].startswith("workflow_")] == []
    ids = {e["target"].get("workflow_id") for e in run}
    assert len(ids) == 1 and None not in ids, [(e["type"], e["target"].get("workflow_id")) for e in run]
    assert [e["type"] for e in run].count("workflow_started") == 1
    ends = [e for e in run if e["type"] in WORKFLOW_ENDS]
    assert [(e["type"], e["outcome"]) for e in ends] == [(end_type, outcome)]
    assert run[0]["type"] == "workflow_started" and run[-1] is ends[0]  # the end after every step's event
    steps = {
        e["target"]["step_id"]: e["outcome"]
        for e in run
        if e["type"] in {"workflow_step_completed", "workflow_step_failed"}
    }
    assert steps == {"before": "success", "ask": "success", "after": outcome}
    assert ends[0]["metadata"]["extra"]["protocol_version"] == MODES[mode]


# What a call that asked is audited as, request by request: a 2026-07-28 client's first request is answered with the
# question (not a success: nothing ran yet), its retry with the call's outcome.
ASKED = {"legacy": [], "auto": ["input_required"]}


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_a_tool_call_whose_backend_asks_is_a_success_only_once_it_answered(
    served: tuple[Gateway, str, Path], mode: str
) -> None:
    gateway, key, log = served
    start = len(lines(log))
    answer = types.ElicitResult(action="accept", content={"username": "alice", "email": "a@example.com"})
    async with client(gateway, key, mode, answer) as alice:
        result = await alice.call_tool("test_elicitation", {"message": "who?"})
        events = await events_since(alice, log, start)
    assert not result.is_error
    calls = [e for e in named(events, "test_elicitation") if e["type"] == "mcp_tool_call"]
    assert [e["outcome"] for e in calls] == [*ASKED[mode], "success"]


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_a_call_the_user_declined_to_approve_is_never_audited_as_a_success(
    served: tuple[Gateway, str, Path], mode: str
) -> None:
    gateway, key, log = served
    start = len(lines(log))
    async with client(gateway, key, mode, types.ElicitResult(action="decline")) as alice:
        result = await alice.call_tool("test_image_content", {})
        events = await events_since(alice, log, start)
    assert result.is_error
    calls = [e for e in named(events, "test_image_content") if e["type"] == "mcp_tool_call"]
    assert [(e["outcome"], e["metadata"]["extra"].get("error_type")) for e in calls] == [
        *[(outcome, "input_required") for outcome in ASKED[mode]],
        ("denied", "not_approved"),
    ]
