"""Long list answers are shaped and encoded a slice at a time (server/list_answers.py): the same answer, byte
for byte, as the SDK's one pass over the whole list, in both protocol eras.

In process, the SDK's own `_serialize` and encoders over whole results are the reference; then a real gateway
in front of a real backend of 450 tools, listed by the SDK client in both eras and by plain HTTP.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.server.lowlevel import Server
from mcp.server.runner import ServerRunner
from mcp_types import JSONRPCNotification, JSONRPCResponse

from tests.support import EXAMPLES, demo_backend, raw_session, running_gateway, write_config
from vmcp_opt.server import list_answers
from vmcp_opt.server.event_store import BoundedEventStore, UnsentAnswers
from vmcp_opt.server.list_answers import SLICE, _Shaper, json_body, modern_form, quick_form, session_form

ITEMS = SLICE * 2 + 50
# Non-ASCII (json.dumps escapes it, pydantic does not), quotes, and nulls inside a schema.
TEXT = 'Größe "quoted" \u2603'
SCHEMA = {"type": "object", "properties": {"size": {"type": ["integer", "null"], "default": None}}}


def results() -> list[tuple[str, Any, str, str]]:
    """(method, a long result, its items' attribute, their wire key) for each list method."""
    return [
        (
            "tools/list",
            types.ListToolsResult(
                tools=[types.Tool(name=f"t{i}", description=TEXT, input_schema=SCHEMA) for i in range(ITEMS)]
            ),
            "tools",
            "tools",
        ),
        (
            "prompts/list",
            types.ListPromptsResult(prompts=[types.Prompt(name=f"p{i}", description=TEXT) for i in range(ITEMS)]),
            "prompts",
            "prompts",
        ),
        (
            "resources/list",
            types.ListResourcesResult(
                resources=[types.Resource(uri=f"file:///r{i}", name=f"r{i}", description=TEXT) for i in range(ITEMS)],
                next_cursor="more",
            ),
            "resources",
            "resources",
        ),
        (
            "resources/templates/list",
            types.ListResourceTemplatesResult(
                resource_templates=[
                    types.ResourceTemplate(uri_template=f"file:///{i}/{{x}}", name=f"r{i}") for i in range(ITEMS)
                ]
            ),
            "resource_templates",
            "resourceTemplates",
        ),
    ]


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
@pytest.mark.parametrize("case", range(4))
def test_a_long_list_is_shaped_in_slices_as_the_sdk_shapes_it_whole(case: int, version: str) -> None:
    method, result, attribute, key = results()[case]
    server: Server[Any] = Server("slices", version="1")
    whole = object.__new__(ServerRunner)
    whole.server = server
    shaped = _Shaper(server).shape(method, version, result, attribute, key)
    assert shaped == whole._serialize(method, version, result)
    assert len(shaped[key]) == ITEMS


@pytest.mark.parametrize("form", [session_form, modern_form, quick_form])
@pytest.mark.parametrize("request_id", [7, "[]", 'a"b'])
def test_a_long_list_is_encoded_in_slices_to_the_same_bytes(form: Any, request_id: Any) -> None:
    items = [{"name": f"t{i}", "description": TEXT, "inputSchema": SCHEMA, "gone": None} for i in range(ITEMS)]
    # The items' key also inside `_meta`, where a marker-free splice would have put the list.
    result = {"_meta": {"tools": []}, "tools": items, "nextCursor": "c"}
    response = JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)
    assert json_body(response, "tools", form) == form(response)


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": TEXT}], "structuredContent": {"schema": SCHEMA, "gone": None}},
        {"floats": [1e-05, 1e22, 0.1, -0.0], "big": 2**70, "empty": {}, "nested": [[None, True]]},
    ],
)
@pytest.mark.parametrize("request_id", [7, "[]", 'a"b'])
def test_an_answer_encoded_in_one_pass_holds_the_sdks_json_values(result: dict[str, Any], request_id: Any) -> None:
    response = JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)
    assert json.loads(quick_form(response)) == json.loads(modern_form(response))


def test_a_text_utf8_cannot_encode_is_answered_escaped_as_the_sdk_does() -> None:
    response = JSONRPCResponse(jsonrpc="2.0", id=1, result={"text": "before \ud800 after"})
    assert quick_form(response) == modern_form(response)
    assert b"\\ud800" in quick_form(response)


def test_a_short_list_is_answered_as_the_sdk_answers_it() -> None:
    result = types.ListToolsResult(tools=[types.Tool(name="one", input_schema=SCHEMA)])
    assert list_answers.answer_list(result, "tools") is result  # no middleware waiting: untouched


SHARED_TOOLS_SERVER = EXAMPLES / "backends" / "shared_tools_server.py"


def test_a_gateway_lists_a_long_catalogue_whole_in_both_eras(tmp_path: Path) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([f"echo_{i}" for i in range(ITEMS)]), encoding="utf-8")
    backend = {
        "name": "shared",
        "command": sys.executable,
        "args": [str(SHARED_TOOLS_SERVER)],
        "env": {"SHARED_TOOLS_FILE": str(tools_file)},
    }
    config = write_config(tmp_path, {"backends": [backend], "optimizer": {"enabled": False}})

    async def listed(url: str, mode: Any) -> list[types.Tool]:
        async with Client(url, mode=mode) as client:
            return (await client.list_tools()).tools

    with running_gateway(config) as gateway:
        modern = anyio.run(listed, gateway.url, "auto")
        legacy = anyio.run(listed, gateway.url, "legacy")
        answer = httpx2.post(
            gateway.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers=raw_session(gateway.url),
            timeout=60,
        )
    expected = {f"shared_echo_{i}" for i in range(ITEMS)} | {"shared_add_tool"}
    assert {tool.name for tool in modern} == expected
    assert [tool.model_dump() for tool in legacy] == [tool.model_dump() for tool in modern]
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    plain = answer.json()["result"]["tools"]
    assert [tool["name"] for tool in plain] == [tool.name for tool in legacy]
    assert int(answer.headers["content-length"]) == len(answer.content)


def test_a_gateway_passes_non_ascii_text_through_unchanged_in_both_eras(tmp_path: Path) -> None:
    """The 2026-07-28 entry writes answers in one pydantic pass (`quick_form`: UTF-8, not `\\u` escapes)."""
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})

    async def echoed(url: str, mode: Any) -> tuple[str, str]:
        async with Client(url, mode=mode) as client:
            result = await client.call_tool("notes_slow_echo", {"message": TEXT, "seconds": 0})
            return client.protocol_version, " ".join(c.text for c in result.content if isinstance(c, types.TextContent))

    with running_gateway(config) as gateway:
        assert anyio.run(echoed, gateway.url, "auto") == ("2026-07-28", TEXT)
        assert anyio.run(echoed, gateway.url, "legacy") == ("2025-11-25", TEXT)


def test_an_answer_sent_as_plain_json_is_not_kept_for_replays() -> None:
    """The SDK stores each message of a request before the transport picks the answer's form; an answer that
    goes out as one JSON body (its request's first message) has no stream to resume and is not kept. One that
    follows a progress notification (an SSE stream) is kept, and replays."""
    ring = BoundedEventStore()
    store = UnsentAnswers(ring.session_view())
    answer = JSONRPCResponse(jsonrpc="2.0", id=1, result={"tools": []})

    async def scenario() -> list[Any]:
        store.undecided.add("1")
        await store.store_event("1", None)  # the priming event, before dispatch
        await store.store_event("1", answer)
        assert len(ring) == 1 and "1" not in store.undecided
        store.undecided.add("2")
        progress = JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params={"progress": 1})
        primed = await store.store_event("2", None)
        await store.store_event("2", progress)
        await store.store_event("2", answer.model_copy(update={"id": 2}))
        replayed: list[Any] = []

        async def collect(event: Any) -> None:
            replayed.append(event.message)

        await store.replay_events_after(primed, collect)
        return replayed

    replayed = anyio.run(scenario)
    assert [type(message).__name__ for message in replayed] == ["JSONRPCNotification", "JSONRPCResponse"]


def test_the_event_store_is_bounded_in_bytes_and_replays_what_it_keeps() -> None:
    """Streamed answers are kept as their JSON: past `max_bytes`, the oldest go, whatever their count."""
    ring = BoundedEventStore(max_events=1000, max_bytes=10_000)
    view = ring.session_view()
    big = {"content": [{"type": "text", "text": "x" * 3000}]}

    async def scenario() -> tuple[list[Any], list[Any]]:
        dropped: list[Any] = []
        kept: list[Any] = []

        async def to(events: list[Any], event: Any) -> None:
            events.append(event)

        first = await view.store_event("1", None)
        for request in range(1, 6):
            await view.store_event("1", JSONRPCResponse(jsonrpc="2.0", id=request, result=big))
        await view.replay_events_after(first, partial(to, dropped))
        later = await view.store_event("2", None)
        await view.store_event("2", JSONRPCResponse(jsonrpc="2.0", id=9, result=big))
        await view.replay_events_after(later, partial(to, kept))
        return dropped, kept

    dropped, kept = anyio.run(scenario)
    assert ring.bytes <= ring.max_bytes and len(ring) < 8  # three answers of ~3 KB fit, not six
    assert dropped == []  # the priming event the client held was pushed out: nothing to replay from it
    assert [event.message.id for event in kept] == [9] and kept[0].message.result == big
