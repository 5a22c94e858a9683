"""What a client, a full disk or a stalled audit reader can make the gateway's telemetry cost, over real
processes: a real gateway, the demo backend, the SDK client or plain HTTP, and a real OTLP/HTTP receiver.

- Redacting a client's large argument for the audit log must take time linear in it: `re` holds the GIL, so a
  backtracking pattern stopped every session of the gateway for as long as it ran.
- A full disk loses events (counted exactly) and the file keeps whole lines; the gateway still stops cleanly.
- `when_full: block` with a writer that no longer writes waits once, then drops: each wait holds the event loop.
- A client's request id is cut in the span, as in the audit log.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    demo_backend,
    free_port,
    raw_session,
    running_gateway,
    stop_process,
    wait_http,
    write_config,
)
from tests.test_telemetry_export import attributes, otlp_receiver, spans_of

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
SERVER = 2  # opentelemetry.proto's SPAN_KIND_SERVER
F_SETPIPE_SZ = 1031  # Linux: a pipe's capacity, here its minimum (a page) so a few audit lines fill it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def metric(base: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", httpx2.get(f"{base}/metrics", timeout=30).text, re.M)
    return float(found.group(1)) if found else 0.0


def poll(check: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


async def test_a_large_argument_is_redacted_for_the_audit_log_without_stopping_the_gateway(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "include_data": True}},
    }
    audit = tmp_path / "audit.log"
    # Each took the old patterns about a minute (quadratic: 35 s at 150 kB); linear, a few milliseconds.
    tokens = "eyJ" * 70_000
    members = '{"' + "pass" * 50_000 + "}"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJl"
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(streamable_http_client(gateway.url)) as client:
            with anyio.fail_after(30):
                echoed = await client.call_tool("notes_slow_echo", {"message": tokens + members, "seconds": 0})
                assert not echoed.is_error
                # The same session is answered at once after: the writer thread is not holding the GIL.
                saved = await client.call_tool("notes_save_note", {"title": "t", "text": f"Authorization: {jwt}"})
                assert not saved.is_error
        poll(lambda: audit.exists() and audit.read_text().count('"mcp_tool_call"') >= 2, "both calls audited")
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["target"]["name"] for e in events if e["type"] == "mcp_tool_call"] == [
        "notes_slow_echo",
        "notes_save_note",
    ]
    assert jwt not in audit.read_text() and events[-1]["data"]["request"]["text"] == "Authorization: [REDACTED]"


def test_a_full_disk_loses_counted_events_and_the_gateway_still_stops_cleanly(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"audit": {"enabled": True, "output": "/dev/full"}, "metrics": {"enabled": True}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        session = raw_session(gateway.url)
        for n in range(3):
            listed = {"jsonrpc": "2.0", "id": n + 2, "method": "tools/list"}
            assert httpx2.post(gateway.url, json=listed, headers=session, timeout=30).status_code == 200
        # initialize and three lists, none of them in the file: all counted lost, none counted written
        poll(lambda: metric(gateway.base, "vmcp_audit_write_failures_total") >= 4, "write failures counted")
        assert metric(gateway.base, "vmcp_audit_events_written_total") == 0
        stop_process(gateway.proc)
        output = gateway.output()
    assert gateway.proc.returncode == 0, output
    assert "No space left on device" in output and "Traceback" not in output, output


# Run in a process of its own under RLIMIT_FSIZE: the kernel then takes a write only up to the limit and fails
# the rest (EFBIG), as a disk that fills midway does.
PARTIAL_WRITES = """
import json, resource, signal, sys, time
from vmcp_opt.auth import Caller, Identification
from vmcp_opt.config import AuditConfig
from vmcp_opt.routing.operations import Operation
from vmcp_opt.telemetry.audit import AuditLog

path = sys.argv[1]
caller = Caller("session:x", Identification.SESSION, "2025-11-25")
log = AuditLog(AuditConfig(enabled=True, output=path, flush_interval=0), "/")
ops = [Operation("tools/call", caller, target=name) for name in ("first", "lost" * 40, "lost" * 40, "after")]
sizes = [len(log.line("mcp_tool_call", 0.0, op)) for op in ops]
# Room for the first and the last line, and for half of the second: it is written in part, then refused.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (sizes[0] + max(sizes[1] // 2, sizes[3] + 1), resource.RLIM_INFINITY))
for n, op in enumerate(ops, 1):
    log.operation_finished(op)
    while log.written + log.write_failures < n:
        time.sleep(0.01)
log.close()
print(json.dumps({"written": log.written, "failures": log.write_failures}))
"""


def test_a_disk_that_fills_midway_leaves_whole_lines_and_counts_exactly_what_is_missing(tmp_path: Path) -> None:
    """The part of a line the file took is cut off: not left to run into the next line, nor buffered to be
    written later after its event was counted lost."""
    path = tmp_path / "audit.log"
    script = tmp_path / "partial.py"
    script.write_text(PARTIAL_WRITES)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    names = [json.loads(line)["target"]["name"] for line in path.read_text().splitlines()]
    assert names == ["first", "after"], path.read_text()
    assert counts == {"written": 2, "failures": 2}, counts
    assert "File too large" in done.stderr  # reported


def test_block_mode_with_a_stalled_writer_waits_once_then_drops(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {
            "audit": {"enabled": True, "output": "stdout", "when_full": "block", "block_timeout": 1, "queue_size": 1},
            "metrics": {"enabled": True},
        },
    }
    path = write_config(tmp_path, config)
    command = [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(path), "--port", str(port)]
    log = (tmp_path / "gateway.log").open("wb")
    # stdout is a pipe this test never reads: once its page is full the audit writer blocks for good.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stdout is not None
    fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 4096)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=60, proc=proc)
        session = raw_session(f"{base}/mcp")
        drops = 0.0
        for n in range(200):
            listed = {"jsonrpc": "2.0", "id": n + 2, "method": "tools/list"}
            assert httpx2.post(f"{base}/mcp", json=listed, headers=session, timeout=60).status_code == 200
            drops = metric(base, "vmcp_audit_events_dropped_total")  # the scrape is not audited
            if drops >= 20:
                break
        assert drops >= 20
        # One wait of block_timeout, then drops at once while the writer stays stuck: before, one wait per event.
        assert metric(base, "vmcp_audit_block_waits_run_out_total") == 1
    finally:
        proc.kill()  # SIGTERM would wait for the stuck writer (bounded, seconds): not what this test is about
        proc.wait()
        proc.stdout.close()
        log.close()


def served(span: Any) -> bool:
    return bool(span.name == "tools/call notes_whoami" and span.kind == SERVER)


async def test_a_clients_huge_request_id_is_cut_in_its_span(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "telemetry": {"tracing": {"enabled": True}}}
    request_id = "r" * 300_000
    with otlp_receiver() as (endpoint, received, raw):
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with running_gateway(write_config(tmp_path, config), env=env) as gateway:
            session = raw_session(gateway.url)
            call = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "notes_whoami"}}
            answer = httpx2.post(gateway.url, json=call, headers=session, timeout=30)
            assert answer.status_code == 200 and request_id in answer.text  # the client gets its id back whole
            poll(lambda: any(served(s) for s in spans_of(received)), "the call's SERVER span exported")
    span = next(s for s in spans_of(received) if served(s))
    assert attributes(span)["jsonrpc.request.id"] == "r" * 200
    assert max(len(body) for body in raw) < 20_000
