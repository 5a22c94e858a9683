"""A `GET` resuming from an event the session's store does not hold is refused with `400`, in either store.

The store keeps a bounded number of events per session (`sessions.max_events_per_session`); an id it dropped,
or one it never issued, names nothing to resume from. The gateway answered such a GET `200` with an empty
stream, which the SDK's client takes for a cut stream: it resumed from the same id, its attempts reset, every
retry interval for ever, and the call never resolved. A `400` (not `404`: the session is still there) makes
the client give up and fail the call. An id still held resumes as before.

Real `vmcp serve` over the conformance backend, real `redis-server` for the shared store, raw HTTP.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import raw_session, running_gateway, sse_messages, write_config
from tests.test_resume20_replay_ends import (  # noqa: F401 - `redis` is a fixture
    CONFORMANCE_SERVER,
    READ_TIMEOUT,
    redis,
    streamed_call,
)


def resume(url: str, headers: dict[str, str], event_id: str) -> httpx2.Response:
    timeout = httpx2.Timeout(30, read=READ_TIMEOUT)
    with httpx2.stream("GET", url, headers={**headers, "last-event-id": event_id}, timeout=timeout) as response:
        response.read()
        return response


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_resuming_from_an_event_not_held_is_refused_with_400(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config: dict[str, Any] = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        # Two events a session: of a call's five, the last log and the answer stay.
        "sessions": {"store": store, "max_events_per_session": 2},
    }
    if store == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis").url, "timeout": 1.0}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        level = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug"}}
        assert httpx2.post(gateway.url, json=level, headers=headers, timeout=30).status_code == 200
        events = streamed_call(gateway.url, headers, 7)
        assert len(events) == 5 and events[0][1] is None and events[-1][1]["id"] == 7
        priming_id, last_log_id = events[0][0], events[-2][0]
        assert priming_id is not None and last_log_id is not None

        for gone in (priming_id, "0123456789abcdef.deadbeef-1", "forged"):
            refused = resume(gateway.url, headers, gone)
            assert refused.status_code == 400, (gone, refused.status_code, refused.text)
            error = refused.json()["error"]
            assert "names no event held for this session" in error["message"]
            assert "result is lost" in error["message"]

        # Still held: the replay sends the answer and ends, as before.
        kept = resume(gateway.url, headers, last_log_id)
        assert kept.status_code == 200
        replayed = [message for _, message in sse_messages(iter(kept.text.splitlines())) if message is not None]
        assert replayed == [events[-1][1]]
