"""First-hour snags (thirtieth session), on real `vmcp serve` processes and the SDK client.

- A UTF-8 byte-order mark (Notepad, PowerShell 5's `Out-File -Encoding utf8`) was accepted in a YAML config but
  refused in a JSON config ("Unexpected UTF-8 BOM"), in a JSON API-keys file (every key refused, even when an
  editor added the mark while the gateway ran) and in a Cedar policy ("policy.cedar:1: invalid token").
- On SIGTERM a lone gateway logged "no new connections" though it keeps its port while it drains; the line now
  says what is refused, and "port closed" only for a replica (`sessions.store: redis`), whose port does close.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.redis_server import running_redis
from tests.support import DEMO_SERVER, Gateway, bearer_client, running_gateway, write_config
from vmcp_opt.auth.api_keys import new_key

pytestmark = [pytest.mark.slow]

BOM = "\ufeff"
# Everything allowed but one tool to alice: her listing shows whether the policy file was the one applied.
POLICY = """\
permit(principal, action, resource);
forbid(principal == User::"alice", action in [Action::"list_tools", Action::"call_tool"],
       resource == Tool::"notes_save_note");
"""
EXIT_DEADLINE = 60.0  # a guard against hanging, not a measure: nothing is in flight, so the drain ends at once


def _with_bom(path: Path, text: str) -> None:
    path.write_text(BOM + text, encoding="utf-8")


def _keys(path: Path, subjects: list[str]) -> dict[str, str]:
    """A JSON keys file with a byte-order mark, a new key for each of `subjects`: the keys by subject."""
    keys, entries = {}, []
    for subject in subjects:
        keys[subject], digest = new_key()
        entries.append({"sha256": digest, "subject": subject})
    _with_bom(path, json.dumps(entries))
    return keys


async def _tools_after_a_call(url: str, key: str) -> set[str]:
    """The tools the caller bearing `key` is shown, after a call of one of them succeeded."""
    async with bearer_client(url, key) as client:
        result = await client.call_tool("notes_whoami", {})
        assert not result.is_error, result
        return {tool.name for tool in (await client.list_tools()).tools}


def _refused(gateway: Gateway, key: str) -> bool:
    """Whether the gateway answers a request bearing `key` with 401 (authentication runs before anything else)."""
    answer = httpx2.get(gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return answer.status_code == 401


def test_a_json_config_keys_file_and_cedar_policy_with_a_byte_order_mark_serve_authenticated_calls(
    tmp_path: Path,
) -> None:
    keys = _keys(tmp_path / "keys.json", ["alice"])
    _with_bom(tmp_path / "policy.cedar", POLICY)
    config = {
        "backends": [{"name": "notes", "command": sys.executable, "args": [str(DEMO_SERVER)]}],
        "optimizer": {"enabled": False},
        "server": {"startup_wait": 60},
        "auth": {
            "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
            "authorization": {"policies": "policy.cedar"},
        },
    }
    path = tmp_path / "vmcp.json"
    _with_bom(path, json.dumps(config))

    with running_gateway(path, "--log-level", "warning") as gateway:
        alice_sees = anyio.run(_tools_after_a_call, gateway.url, keys["alice"])
        assert "notes_whoami" in alice_sees and "notes_save_note" not in alice_sees, alice_sees

        # An editor rewrites the file while the gateway runs, the mark included: the new key is read at once.
        rotated = _keys(tmp_path / "keys.json", ["carol"])
        assert "notes_save_note" in anyio.run(_tools_after_a_call, gateway.url, rotated["carol"])
        assert _refused(gateway, keys["alice"]) and not _refused(gateway, rotated["carol"])
    assert "BOM" not in gateway.output() and "invalid token" not in gateway.output(), gateway.output()


def _drain_line(gateway: Gateway) -> str:
    """The gateway's "draining:" log line after a SIGTERM with nothing in flight (the process then exits 0)."""
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=EXIT_DEADLINE) == 0, gateway.output()
    [line] = [line for line in gateway.output().splitlines() if "draining: " in line]
    return line


def test_a_lone_gateway_draining_says_new_sessions_are_refused_and_its_port_stays_open(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [], "server": {"drain_timeout": EXIT_DEADLINE}})
    with running_gateway(config) as gateway:
        line = _drain_line(gateway)
    assert "new sessions refused, port kept open" in line and "port closed" not in line, line
    assert "no new connections" not in line, line


def test_a_replica_draining_says_new_sessions_are_refused_and_its_port_closed(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"backends": [], "server": {"drain_timeout": EXIT_DEADLINE}}
    with running_redis() as redis:
        config = write_config(tmp_path, {**settings, "sessions": {"store": "redis"}, "redis": {"url": redis.url}})
        with running_gateway(config) as gateway:
            line = _drain_line(gateway)
    assert "new sessions refused, port closed" in line and "port kept open" not in line, line
