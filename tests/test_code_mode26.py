"""Code mode's values as a direct call would have them, in the real `vmcp serve` over a real demo backend and the
SDK client: non-ASCII text counted as the router counts it (characters, not the 6- and 12-byte escapes the pipe
once carried) against `limits.max_result_bytes` and `server.max_body_bytes`, and every size error naming its
setting; a float JSON has no form for (inf, nan) refused with its place, in a script's result, in a call's
arguments and in `data`, instead of silently becoming null; a keyword as a `data` name, and an integer too long to
write, refused in words the caller can act on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, raw_session, running_gateway, sse_messages, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOOL = "execute_tool_script"
RESULT_MOST = 300_000  # limits.max_result_bytes
BODY_MOST = 1_000_000  # server.max_body_bytes
EMOJI = "\N{GRINNING FACE}"  # one character, four bytes of UTF-8, twelve as a JSON escape (a surrogate pair)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("code_mode26")
    config = {
        "backends": [demo_backend("notes")],
        "code_mode": {"enabled": True, "cpu_seconds": 10, "memory_mb": 512, "call_timeout": 20, "timeout": 60},
        "limits": {"max_result_bytes": RESULT_MOST},
        "server": {"max_body_bytes": BODY_MOST},
    }
    with running_gateway(write_config(directory, config), "--log-level", "warning") as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def run(client: Client, script: str, **data: Any) -> types.CallToolResult:
    return await client.call_tool(TOOL, {"script": script, "data": data} if data else {"script": script})


async def test_non_ascii_text_is_counted_as_a_direct_call_counts_it(gateway: Gateway) -> None:
    """A result a direct call gets, a script gets too, and an argument a client may send, a script may send: both
    are within their limits in characters and UTF-8 bytes, though ten times past them as escapes."""
    title = EMOJI * 100_000  # 100,000 characters, 400 KB of UTF-8: within both limits; 1.2 MB escaped
    async with Client(gateway.url) as client:
        saved = await client.call_tool("notes_save_note", {"title": title, "text": "zebrafind"})
        assert not saved.is_error, text(saved)
        direct = await client.call_tool("notes_search_notes", {"query": "zebrafind"})
        assert not direct.is_error and title in text(direct), text(direct)[:200]
        found = await run(client, "len(call_tool('notes_search_notes', {'query': 'zebrafind'})[0])")
        assert text(found) == "100000", text(found)[:300]
        # 400 KB of UTF-8 in one argument, as a client's body could be; 1.2 MB escaped.
        script = f"call_tool('notes_save_note', {{'title': 's' + '{EMOJI}' * 100000, 'text': 'zebrasaved'}})[:13]"
        sent = await run(client, script)
        assert text(sent) == "saved note 's", text(sent)[:300]
        returned = await run(client, f"'{EMOJI}' * 200000")  # 200,000 characters, 800 KB: within the limit
        assert not returned.is_error and text(returned) == EMOJI * 200_000, text(returned)[:300]


async def test_a_result_past_the_limit_is_refused_naming_the_setting(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        for script in (f"'{EMOJI}' * 400000", "'a' * 400000"):
            refused = await run(client, script)
            assert refused.is_error and "(limits.max_result_bytes" in text(refused), (script, text(refused))


async def test_a_float_json_cannot_hold_is_refused_at_its_place_not_made_null(gateway: Gateway) -> None:
    """starlark turned inf and nan into None: the script's result and a call's arguments said null instead."""
    async with Client(gateway.url) as client:
        cases = {
            'x = 1e308 * 10\n{"inf": x, "nan": x - x}': 'result["inf"] is +inf',
            "return [1, 2.5, {'deep': [-1e308 * 10]}]": 'result[2]["deep"][0] is -inf',
            "x = float('nan')\n[\n  x,\n]": "result[0] is nan",
            "call_tool('notes_search_notes', {'query': 1e308 * 10})": (
                "line 1: tool 'notes_search_notes': arguments[\"query\"] is +inf"
            ),
            "a = 1\ncall_tool('notes_search_notes', query=float('nan'))": (
                "line 2: tool 'notes_search_notes': arguments[\"query\"] is nan"
            ),
            "call_tools([['notes_whoami'], ['notes_search_notes', {'query': -1e308 * 10}]])": (
                'line 1: call_tools: calls[1][1]["query"] is -inf'
            ),
        }
        for script, expected in cases.items():
            result = await run(client, script)
            assert result.is_error and expected in text(result), (script, text(result))
            assert "JSON" in text(result), text(result)
        # A real null, and words that merely contain "inf" and "nan", are values like any other.
        plain = await run(client, "{'a': None, 'b': ['info', 'banana', 1.5e308]}")
        assert plain.structured_content == {"a": None, "b": ["info", "banana", 1.5e308]}, text(plain)
        searched = await run(client, "call_tool('notes_search_notes', {'query': 'infinite nan'})")
        assert not searched.is_error, text(searched)


def raw_call(gateway: Gateway, arguments: str) -> dict[str, Any]:
    """The script tool's result for `arguments` written as JSON text (the SDK client writes inf as null)."""
    headers = raw_session(gateway.url)
    body = f'{{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {{"name": "{TOOL}", "arguments": {arguments}}}}}'
    answer = httpx2.post(gateway.url, content=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    if answer.headers["content-type"].startswith("text/event-stream"):
        messages = [m for _, m in sse_messages(iter(answer.text.splitlines())) if m and "result" in m]
        return messages[-1]["result"]  # type: ignore[no-any-return]
    return answer.json()["result"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"x": 1e400}', 'data["x"] is inf'),
        ('{"x": [1, {"y": -1e400}]}', 'data["x"][1]["y"] is -inf'),
        ('{"x": NaN}', 'data["x"] is nan'),
    ],
)
def test_data_holding_a_float_json_cannot_hold_is_refused_by_name(gateway: Gateway, data: str, expected: str) -> None:
    result = raw_call(gateway, f'{{"script": "1", "data": {data}}}')
    message = result["content"][0]["text"]
    assert result.get("isError") and expected in message and "JSON" in message, message


async def test_keywords_are_no_data_names_and_long_integers_are_named(gateway: Gateway) -> None:
    """Python's keywords and Starlark's (`load`) are refused as `data` names as a built-in's are, whichever form
    the script takes; an integer too long to write is named as such, in a result or an argument."""
    async with Client(gateway.url) as client:
        for name, script in [
            ("class", "return [x for x in range(2)]"),
            ("in", "y = 1\nreturn y"),
            ("while", "1"),
            ("load", "1"),
            ("__result__", "1"),
        ]:
            result = await client.call_tool(TOOL, {"script": script, "data": {name: 1}})
            expected = f"data: '{name}' cannot be a variable's name"
            assert result.is_error and expected in text(result), (name, text(result))
        long_integer = "x = 1\nfor i in range(6000):\n    x = x * 7\n"
        for script in (long_integer + "x", long_integer + "return x"):
            result = await run(client, script)
            expected = "the script's result has no JSON form: an integer longer than the limit (4300 digits)"
            assert result.is_error and expected in text(result), text(result)
            assert "set_int_max_str_digits" not in text(result), text(result)
        argument = await run(client, "a = 1\ncall_tool('notes_search_notes', {'query': 1 << 20000})")
        expected = "line 2: an integer longer than the limit (4300 digits) has no JSON form"
        assert argument.is_error and expected in text(argument), text(argument)


async def test_a_data_name_still_reads_and_a_script_still_ends_as_before(gateway: Gateway) -> None:
    """The script's value is kept for the checks above without changing what it is or where its errors are."""
    async with Client(gateway.url) as client:
        assert text(await run(client, "# a comment\nx = [\n1,\n2]\n{'sum': x[0] + x[1], 'n': n}  # done\n", n=3)) == (
            '{"sum": 3, "n": 3}'
        )
        assert text(await run(client, "for i in range(2):\n    pass\n")) == "null"
        assert text(await run(client, "a = 1; a")) == "1"
        failed = await run(client, "x = 1\n\ny = [\n  zz,\n]")
        assert failed.is_error and "line 4: Variable `zz` not found" in text(failed), text(failed)
        called = await run(client, "a = 1\n\ncall_tool('no_such_tool')")
        assert "line 3: tool 'no_such_tool': Unknown tool" in text(called), text(called)
