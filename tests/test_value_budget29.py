"""Values counted as they arrive, and a listing page's budget of values (fF2), through a real gateway process, hostile
backends writing raw JSON-RPC over stdio and streamable HTTP (tests/value_budget_backend29.py) and a real SDK client.

An answer's values were counted in a second pass over its whole text once it was in, on the event loop (100-600 ms
for 10 MB of JSON as text), and past 4 x limits.max_result_values strings only guessed (a quarter of its quotes).
Now each chunk is counted as it comes, the state inside a string carried to the next: the count is exact, and an
HTTP body is refused as soon as it passes the bound, not once it ends. A listing page was not counted at all: a
page of one tool and 4.3 million values in a field beside it held the event loop over a second at every re-fetch.
It is held to a page's budget now, and a page past it ends its list as an over-long page does.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import free_port, running_gateway, stop_process, wait_http, write_config
from tests.test_failure_recovery import backend, text
from tests.value_budget_backend29 import call_result, jsontext_rows

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BACKEND = Path(__file__).with_name("value_budget_backend29.py")
JUNK = 1_100_000  # zeros beside a page's tools: past its budget of 1,048,576 values (backends/results.py)
LISTED = 9000  # tools on a legal page: ~72,000 values, past limits.max_result_values (65,536), within the budget
COMMAS = 200_000  # strings holding a comma each: 400,000 commas, 200,000 of them outside strings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio_backend(name: str, junk: int = 0, tools: int = 0) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": [str(BACKEND), "stdio", str(junk), str(tools)]}


@contextlib.contextmanager
def http_backend(name: str, mode: str, junk: int = 0) -> Iterator[dict[str, Any]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BACKEND), "http", str(port), mode, str(junk), "0"])
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_http(url, expect=(405,), proc=proc)
        yield {"name": name, "transport": "streamable-http", "url": url}
    finally:
        stop_process(proc)


def gateway_config(backends: list[dict[str, Any]]) -> dict[str, Any]:
    return {"backends": backends, "health": {"interval": 3600}, "timeouts": {"call": 30}}


def values_outside_strings(data: bytes) -> int:
    """The test's oracle: a JSON text's `{`, `[` and `,` outside its strings, byte by byte."""
    count, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in b"{[,":
            count += 1
    return count


async def test_a_listing_page_past_its_budget_of_values_ends_its_list(tmp_path: Path) -> None:
    with http_backend("hj", "json", JUNK) as json_junk, http_backend("ej", "sse", JUNK) as sse_junk:
        backends = [stdio_backend("sj", junk=JUNK), json_junk, sse_junk, stdio_backend("big", tools=LISTED)]
        with running_gateway(write_config(tmp_path, gateway_config(backends))) as gateway:
            for name in ("sj", "hj", "ej"):
                state = backend(gateway, name)
                # Refused before it was parsed: the list ends there, the backend stays in service without tools.
                assert state["state"] == "ready" and state["restarts"] == 0 and state["tools"] == 0, state
            # A big but legal page, past limits.max_result_values, is served whole.
            assert backend(gateway, "big")["tools"] == LISTED + 4
            async with Client(gateway.url) as client:
                with anyio.fail_after(60):
                    fine = await client.call_tool("big_ok", {})
                assert not fine.is_error and text(fine) == "fine"
    log = gateway.output()
    for name in ("sj", "hj", "ej"):
        said = f"backend {name}: tools/list: a page was too large to take in (backend '{name}' answered a listing page"
        assert said in log, log[-4000:]
    assert "answered a listing page with about 1,100,0" in log  # stdio counts the whole line
    assert log.count("more than the 1,048,576 one page may hold") >= 3, log[-4000:]
    assert "Traceback" not in log


async def test_values_are_counted_exactly_as_they_come(tmp_path: Path) -> None:
    mixed = json.dumps({"jsonrpc": "2.0", "id": 1, "result": call_result("commas", COMMAS)}).encode()
    expected = f"about {values_outside_strings(mixed):,} values, more than limits.max_result_values (65,536)"
    with http_backend("h", "json") as json_backend, http_backend("e", "sse") as sse_backend:
        backends = [stdio_backend("s"), json_backend, sse_backend]
        with running_gateway(write_config(tmp_path, gateway_config(backends))) as gateway:
            async with Client(gateway.url) as client:
                for name in ("s", "e", "h"):
                    with anyio.fail_after(60):
                        # JSON as text (escaped quotes and backslashes, cut anywhere by the chunks) and 200,000
                        # strings holding commas: the old count guessed 100,000 values from the quotes.
                        refused = await client.call_tool(f"{name}_commas", {"n": COMMAS})
                    assert refused.is_error, text(refused)
                    if name == "h":  # refused as soon as it passed the bound, not read further
                        assert "at least" in text(refused) and "not read further" in text(refused), text(refused)
                        assert "more than limits.max_result_values (65,536)" in text(refused), text(refused)
                    else:
                        assert expected in text(refused), (text(refused), expected)
                    with anyio.fail_after(60):
                        # 2.7 MB of JSON as text, ~220,000 commas and brackets in its one string: one value.
                        rows = await client.call_tool(f"{name}_jsontext", {"n": 20_000})
                    assert not rows.is_error and text(rows) == jsontext_rows(20_000), text(rows)[:300]
                with anyio.fail_after(60):
                    # A body that never ends: refused once past the bound, where the whole body was awaited.
                    endless = await client.call_tool("h_endless", {"n": 100_000})
                assert endless.is_error and "more than limits.max_result_values" in text(endless), text(endless)
            for name in ("s", "e", "h"):
                state = backend(gateway, name)
                assert state["state"] == "ready" and state["circuit"]["state"] == "closed", state
    assert "Traceback" not in gateway.output()
