"""The list cache counts what it holds (server/list_cache.py, server/list_answers.py).

A kept long list answer holds its JSON and, beside it, its shaped items: the dicts and lists the SDK's serializer
made, which every path but the JSON's own reads (an answer gone SSE, stdio, the answers' accounting). Before, only
the JSON was counted: about a tenth of what an answer of tool definitions holds, and nothing at all over stdio, so
`MOST_BYTES` let the cache hold ten times its bound (four views of a 7.9 MB answer grew a gateway by 226 MB). And
a replaced catalogue's answers stayed until a later long list was kept.

The accounting is checked in process against what the answers really hold (`tracemalloc`), with real tool
definitions shaped by the SDK's own serializer; a real `vmcp serve` over a real stdio backend of large-schema tools
lists as four API-key callers whose Cedar views differ, each seeing its own view, every answer counted whole.
"""

from __future__ import annotations

import gc
import json
import re
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.server.lowlevel import Server

from tests.support import bearer_client, policed_config, running_gateway, write_config
from tests.test_agg_live_catalogue import agg_backend, respec
from vmcp_opt.aggregation.catalog import Catalog
from vmcp_opt.server.list_answers import Form, _Shaper, quick_form, session_form
from vmcp_opt.server.list_cache import Built, ListAnswers

T = TypeVar("T")
MODERN, SESSION = "2026-07-28", "2025-11-25"
TOOLS, PROPERTIES = 300, 60  # past list_answers.SLICE; ~1.3 MB of JSON, ~10 MB shaped

BACKEND = """
import json, sys
name, count, props = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def schema():
    properties = {f"f{j}": {"type": "string", "enum": ["a", "b"], "description": f"d{j}"} for j in range(props)}
    return {"type": "object", "properties": properties}
tools = [{"name": f"t{i}", "description": f"tool {i}", "inputSchema": schema()} for i in range(count)]
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method, answer = message.get("method"), {"jsonrpc": "2.0", "id": message["id"]}
    if method == "initialize":
        info = {"name": name, "version": "1"}
        answer["result"] = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": info}
    elif method == "tools/list":
        start = int((message.get("params") or {}).get("cursor") or 0)
        answer["result"] = {"tools": tools[start : start + 50]}
        if start + 50 < count:
            answer["result"]["nextCursor"] = str(start + 50)
    elif method == "ping":
        answer["result"] = {}
    else:
        answer["error"] = {"code": -32601, "message": "no such method"}
    sys.stdout.write(json.dumps(answer) + "\\n")
    sys.stdout.flush()
"""


def _schema(properties: int) -> dict[str, Any]:
    fields = {f"f{j}": {"type": "string", "enum": ["a", "b"], "description": f"d{j}"} for j in range(properties)}
    return {"type": "object", "properties": fields}


def _tools(count: int = TOOLS, properties: int = PROPERTIES) -> list[types.Tool]:
    return [types.Tool(name=f"t{i}", description=f"tool {i}", input_schema=_schema(properties)) for i in range(count)]


def _held_by(make: Callable[[], T]) -> tuple[T, int]:
    """What `make()` returns, and the bytes allocated meanwhile that are still held once it returned."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        made = make()
        gc.collect()
        return made, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def _build(shaper: _Shaper, tools: list[types.Tool], version: str, form: Form | None) -> Built:
    return shaper.build("tools/list", version, types.ListToolsResult(tools=tools), "tools", "tools", form)


@pytest.mark.parametrize(
    ("version", "form"),
    [(MODERN, quick_form), (SESSION, session_form), (MODERN, None)],
    ids=["modern-http", "session-http", "stdio"],
)
def test_a_built_answer_counts_what_it_holds(version: str, form: Form | None) -> None:
    shaper, tools = _Shaper(Server("gateway")), _tools()
    _build(shaper, tools, version, form)  # the serializer's caches made once, outside the measure
    built, held = _held_by(lambda: _build(shaper, tools, version, form))
    assert held > 5_000_000, held
    assert 0.85 * held <= built.size <= 1.25 * held, f"counted {built.size:,} bytes, held {held:,}"


@pytest.mark.anyio
async def test_kept_answers_hold_no_more_than_their_bound() -> None:
    """Four views a tool apart: room for two and a half answers keeps two, and what is kept holds no more."""
    shaper, tools = _Shaper(Server("gateway")), _tools()
    catalogue = Catalog()
    _, one = _held_by(lambda: _build(shaper, tools, MODERN, quick_form))
    answers = ListAnswers(most_bytes=int(2.5 * one))
    views = [tools[:k] + tools[k + 1 :] for k in range(4)]

    async def list_all() -> None:
        for view in views:
            built = await answers.get("tools/list", MODERN, view, catalogue, _builder(shaper, view))
            assert len(built.answer["tools"]) == TOOLS - 1

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await list_all()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(answers) == 2, len(answers)
    assert answers.kept_bytes <= int(2.5 * one) and held <= int(2.5 * one), (answers.kept_bytes, held, one)
    assert 0.8 * held <= answers.kept_bytes <= 1.25 * held, f"counted {answers.kept_bytes:,} bytes, held {held:,}"


def _builder(shaper: _Shaper, view: list[types.Tool]) -> Callable[[], Any]:
    async def build() -> Built:
        return _build(shaper, view, MODERN, quick_form)

    return build


@pytest.mark.anyio
async def test_a_replaced_catalogues_answers_go_when_it_does() -> None:
    shaper, tools = _Shaper(Server("gateway")), _tools(count=250, properties=5)
    answers, catalogue = ListAnswers(), Catalog()
    await answers.get("tools/list", MODERN, tools, catalogue, _builder(shaper, tools))
    await anyio.sleep(0.05)
    assert len(answers) == 1 and answers.kept_bytes > 0  # kept while its catalogue is the one served
    del catalogue  # replaced, and no longer referenced: its answers are of no use
    deadline = time.monotonic() + 30
    while len(answers):
        assert time.monotonic() < deadline, "the replaced catalogue's answers were kept"
        await anyio.sleep(0.01)
    assert answers.kept_bytes == 0


def _backend(directory: Path, name: str, count: int, properties: int) -> dict[str, Any]:
    script = directory / "schema_backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    return {"name": name, "command": sys.executable, "args": [str(script), name, str(count), str(properties)]}


@pytest.mark.anyio
async def test_callers_whose_views_differ_each_list_their_own_and_every_answer_is_counted_whole(
    tmp_path: Path,
) -> None:
    backends = [_backend(tmp_path, "big", TOOLS, PROPERTIES)]
    backends += [_backend(tmp_path, f"h{k}", 1, 1) for k in range(4)]
    policy = "permit(principal, action, resource);\n" + "".join(
        f'forbid(principal in Group::"g{k}", action, resource in Backend::"h{k}");\n' for k in range(4)
    )
    groups = {f"u{k}": [f"g{k}"] for k in range(4)}
    config, keys = policed_config(tmp_path, groups, policy, {"backends": backends})
    big = [f"big_t{i}" for i in range(TOOLS)]
    with running_gateway(config, "--log-level", "debug") as gateway:
        for _ in range(2):  # the second round is answered from the kept answers
            for k in range(4):
                async with bearer_client(gateway.url, keys[f"u{k}"]) as client:
                    names = [tool.name for tool in (await client.list_tools()).tools]
                assert names == big + [f"h{j}_t0" for j in range(4) if j != k], f"u{k}: {names[TOOLS:]}"
        output = gateway.output()
    kept = [int(size) for size in re.findall(r"list answer kept: (\d+) bytes", output)]
    assert len(kept) == 4, output[-3000:]  # one build per view: the second round was served what was kept
    json_bytes = len(json.dumps([{"inputSchema": _schema(PROPERTIES)}] * TOOLS))
    assert all(size > 4 * json_bytes for size in kept), (kept, json_bytes)  # the shaped items counted too


@pytest.mark.anyio
async def test_a_gateways_kept_answers_go_when_its_catalogue_is_replaced(tmp_path: Path) -> None:
    """A backend's tools change: the gateway's kept answer goes with the catalogue it was listed from, without
    waiting for a later long list to be kept."""
    config = write_config(tmp_path, {"backends": [agg_backend(tmp_path, "a", tools=[f"x{i}" for i in range(250)])]})
    with running_gateway(config, "--log-level", "debug") as gateway:
        async with Client(gateway.url) as client:
            assert len((await client.list_tools()).tools) == 251
            respec(tmp_path, "a", tools=[f"y{i}" for i in range(250)])
            await client.call_tool("a_relist_a", {})  # the backend says its tools changed: a new catalogue
            deadline = time.monotonic() + 30
            while "kept list answers was replaced: dropped" not in gateway.output():
                assert time.monotonic() < deadline, gateway.output()[-3000:]
                await anyio.sleep(0.1)
    assert len(re.findall("list answer kept", gateway.output())) == 1
