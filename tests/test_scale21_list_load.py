"""Many clients listing a large catalogue at once, over a real gateway (the optimizer off).

Found by the scale audit: a long list answer is shaped and encoded on worker threads (server/list_answers.py),
but as many at once as clients asked (up to anyio's 40 threads), each holding the GIL a slice at a time; the
event loop got about 1/(n + 1) of it, and 20 `tools/list` at once over 50,000 tools held `/healthz` for 10 s.
Now one list is shaped at a time, so the gateway's worker threads do not grow with the clients listing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import psutil
import pytest

from tests.support import Gateway, running_gateway, write_config

TOOLS = 3000
LISTERS = 8

# A stdio MCP server (newline-delimited JSON-RPC, the standard library only) with TOOLS tools.
MANY_TOOLS_SERVER = f"""
import json, sys
tools = [{{"name": f"t{{i}}", "description": f"tool {{i}} " + "x" * 60,
          "inputSchema": {{"type": "object", "properties": {{"a": {{"type": "string"}}}}}}}} for i in range({TOOLS})]
answers = {{
    "initialize": {{"protocolVersion": "2025-06-18", "capabilities": {{"tools": {{}}}},
                   "serverInfo": {{"name": "many", "version": "1"}}}},
    "tools/list": {{"tools": tools}},
    "ping": {{}},
}}
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method = message.get("method")
    reply = {{"jsonrpc": "2.0", "id": message["id"]}}
    if method in answers:
        reply["result"] = answers[method]
    else:
        reply["error"] = {{"code": -32601, "message": f"no {{method}}"}}
    sys.stdout.write(json.dumps(reply) + "\\n")
    sys.stdout.flush()
"""

HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/list",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "lister", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(scope="module")
def large_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("scale21-lists")
    server = directory / "many_tools.py"
    server.write_text(MANY_TOOLS_SERVER, encoding="utf-8")
    backend = {"name": "many", "command": sys.executable, "args": [str(server)]}
    with running_gateway(write_config(directory, {"backends": [backend]})) as gateway:
        yield gateway


def list_tools(gateway: Gateway, request_id: int) -> int:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {"_meta": META}}
    answer = httpx2.post(gateway.url, json=body, headers=HEADERS, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    return len(answer.json()["result"]["tools"])


def test_lists_asked_at_once_are_shaped_one_at_a_time(large_catalogue: Gateway) -> None:
    gateway = large_catalogue
    assert list_tools(gateway, 0) == TOOLS  # the first long list starts the worker thread that shapes lists
    process = psutil.Process(gateway.proc.pid)
    threads = process.num_threads()
    with ThreadPoolExecutor(LISTERS) as pool:
        counts = list(pool.map(lambda n: list_tools(gateway, n), range(1, LISTERS + 1)))
    assert counts == [TOOLS] * LISTERS
    # anyio keeps an idle worker thread for 10 s: one started for each list shaped at the same time would
    # still be here. One at a time needs the one the first list started (and one spare, for other work).
    assert process.num_threads() <= threads + 1
