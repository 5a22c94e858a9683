"""A backend's result holding a number JSON has no form for (Python's `json.dumps` writes inf and nan as `Infinity`
and `NaN`), called from a script through the real `vmcp serve` and the SDK client: the script stops at the call with
an error naming the tool and the number's place, as such a number in a call's arguments or in the script's result
is refused; it once failed with Starlark's opaque "expected value at line 1 column 1" (its JSON reader's)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator

import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOOL = "execute_tool_script"
# A stdio backend writing its answers with Python's json.dumps, as a careless server does (the SDK's server would
# write null): each tool's result by name.
BACKEND = textwrap.dedent(
    """
    import json, sys
    INF, NAN = float("inf"), float("nan")
    RESULTS = {
        "structured": {"content": [{"type": "text", "text": "-"}], "structuredContent": {"v": {"w": [0, -INF]}}},
        "wrapped": {"content": [{"type": "text", "text": "-"}], "structuredContent": {"result": NAN}},
        "text": {"content": [{"type": "text", "text": json.dumps({"v": [1, INF]})}]},
        "bare": {"content": [{"type": "text", "text": json.dumps(NAN)}]},
        "finite": {"content": [{"type": "text", "text": json.dumps({"word": "Infinity NaN", "n": 1.5e308})}]},
        "finite_structured": {"content": [], "structuredContent": {"v": [-1.5e308, "NaN"]}},
    }
    for line in sys.stdin:
        request = json.loads(line)
        if "id" not in request or "method" not in request:
            continue
        method, params = request["method"], request.get("params") or {}
        if method == "initialize":
            result = {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "nonfinite", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in RESULTS]}
        elif method == "tools/call":
            result = RESULTS[params["name"]]
        else:
            result = {}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}) + "\\n")
        sys.stdout.flush()
    """
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("code_mode_nonfinite27")
    (directory / "nonfinite.py").write_text(BACKEND)
    config = {
        "backends": [{"name": "nf", "command": sys.executable, "args": [str(directory / "nonfinite.py")]}],
        "code_mode": {"enabled": True, "cpu_seconds": 10, "memory_mb": 512, "call_timeout": 20, "timeout": 60},
    }
    with running_gateway(write_config(directory, config), "--log-level", "warning") as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_result_holding_inf_or_nan_stops_the_script_naming_the_tool_and_place(gateway: Gateway) -> None:
    cases = {
        "x = 1\ncall_tool('nf_structured')": "line 2: tool 'nf_structured': its result has no JSON form: "
        'result["v"]["w"][1] is -inf',
        "call_tool('nf_wrapped')": "line 1: tool 'nf_wrapped': its result has no JSON form: result is nan",
        "v = call_tool('nf_text')\n'unused'": "line 1: tool 'nf_text': its result has no JSON form: "
        'result["v"][1] is inf',
        "call_tool('nf_bare')": "line 1: tool 'nf_bare': its result has no JSON form: result is nan",
        "call_tools([['nf_finite'], ['nf_text'], ['nf_structured']])": "line 1: tool 'nf_text': its result has no "
        'JSON form: result["v"][1] is inf',
    }
    async with Client(gateway.url) as client:
        for script, expected in cases.items():
            result = await client.call_tool(TOOL, {"script": script})
            assert result.is_error and expected in text(result), (script, text(result))
            assert "(JSON's numbers are finite)" in text(result), text(result)


async def test_finite_numbers_and_words_like_nan_are_values_as_before(gateway: Gateway) -> None:
    """Only a number JSON cannot hold is refused: the words, in strings, and the largest finite floats pass."""
    async with Client(gateway.url) as client:
        result = await client.call_tool(TOOL, {"script": "[call_tool('nf_finite'), call_tool('nf_finite_structured')]"})
        assert not result.is_error, text(result)
        assert text(result) == '[{"word": "Infinity NaN", "n": 1.5e+308}, {"v": [-1.5e+308, "NaN"]}]', text(result)
