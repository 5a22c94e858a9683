"""`limits.held_answer_bytes`: answers ready at the same moment, and resumptions of a session with no SSE answer.

Checked when its result was ready and charged only once written, answers that came back at the same moment all
passed the check before any was charged: 11 of 30 resumed 9 MB answers, left unread, got through a 64 MiB bound. A
resumed GET stream in a session whose answers were all JSON was charged to nobody, and never refused. A real gateway
process, real stdio backends, raw sockets that read the first bytes of each answer only.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import RAW_HEADERS, api_keys_file, demo_backend, running_gateway, write_config
from tests.test_held_answers27 import (
    ANSWER_CHARS,
    HOSTILE_SERVER,
    MIB,
    RELEASED_BACKEND,
    WITHIN,
    StoppedReader,
    cut_after_progress,
    error_of,
    first_bytes,
    open_session,
    refused_by,
    resume_unread,
    served_again,
)
from tests.test_resume20c_get_stream_lost import GetStream

pytestmark = [pytest.mark.slow]

PER_CALLER = 32 * MIB
BOUND = "limits.held_answer_bytes.per_caller"


def config(tmp_path: Path, *backends: dict[str, Any]) -> dict[str, Any]:
    return {
        "backends": list(backends),
        "server": {"write_timeout": 600},  # the bound, not the write deadline, is what is tested
        "limits": {
            "held_answer_bytes": {"per_caller": PER_CALLER, "total": 1024 * MIB},
            "max_connections_per_address": 400,
        },
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        # Room for every answer's event, so each call's progress stays resumable.
        "sessions": {
            "max_event_bytes_per_session": 512 * MIB,
            "max_event_bytes_in_memory": 512 * MIB,
            "max_event_bytes_per_caller_in_memory": 512 * MIB,
        },
    }


def test_answers_ready_at_the_same_moment_pass_the_bound_no_further_than_one_at_a_time(tmp_path: Path) -> None:
    """Calls cut at their progress and resumed on connections never read, their answers released together: no more
    of them get through than the bound lets through one by one (each charged before the next is checked)."""
    (tmp_path / "released.py").write_text(RELEASED_BACKEND)
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["users"]})
    released = {"name": "released", "command": sys.executable, "args": [str(tmp_path / "released.py")]}
    calls = 16  # 144 MB of answers at once: four and a half times the bound
    release = tmp_path / "release"
    with running_gateway(write_config(tmp_path, config(tmp_path, released))) as running:
        headers = {**RAW_HEADERS, "Authorization": f"Bearer {keys['alice']}"}
        headers |= open_session(running.url, headers)
        event_ids = [cut_after_progress(running, headers, 100 + n, release) for n in range(calls)]
        resumed: list[socket.socket] = []
        try:
            heads = []
            for event_id in event_ids:  # every resumption open (nothing held yet: each is served) before any answer
                connection, head = resume_unread(running, headers, event_id)
                resumed.append(connection)
                assert head.startswith(b"HTTP/1.1 200 "), head[:300]
                heads.append(head)
            release.touch()  # every answer ready at once
            answers = [first_bytes(connection, head) for connection, head in zip(resumed, heads, strict=True)]
            refusals = [refused_by(answer) for answer in answers]
            # Held, each answer counts until its client reads it: past the bound after ceil(32 MiB / 9 MB) = 4.
            most = -(-PER_CALLER // ANSWER_CHARS)
            assert 1 <= refusals.count(None) <= most, refusals
            assert set(refusals) == {None, BOUND}, refusals
            for answer in answers:
                if (error := error_of(answer)) is not None:  # the call ran: not "try again", which runs it again
                    assert "the call ran" in error["message"] and "try again" not in error["message"], error
        finally:
            for connection in resumed:
                connection.close()
        served_again_in(running.url, headers, release)


def test_a_resumed_get_stream_of_a_session_answered_in_json_is_charged_and_refused_past_the_bound(
    tmp_path: Path,
) -> None:
    """A session whose only answers were JSON (no request's SSE stream to take the caller from) resumes its GET
    stream while its caller holds its bound of unread answers elsewhere: refused, 429 with Retry-After."""
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["users"]})
    hostile = {"name": "hostile", "command": sys.executable, "args": [str(HOSTILE_SERVER)]}
    with running_gateway(write_config(tmp_path, config(tmp_path, hostile, demo_backend("notes")))) as running:
        headers = {**RAW_HEADERS, "Authorization": f"Bearer {keys['alice']}"}
        headers |= open_session(running.url, headers)
        listing = post(running.url, headers, 2, "tools/list", {})
        add_tool = next(tool["name"] for tool in listing["result"]["tools"] if tool["name"].endswith("add_tool"))
        stream = GetStream(running.url, headers)
        arguments = {"name": "echo_3", "description": "Added at run time."}
        assert stream.status == 200
        added = post(running.url, headers, 3, "tools/call", {"name": add_tool, "arguments": arguments})
        assert "result" in added and not added["result"].get("isError"), added
        get_event_id, note = stream.next_message()  # the tool list changed: an event of the GET stream, held
        assert note["method"] == "notifications/tools/list_changed" and get_event_id is not None

        stopped = StoppedReader(running, keys["alice"], "json")  # the same caller, past its bound elsewhere
        try:
            for request_id in range(12):  # 9 MB answers left unread, until the caller is refused
                stopped.call(100 + request_id)
                if refused_by(first_bytes(stopped.sockets[-1])) is not None:
                    break
            else:
                pytest.fail("the caller was never refused")
            sent = {**headers, "Last-Event-ID": get_event_id}
            with httpx2.stream("GET", running.url, headers=sent, timeout=60) as resumed:  # an SSE stream if served
                assert resumed.status_code == 429, resumed.status_code
                assert resumed.headers["retry-after"] == "1"
                assert json.loads(resumed.read())["error"]["data"]["limit"] == BOUND
        finally:
            stopped.close()
        served_again(running.url, keys["alice"])


def served_again_in(url: str, headers: dict[str, str], release: Path) -> None:
    """Polls until the session's call of `released_wait` is served (its caller's held answers released), within
    WITHIN."""
    deadline = time.monotonic() + WITHIN
    for request_id in range(1000, 100_000):
        arguments = {"size": 1000, "release": str(release)}
        params = {"name": "released_wait", "arguments": arguments, "_meta": {"progressToken": request_id}}
        message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
        answer = httpx2.post(url, json=message, headers=headers, timeout=WITHIN)
        if error_of(answer.content) is None:
            assert b"x" * 1000 in answer.content, answer.text[-300:]
            return
        assert time.monotonic() < deadline, f"still refused after {WITHIN}s: {answer.text[-300:]}"
        time.sleep(0.1)


def post(url: str, headers: dict[str, str], request_id: int, method: str, params: dict[str, Any]) -> Any:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    answer = httpx2.post(url, json=message, headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json"), answer.text
    return answer.json()
