"""The audit log end to end: a real gateway process, a real MCP client with an API key, a Cedar policy, a
backend call that fails; every event checked field by field, and no configured secret anywhere in it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import demo_backend, raw_session, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

POLICY = """\
permit(principal, action, resource);
@id("no-runtime-tools")
forbid(principal, action == Action::"call_tool", resource == Tool::"notes_add_tool");
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_events(path: Path, last: str) -> list[dict[str, Any]]:
    """The events once `last` (the session's last operation) is written by the audit thread."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = read_events(path) if path.exists() else []
        if any(e["type"] == last for e in events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"no {last} event in {path}")


def one(events: list[dict[str, Any]], kind: str, **target: str) -> dict[str, Any]:
    found = [e for e in events if e["type"] == kind and all(e["target"].get(k) == v for k, v in target.items())]
    assert len(found) == 1, (kind, target, [(e["type"], e["target"]) for e in events])
    return found[0]


async def test_a_real_session_is_audited_event_by_event_with_outcomes_and_no_secrets(tmp_path: Path) -> None:
    from vmcp_opt.auth.api_keys import new_key

    key, digest = new_key()
    (tmp_path / "keys.json").write_text(
        json.dumps({"keys": [{"sha256": digest, "subject": "alice", "groups": ["dev"]}]})
    )
    (tmp_path / "policy.cedar").write_text(POLICY)
    config = {
        "backends": [demo_backend("notes")],
        "auth": {
            "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
            "authorization": {"policies": "policy.cedar"},
        },
        "optimizer": {"enabled": True},
        "timeouts": {"call": 3},
        "telemetry": {
            "audit": {"enabled": True, "output": "audit/audit.log", "exclude": ["mcp_resources_list"]},
            "metrics": {"enabled": True},
        },
    }
    audit = tmp_path / "audit" / "audit.log"
    with running_gateway(write_config(tmp_path, config)) as gateway:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        handshake = Client(streamable_http_client(gateway.url, http_client=http), mode="legacy")  # type: ignore[arg-type]
        async with handshake:  # a 2025-11-25 session: initialize, then one request
            await handshake.list_prompts()
        refused = httpx2.post(gateway.url, json={}, headers={"Authorization": "Bearer vmcp_not-a-known-key-1234"})
        client = Client(streamable_http_client(gateway.url, http_client=http))  # type: ignore[arg-type]
        async with client:
            listed = await client.list_tools()
            found = await client.call_tool("find_tool", {"query": "save a note", "limit": 3})
            saved = await client.call_tool(
                "call_tool", {"tool_name": "notes_save_note", "arguments": {"title": "t", "text": "hello"}}
            )
            with pytest.raises(MCPError, match=r"^Unknown tool: 'notes_add_tool'$"):  # denied, told as unknown
                await client.call_tool("notes_add_tool", {"name": "x", "description": "y"})
            slow = await client.call_tool("notes_slow_echo", {"message": "m", "seconds": 30})
            await client.list_resources()
            read = await client.read_resource("notes://all")
            prompt = await client.get_prompt("notes_summarize_notes", {"style": "short"})
        await http.aclose()
        assert found.structured_content and not saved.is_error and slow.is_error and read.contents and prompt.messages
        events = wait_events(audit, "mcp_prompt_get")
        metrics = httpx2.get(f"{gateway.base}/metrics", timeout=30).text
        output = gateway.output()

    initialize = one(events, "mcp_initialize", method="initialize")
    assert initialize["outcome"] == "success" and initialize["target"] == {"method": "initialize", "type": "other"}
    assert initialize["source"] == {"type": "network", "value": "127.0.0.1"}
    who = initialize["subjects"]
    assert who["client_name"] == "mcp" and who["client_version"] and who["user_id"] == "alice"
    assert who["identified_by"] == "api_key" and who["caller_id"].startswith("session:")
    assert initialize["metadata"]["extra"]["protocol_version"] == "2025-11-25"
    assert one(events, "mcp_prompts_list")["subjects"]["caller_id"] == who["caller_id"]  # the same session

    assert refused.status_code == 401
    denied_auth = one(events, "vmcp_auth_denied")
    assert denied_auth["outcome"] == "denied" and denied_auth["metadata"]["extra"]["error_type"] == "invalid_token"
    assert denied_auth["source"] == {"type": "network", "value": "127.0.0.1"}
    assert denied_auth["subjects"]["identified_by"] == "anonymous" and "not-a-known-key" not in audit.read_text()

    types_seen = [e["type"] for e in events]
    assert "mcp_resources_list" not in types_seen  # excluded by type
    listed_event = one(events, "mcp_tools_list")
    assert listed_event["outcome"] == "success"
    assert listed_event["metadata"]["extra"]["response_size_bytes"] > 0 and len(listed.tools) == 2

    find = one(events, "vmcp_find_tool")
    assert find["outcome"] == "success" and find["target"] == {
        "method": "tools/call",
        "type": "tool",
        "name": "find_tool",
    }

    meta = one(events, "vmcp_call_tool")
    proxied = one(events, "mcp_tool_call", name="notes_save_note")
    assert meta["outcome"] == proxied["outcome"] == "success"
    assert proxied["target"] == {"method": "tools/call", "type": "tool", "name": "notes_save_note", "backend": "notes"}
    assert proxied["component"] == "vmcp-opt"
    assert proxied["subjects"]["user_id"] == "alice" and proxied["subjects"]["user"] == "alice"
    assert proxied["subjects"]["identified_by"] in {"api_key", "session"}
    assert proxied["subjects"]["client_name"] and proxied["subjects"]["caller_id"].startswith(
        ("session:", "credential:")
    )
    assert proxied["source"] == {"type": "network", "value": "127.0.0.1"}
    extra = proxied["metadata"]["extra"]
    assert extra["duration_ms"] >= 0 and extra["response_size_bytes"] > 0 and "error_type" not in extra
    assert len(proxied["metadata"]["auditId"]) == 36 and proxied["loggedAt"].endswith("Z")
    assert "data" not in proxied  # request and response data are off by default

    denied = one(events, "mcp_tool_call", name="notes_add_tool")
    assert denied["outcome"] == "denied" and denied["metadata"]["extra"]["error_type"] == "denied"
    assert denied["target"]["backend"] == "notes"

    failed = one(events, "mcp_tool_call", name="notes_slow_echo")
    assert failed["outcome"] == "failure" and failed["metadata"]["extra"]["error_type"]

    assert one(events, "mcp_resource_read", name="notes://all")["target"]["backend"] == "notes"
    assert one(events, "mcp_prompt_get", name="notes_summarize_notes")["outcome"] == "success"
    assert len({e["metadata"]["auditId"] for e in events}) == len(events)

    assert 'mcp_server_operation_duration_seconds_count{method="tools/call",outcome="denied"} 1.0' in metrics
    assert (
        'mcp_client_operation_duration_seconds_count{backend="notes",method="tools/call",outcome="success"}' in metrics
    )
    assert 'vmcp_meta_tool_duration_seconds_count{outcome="success",tool="find_tool"} 1.0' in metrics
    assert "notes_save_note" not in metrics  # no tool names as labels

    everything = audit.read_text() + output + metrics
    assert key not in everything and digest not in everything


def test_full_queue_drops_are_counted_and_data_is_redacted_and_capped(tmp_path: Path) -> None:
    from vmcp_opt.auth import Caller, Identification
    from vmcp_opt.config import AuditConfig
    from vmcp_opt.routing.operations import Operation
    from vmcp_opt.telemetry.audit import AuditLog

    log = AuditLog(AuditConfig(enabled=True, output=str(tmp_path / "a.log"), include_data=True, max_data_bytes=64))
    caller = Caller("session:x", Identification.SESSION, "2025-11-25")
    op = Operation("tools/call", caller, target="t", backend="b", arguments={"api_key": "s3cret", "q": "x" * 10})
    event = log.event("mcp_tool_call", 0.0, op)
    assert event["data"]["request"] == {"api_key": "[REDACTED]", "q": "x" * 10}
    big = Operation("tools/call", caller, arguments={"q": "y" * 500})
    assert log.event("mcp_tool_call", 0.0, big)["data"]["request"]["truncated"] is True
    log.close()

    full = AuditLog(AuditConfig(enabled=True, output=str(tmp_path / "b.log"), queue_size=1))
    release = threading.Event()
    failing = {"on": False}

    def stuck_write(text: str) -> None:
        release.wait(30)
        if failing["on"]:
            raise OSError("disk full")

    full._sink.write = stuck_write  # type: ignore[method-assign]
    for _ in range(3):  # the writer holds at most one, the queue one more: the third is dropped
        full._offer("mcp_tool_call", op, 0.0)
    assert full.dropped >= 1
    failing["on"] = True
    release.set()
    full.close()
    assert full.write_failures >= 1 and full.written == 0


def bounded_files(audit: Path, cap: int) -> bytes:
    """The audit file and its rotated copies, each checked to be 0600 and at most `cap` bytes."""
    files = sorted(audit.parent.glob(f"{audit.name}*"))
    for path in files:
        assert path.stat().st_size <= cap, (path, path.stat().st_size)
        assert path.stat().st_mode & 0o777 == 0o600  # it may hold personal data
    return b"".join(path.read_bytes() for path in files)


async def test_client_chosen_strings_are_bounded_and_the_file_never_passes_its_size(tmp_path: Path) -> None:
    """A huge clientInfo.name and unknown tool names cannot grow the audit log past `max_file_bytes`, nor rotate
    the earlier events away by the megabyte; strings are UTF-8 and JSON-string arguments are redacted."""
    import mcp_types as types

    cap = 8192
    config = {
        "backends": [demo_backend("notes")],
        "optimizer": {"enabled": True},
        "telemetry": {
            "audit": {"enabled": True, "output": "audit.log", "include_data": True, "max_file_bytes": cap, "backups": 2}
        },
    }
    audit = tmp_path / "audit.log"
    emoji_name = "😀" * 20_000
    with running_gateway(write_config(tmp_path, config)) as gateway:
        info = types.Implementation(name=emoji_name, version="v" * 5_000)
        async with Client(streamable_http_client(gateway.url), client_info=info) as client:
            secret = json.dumps({"title": "t", "text": "hello", "password": "wonderland"})
            await client.call_tool("call_tool", {"tool_name": "notes_save_note", "arguments": secret})
            for _ in range(3):
                with pytest.raises(MCPError):
                    await client.call_tool("é" * 5_000, {})
            await client.list_prompts()
        wait_events(audit, "mcp_prompts_list")
    raw = bounded_files(audit, cap)
    events = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert events and all(len(line) <= cap for line in raw.splitlines())
    assert b"\\u" not in raw and "😀".encode() in raw  # UTF-8, not six bytes of escape per character
    named = [e for e in events if "client_name" in e.get("subjects", {})]
    assert named and all(e["subjects"]["client_name"] == "😀" * 200 + "…(20,000 chars)" for e in named)
    assert all(e["subjects"]["client_version"] == "v" * 200 + "…(5,000 chars)" for e in named)
    unknown = [e for e in events if e["type"] == "mcp_tool_call" and e["target"]["name"].startswith("é")]
    assert unknown and all(e["target"]["name"] == "é" * 200 + "…(5,000 chars)" for e in unknown)
    assert "wonderland" not in raw.decode("utf-8")
    meta = [e for e in events if e["type"] == "vmcp_call_tool"]
    assert meta and "[REDACTED]" in meta[0]["data"]["request"]["arguments"]


def test_an_event_larger_than_the_file_limit_is_summarised_never_written_whole(tmp_path: Path) -> None:
    from vmcp_opt.auth import Caller, Identification
    from vmcp_opt.config import AuditConfig
    from vmcp_opt.routing.operations import Operation
    from vmcp_opt.telemetry.audit import AuditLog

    config = AuditConfig(enabled=True, output=str(tmp_path / "a.log"), include_data=True, max_file_bytes=1024)
    log = AuditLog(config.model_copy(update={"max_data_bytes": 100_000}))
    caller = Caller("session:x", Identification.SESSION, "2025-11-25")
    op = Operation("tools/call", caller, target="t", backend="b", arguments={"q": "x" * 50_000})
    line = log.line("mcp_tool_call", 0.0, op)
    log.close()
    event = json.loads(line)
    assert len(line) <= 1024 and "data" not in event
    assert event["metadata"]["extra"]["record_truncated"] > 50_000 and event["target"]["name"] == "t"


def test_every_event_type_the_gateway_writes_is_one_the_config_accepts() -> None:
    from vmcp_opt.config.telemetry import AUDIT_EVENT_TYPES
    from vmcp_opt.telemetry import names

    written = {*names._LIST_EVENTS.values(), *names.META_TOOLS.values(), "mcp_tool_call", "mcp_request"}
    workflows = {f"workflow_{end}" for end in ("started", "completed", "failed", "timed_out")}
    workflows |= {f"workflow_step_{end}" for end in ("started", "skipped", "completed", "failed")}
    assert written | workflows | {"vmcp_auth_denied", "vmcp_rate_limited", "vmcp_session_refused"} == AUDIT_EVENT_TYPES


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120)


def test_validate_refuses_audit_settings_that_cannot_work(tmp_path: Path) -> None:
    def validate(audit: dict[str, Any]) -> str:
        checked = vmcp("validate", "-c", str(write_config(tmp_path, {"telemetry": {"audit": audit}})))
        assert checked.returncode == 2, checked.stderr
        return checked.stderr

    typos = validate({"enabled": True, "include": ["mcp_tool_calls"], "exclude": ["everything"]})
    assert "unknown event type 'mcp_tool_calls', did you mean 'mcp_tool_call'?" in typos
    assert "unknown event type 'everything'" in typos
    (tmp_path / "adir").mkdir()
    directory = validate({"enabled": True, "output": "adir"})
    assert f"telemetry.audit.output: {tmp_path / 'adir'} is a directory" in directory
    (tmp_path / "afile").write_text("x")
    under_file = validate({"enabled": True, "output": "afile/audit.log"})
    assert f"{tmp_path / 'afile'} is a file, not a directory" in under_file


def test_audit_to_stdout_is_refused_under_stdio_where_stdout_is_the_mcp_stream(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "telemetry": {"audit": {"enabled": True}}})
    served = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 2 and served.stdout == ""
    assert "telemetry.audit.output: stdout is the MCP stream under --stdio" in served.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a directory nothing can be made in")
def test_an_audit_file_that_cannot_be_opened_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"audit": {"enabled": True, "output": "/proc/no/a.log"}},
    }
    served = vmcp("serve", "-c", str(write_config(tmp_path, config)), "--port", "0")
    assert served.returncode == 2, served.stderr
    assert "cannot start: telemetry.audit.output: cannot write /proc/no/a.log" in served.stderr
    assert "Traceback" not in served.stderr


def test_subscriptions_and_log_levels_are_audited_a_refused_one_too(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        requests = [
            ("logging/setLevel", {"level": "warning"}),
            ("resources/subscribe", {"uri": "nowhere://no-such-resource"}),  # no backend serves it: refused
        ]
        for n, (method, params) in enumerate(requests, start=2):
            message = {"jsonrpc": "2.0", "id": n, "method": method, "params": params}
            httpx2.post(gateway.url, json=message, headers=headers, timeout=30)
        events = wait_events(tmp_path / "audit.log", "mcp_request")
    assert one(events, "mcp_logging")["outcome"] == "success"
    subscribe = one(events, "mcp_request", method="resources/subscribe")
    assert subscribe["outcome"] != "success" and subscribe["target"]["name"] == "nowhere://no-such-resource"
