"""The README's first minutes, as a user lives them: `vmcp serve` with no config (what `make serve` runs) over
the bundled demo's seven backends, its banner, then "A find_tool / call_tool round trip" with the inspector
CLI the README tells the user to run. Real gateway process, real backends, real client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import NODE_BIN, ROOT, free_port, stop_process, unavailable, wait_http

pytestmark = pytest.mark.slow

INSPECTOR = NODE_BIN / "mcp-inspector"
DEMO_BACKENDS = {"time", "git", "fetch", "everything", "memory", "filesystem", "alarms"}


@dataclass
class Demo:
    url: str
    banner: Path


def _all_backends_ready(base: str) -> bool:
    body = httpx2.get(f"{base}/readyz", timeout=5).json()
    ready = {b["name"] for b in body.get("backends", []) if b.get("state") == "ready"}
    return ready >= DEMO_BACKENDS


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`vmcp serve` as `make serve` starts it (no --config: the bundled demo), on a free port, with its index
    in a scratch directory so the test neither reads nor writes the user's."""
    if not INSPECTOR.exists():
        unavailable("the inspector CLI is not installed (npm ci)")
    scratch = tmp_path_factory.mktemp("readme3")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VMCP_OPTIMIZER__INDEX_DIR": str(scratch / "idx")}
    banner, log = scratch / "stdout.txt", scratch / "stderr.txt"
    with banner.open("wb") as out, log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "--port", str(port)], stdout=out, stderr=err, env=env, cwd=ROOT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=60, proc=proc)
        # Every demo backend listed before the first question, so a loaded machine cannot make the test
        # see half a catalogue (the README's client asks once `make serve` has settled).
        deadline = time.monotonic() + 90
        while not _all_backends_ready(base):
            assert time.monotonic() < deadline, log.read_text(encoding="utf-8", errors="replace")[-3000:]
            time.sleep(0.2)
        yield Demo(f"{base}/mcp", banner)
    finally:
        stop_process(proc)


def inspector(demo: Demo, *args: str) -> dict[str, Any]:
    """`$I <args>` as the README spells `$I`: the inspector CLI over streamable HTTP; its JSON answer."""
    done = subprocess.run(
        [str(INSPECTOR), "--cli", demo.url, "--transport", "http", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_the_banner_says_where_to_connect_and_how(demo: Demo) -> None:
    text = demo.banner.read_text(encoding="utf-8")
    base = demo.url.removesuffix("/mcp")
    assert f"vmcp-opt serving MCP at {demo.url} (optimizer on: tools/list shows find_tool and call_tool)" in text
    assert f"health: {base}/healthz   readiness: {base}/readyz" in text
    assert f"try it:  {INSPECTOR} --cli {demo.url} --transport http --method tools/list" in text
    assert '"args": ["serve", "--stdio"]' in text and "claude_desktop_config.json" in text
    assert "Ctrl-C stops the gateway and its backends." in text


def test_tools_list_shows_only_the_meta_tools(demo: Demo) -> None:
    listed = inspector(demo, "--method", "tools/list")
    assert [tool["name"] for tool in listed["tools"]] == ["find_tool", "call_tool"]


def test_find_tool_puts_the_time_tool_first_with_what_a_call_needs(demo: Demo) -> None:
    answer = inspector(
        demo,
        "--method",
        "tools/call",
        "--tool-name",
        "find_tool",
        "--tool-arg",
        "query=what time is it in Tokyo",
        "--tool-arg",
        "limit=3",
    )
    found = answer["structuredContent"]
    assert json.loads(answer["content"][0]["text"]) == found  # the same answer as JSON text
    first = found["tools"][0]
    assert first["name"] == "time_get_current_time", [t["name"] for t in found["tools"]]
    assert first["input_schema"]["required"] == ["timezone"] and 0 <= first["score"] <= 1
    assert len(found["tools"]) == 3
    # "full_tool_list": ~17600, "this_answer": ~600: the README's order of magnitude, not its digits.
    assert 12_000 < found["tokens"]["full_tool_list"] < 25_000, found["tokens"]
    assert 200 < found["tokens"]["this_answer"] < 1_000, found["tokens"]


def test_call_tool_returns_the_time_servers_own_result(demo: Demo) -> None:
    answer = inspector(
        demo,
        "--method",
        "tools/call",
        "--tool-name",
        "call_tool",
        "--tool-arg",
        "tool_name=time_get_current_time",
        "--tool-arg",
        'arguments={"timezone": "Asia/Tokyo"}',
    )
    assert answer["isError"] is False
    assert answer["structuredContent"]["timezone"] == "Asia/Tokyo"
    assert answer["structuredContent"]["datetime"].endswith("+09:00")


def test_one_search_gives_the_whole_alarm_chain(demo: Demo) -> None:
    answer = inspector(
        demo,
        "--method",
        "tools/call",
        "--tool-name",
        "find_tool",
        "--tool-arg",
        "query=cancel my 7am alarm",
        "--tool-arg",
        "limit=2",
    )
    tools = answer["structuredContent"]["tools"]
    assert [tool["name"] for tool in tools] == ["alarms_delete_alarm", "alarms_get_user_token"]
    assert tools[1]["supplies"] == {"tool": "alarms_delete_alarm", "argument": "token"}
