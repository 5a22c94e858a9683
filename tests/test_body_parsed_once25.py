"""A big POST body is parsed at most once by the gateway, and a call the rate limits refuse not at all.

The layers in front of the SDK (bad input, the drain, the rate-limit gate) each parsed the whole body again: a
4 MB tools/call cost ~0.4 s of event-loop time a parse, three to five times. Each test counts the parses: the
gateway process runs with a `sitecustomize` that logs every `json.loads` / `pydantic_core.from_json` of more
than a megabyte (with its caller), so the count is exact whatever the machine's speed. Real `vmcp serve`
processes, real backends (the demo and a small echo server written here), raw HTTP.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import Gateway, demo_backend, raw_session, running_gateway, sitecustomize, write_config

pytestmark = pytest.mark.slow

BIG = 1 << 20  # a parse of more than this much is counted
PAD = "x" * (2 * BIG)  # a tools/call argument that makes a body big

COUNTING = f"""
import json, os, sys, traceback
import pydantic_core

LOG = os.environ["PARSES_LOG"]

def _counted(parse, name):
    def counted(data, *args, **kwargs):
        if len(data) > {BIG}:
            caller = os.path.basename(traceback.extract_stack(limit=2)[0].filename)
            with open(LOG, "a") as log:
                log.write(f"{{os.getpid()}} {{name}} {{caller}}\\n")
        return parse(data, *args, **kwargs)
    return counted

json.loads = _counted(json.loads, "json.loads")
pydantic_core.from_json = _counted(pydantic_core.from_json, "from_json")
"""

ECHO_SERVER = """
from typing import Any
from mcp.server.mcpserver import MCPServer

server = MCPServer("echo")

@server.tool()
def echo(value: Any, pad: str = "") -> dict[str, Any]:
    \"\"\"The value as it arrived, and the length of the padding.\"\"\"
    return {"value": value, "pad": len(pad)}

server.run()
"""


class Parses:
    """The big parses the gateway process logged."""

    def __init__(self, log: Path, gateway: Gateway) -> None:
        self.log = log
        self.pid = str(gateway.proc.pid)

    def all(self) -> list[str]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == self.pid]


def counting_gateway(directory: Path, config: dict[str, Any]) -> Iterator[tuple[Gateway, Parses]]:
    (directory / "echo_server.py").write_text(ECHO_SERVER, encoding="utf-8")
    backends = [
        demo_backend("notes"),
        {"name": "echo", "command": sys.executable, "args": [str(directory / "echo_server.py")]},
    ]
    log = directory / "parses.log"
    env = {**sitecustomize(directory / "site", COUNTING), "PARSES_LOG": str(log)}
    with running_gateway(write_config(directory, {"backends": backends, **config}), env=env) as gateway:
        yield gateway, Parses(log, gateway)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Parses]]:
    yield from counting_gateway(tmp_path_factory.mktemp("parsed-once"), {})


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Parses]]:
    # One whoami and one search_notes for everyone in a test's time; every other tool unlimited.
    limits = {"per_tool": {name: {"rate": 0.001, "burst": 1} for name in ("notes_whoami", "notes_search_notes")}}
    yield from counting_gateway(tmp_path_factory.mktemp("parsed-once-limited"), {"rate_limits": limits})


def tool_call(request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def post(gateway: Gateway, headers: dict[str, str], body: bytes) -> httpx2.Response:
    return httpx2.post(gateway.url, headers=headers, content=body, timeout=60)


def counted_during(parses: Parses, send: Any) -> tuple[Any, list[str]]:
    before = len(parses.all())
    answer = send()
    return answer, parses.all()[before:]


# Escapes, astral characters, an integer past 64 bits and a decimal that a float would round.
VALUE_TEXT = '{"text": "caf\\u00e9 \\ud83d\\ude00 \\u0041\\"\\\\", "big": 123456789012345678901234567890, "exact": 0.1}'


def test_a_big_call_is_parsed_once_and_its_arguments_reach_the_backend_unchanged(
    plain: tuple[Gateway, Parses],
) -> None:
    gateway, parses = plain
    headers = raw_session(gateway.url)
    body = (
        '{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo_echo", "arguments": '
        f'{{"value": {VALUE_TEXT}, "pad": "{PAD}"}}}}}}'
    ).encode()
    answer, counted = counted_during(parses, lambda: post(gateway, headers, body))
    assert answer.status_code == 200, answer.text[:300]
    result = answer.json()
    assert result["id"] == 7
    assert result["result"]["structuredContent"] == {"value": json.loads(VALUE_TEXT), "pad": len(PAD)}
    assert result["result"]["structuredContent"]["value"]["big"] == 123456789012345678901234567890
    # The SDK's own parse alone (it was five: bad input twice, the drain twice, then the SDK): the counter works.
    assert len(counted) == 1, counted


def test_a_big_body_with_its_id_after_the_arguments_is_answered_under_its_id(plain: tuple[Gateway, Parses]) -> None:
    gateway, parses = plain
    headers = raw_session(gateway.url)
    params = {"name": "echo_echo", "arguments": {"value": 1, "pad": PAD}}
    body = json.dumps({"jsonrpc": "2.0", "method": "tools/call", "params": params, "id": "late"}).encode()
    answer, counted = counted_during(parses, lambda: post(gateway, headers, body))
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["id"] == "late"
    assert answer.json()["result"]["structuredContent"] == {"value": 1, "pad": len(PAD)}
    assert len(counted) <= 2, counted  # the head cannot name the id: one parse here, one the SDK's


@pytest.mark.parametrize("request_id", ["null", "true", "[1]", "1.5"])
def test_a_big_body_with_an_unusable_id_is_still_an_invalid_request(
    plain: tuple[Gateway, Parses], request_id: str
) -> None:
    gateway, _ = plain
    headers = raw_session(gateway.url)
    body = f'{{"jsonrpc": "2.0", "id": {request_id}, "method": "tools/call", "params": {{"name": "echo_echo", '
    body += f'"arguments": {{"value": 1, "pad": "{PAD}"}}}}}}'
    answer = post(gateway, headers, body.encode())
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32600
    assert "id must be a string or an integer" in answer.json()["error"]["message"]


def test_a_big_call_the_rate_limits_refuse_is_never_parsed(limited: tuple[Gateway, Parses]) -> None:
    gateway, parses = limited
    headers = raw_session(gateway.url)
    call = json.dumps(tool_call(1, "notes_whoami", {"pad": PAD})).encode()
    first, counted = counted_during(parses, lambda: post(gateway, headers, call))
    assert first.status_code == 200, first.text[:300]
    assert len(counted) == 1, counted  # the SDK's
    again = json.dumps(tool_call(2, "notes_whoami", {"pad": PAD})).encode()
    refused, counted = counted_during(parses, lambda: post(gateway, headers, again))
    assert refused.status_code == 429
    assert refused.headers["retry-after"]
    error = refused.json()
    assert error["id"] == 2
    assert error["error"]["data"]["limit"] == "rate_limits.per_tool.notes_whoami"
    assert counted == []  # refused on the method and the tool's name alone


def test_a_tool_named_twice_past_the_head_pays_for_the_tool_that_runs(limited: tuple[Gateway, Parses]) -> None:
    """JSON's last `params` wins: the head names an unlimited tool, the call is of a limited one. That one's bucket
    is still taken (by the router, the gate not marking the call paid): its second call is refused."""
    gateway, _ = limited
    headers = raw_session(gateway.url)
    answers = []
    for request_id in (10, 11):
        body = (
            f'{{"jsonrpc": "2.0", "id": {request_id}, "method": "tools/call", '
            f'"params": {{"name": "notes_slow_echo", "arguments": {{"message": "{PAD}", "seconds": 0}}}}, '
            '"params": {"name": "notes_search_notes", "arguments": {"query": "q"}}}'
        ).encode()
        answers.append(post(gateway, headers, body))
    first, second = answers
    assert first.status_code == 200 and not first.json()["result"].get("isError"), first.text[:300]
    assert "[]" in first.text  # search_notes ran, not slow_echo
    refused = second.status_code == 429 or "rate limit" in second.text
    assert refused, second.text[:300]
