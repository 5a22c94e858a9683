"""What a gateway passes on and reports about: a backend tool's structured result that breaks its declared output
schema, a call refused by a large input schema, and the optimizer's state in /readyz (real gateway processes, a
raw JSON-RPC stdio backend, the SDK's client)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, tools_backend, write_config
from vmcp_opt import arguments
from vmcp_opt.arguments import ArgumentError, ArgumentValidator

pytestmark = [pytest.mark.slow]

# Tools that declare `outputSchema` {"count": integer, required}: `honest` keeps to it, `lying` returns a string
# for `count` (after a long value of its own), `silent` returns no structured content, `failing` an error. `wide`
# has 6,000 required string parameters (a plain schema, as large as a listing lets a tool be), `costly` 5,000
# parameters with a pattern each (its meta-schema check alone outlasts the deadline).
SERVER = r"""
COUNTED = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
WIDE = {f"p{i}": {"type": "string"} for i in range(6_000)}
COSTLY = {f"p{i}": {"pattern": "a"} for i in range(5_000)}
TOOLS = [
    {"name": name, "inputSchema": {"type": "object"}, "outputSchema": COUNTED}
    for name in ("honest", "lying", "silent", "failing")
] + [
    {"name": "wide", "inputSchema": {"type": "object", "properties": WIDE, "required": list(WIDE)}},
    {"name": "costly", "inputSchema": {"type": "object", "properties": COSTLY}},
]
RESULTS = {
    "honest": {"content": [{"type": "text", "text": "3 things"}], "structuredContent": {"count": 3}},
    "lying": {
        "content": [{"type": "text", "text": "many things"}],
        "structuredContent": {"note": "N" * 5_000, "count": "many" + "Y" * 5_000},
    },
    "silent": {"content": [{"type": "text", "text": "no structure"}]},
    "failing": {"content": [{"type": "text", "text": "it broke"}], "isError": True},
}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("out21")
    # A deadline well under what the meta-schema check of `wide`'s 6,000 properties takes (about 1 s): the plain
    # schema must not pay for it at all.
    config = write_config(
        directory,
        {
            "backends": [tools_backend("o", directory / "lying.py", SERVER)],
            "limits": {"argument_check_timeout": 0.5},
        },
    )
    with running_gateway(config) as gateway:
        yield gateway


def text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


# --- results that break the tool's output schema -----------------------------------------------------------


@pytest.mark.anyio
async def test_a_structured_result_that_breaks_the_output_schema_reaches_the_client_as_a_tool_error(
    gateway: Gateway,
) -> None:
    async with Client(gateway.url) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert listed["o_lying"].output_schema is not None  # the client validates what the gateway passes on
        result = await client.call_tool("o_lying", {})  # before the fix: RuntimeError from the SDK's client
    assert result.is_error and result.structured_content is None
    message, original = text(result).split("\n")
    assert message.startswith("backend 'o' answered tool 'lying' with a result that breaks the tool's output schema")
    assert "field 'count'" in message and 'is not of type "integer"' in message
    assert len(message) < 400  # the 5,000-character values are not echoed
    assert original == "many things"  # the backend's own text follows, for the agent


@pytest.mark.anyio
async def test_a_missing_structured_result_is_a_tool_error_and_an_error_result_passes_unchanged(
    gateway: Gateway,
) -> None:
    async with Client(gateway.url) as client:
        silent = await client.call_tool("o_silent", {})
        failing = await client.call_tool("o_failing", {})
    assert silent.is_error
    assert text(silent) == (
        "backend 'o' answered tool 'silent' with a result that breaks the tool's output schema (it returned no "
        "structured content); the backend's own text follows, if any\nno structure"
    )
    assert failing.is_error and text(failing) == "it broke"


@pytest.mark.anyio
async def test_a_conforming_structured_result_passes_unchanged(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("o_honest", {})
    assert not result.is_error
    assert result.structured_content == {"count": 3} and text(result) == "3 things"


# --- large input schemas ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_call_missing_fields_of_a_large_plain_schema_names_the_first_missing_field(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        for _ in range(2):  # the second call too: no verdict of the first is reused wrongly
            result = await client.call_tool("o_wide", {})
            assert result.is_error
            assert text(result) == "invalid arguments for tool 'o_wide': field 'p0': required but missing"
        called = await client.call_tool("o_wide", {f"p{i}": "x" for i in range(6_000)})
    assert not called.is_error and text(called) == "called"


@pytest.mark.anyio
async def test_a_schema_too_costly_to_check_is_refused_on_every_call(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        for _ in range(2):
            result = await client.call_tool("o_costly", {"p0": "a"})
            assert result.is_error
            assert text(result).startswith("arguments for tool 'o_costly' could not be checked within 0.5s")


def test_a_schema_whose_check_timed_out_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[object] = []
    original = arguments.compile_schema

    def counting(schema: Any) -> Any:
        compiled.append(schema)
        return original(schema)

    monkeypatch.setattr(arguments, "compile_schema", counting)
    # A starved judging thread gives no verdict: on a busy machine (other tests beside this one) 30 deadlines of
    # wall time can pass before it has had the 0.05 s of CPU it is judged on.
    monkeypatch.setattr(arguments, "_JUDGING_WALL", 2_000.0)
    validator = ArgumentValidator(timeout=0.05)
    schema = {"type": "object", "properties": {f"p{i}": {"pattern": "a"} for i in range(5_000)}}  # ~2 s to compile
    with pytest.raises(ArgumentError, match=r"could not be checked within 0\.05s"):
        validator.check("costly", schema, {"p0": "a"})
    # Cut off before it had most of a deadline of CPU (another process held the core), the first call's compile
    # proves nothing: a second compile on its own CPU budget, in a thread of its own, gives the verdict.
    if validator._judging is not None:
        assert validator.judged.wait(120)
    assert len(compiled) in (1, 2)
    verdict_after = len(compiled)
    for _ in range(2):
        with pytest.raises(ArgumentError, match=r"could not be checked within 0\.05s"):
            validator.check("costly", schema, {"p0": "a"})
    assert len(compiled) == verdict_after


# --- /readyz -----------------------------------------------------------------------------------------------------


def test_readiness_says_the_optimizer_is_off(gateway: Gateway) -> None:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()
    assert body["optimizer"] == {"enabled": False}


def test_readiness_shows_the_optimizer_index_once_its_vectors_are_ready(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"enabled": True, "index_dir": str(tmp_path)}}
    )
    with running_gateway(config) as gateway:
        deadline = time.monotonic() + 60
        while True:
            optimizer = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()["optimizer"]
            if optimizer["vectors_ready"] and optimizer["with_vectors"]:
                break
            assert time.monotonic() < deadline, optimizer
            time.sleep(0.1)
    assert optimizer["enabled"] is True and optimizer["tools"] > 0
    assert optimizer["with_vectors"] == optimizer["tools"] and optimizer["vectors_unsaved"] is None
