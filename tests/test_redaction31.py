"""Redaction and log-volume gaps (session 31), through real gateway processes and what they write:

- a secret written as a two-item list (`["password", "…"]`, `["Authorization", "…"]`) or after an argv flag
  (`["--token", "…"]`, `--password …`) reached the audit log, where `{"password": "…"}` did not; ordinary two-item
  lists (`["x", "y"]`, coordinates) stay as they were;
- `PWD` (the working directory) was masked in the logs as a password, while a backend's `--token` arg was not;
- the SDK's warning per malformed notification was throttled over HTTP only: a stdio client flooding it wrote a
  line each to the gateway's stderr.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx2

from tests.support import DEMO_SERVER, demo_backend, raw_session, running_gateway, stdio_gateway, write_config
from vmcp_opt.telemetry.redact import REDACTED

WAIT = 30.0  # seconds a poll may wait for what the gateway writes in the background (a bound, not a measure)


def until(check: Callable[[], Any], what: str) -> Any:
    """`check()` once it is truthy; fails naming `what` after `WAIT` seconds."""
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        assert time.monotonic() < deadline, f"never came: {what}"
        time.sleep(0.05)
    return found


def audit_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# Each note's text as sent, and as the audit log must show it.
NOTES = {
    json.dumps(["password", "PAIRSECRET1"]): json.dumps(["password", REDACTED]),
    json.dumps(["Authorization", "Token PAIRSECRET2"]): json.dumps(["Authorization", REDACTED]),
    json.dumps(["run", "--token", "ARGVSECRET3", "--port", "8080"]): json.dumps(
        ["run", "--token", REDACTED, "--port", "8080"]
    ),
    json.dumps(["--password ARGVSECRET4", "--api-key=ARGVSECRET5"]): json.dumps(
        [f"--password {REDACTED}", f"--api-key={REDACTED}"]
    ),
    'env ["api_key", "TEXTSECRET6"] then mysql --password TEXTSECRET7 -h db': (
        f'env ["api_key", "{REDACTED}"] then mysql --password {REDACTED} -h db'
    ),
    # Not secrets: an ordinary pair, coordinates, the working directory.
    json.dumps(["x", "y"]): json.dumps(["x", "y"]),
    json.dumps([51.5072, -0.1276]): json.dumps([51.5072, -0.1276]),
    json.dumps({"PWD": "/srv/app", "PASSWD": "ENVSECRET8"}): json.dumps({"PWD": "/srv/app", "PASSWD": REDACTED}),
}


def test_two_item_lists_and_argv_flags_holding_secrets_are_redacted_in_the_audit_log(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    config = {
        "backends": [demo_backend("demo")],
        "telemetry": {"audit": {"enabled": True, "output": str(audit), "include_data": True, "flush_interval": 0}},
        "health": {"interval": 600},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        with httpx2.Client(timeout=60) as http:
            for n, text in enumerate(NOTES):
                params = {"name": "demo_save_note", "arguments": {"title": f"t{n}", "text": text}}
                body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}
                answer = http.post(gateway.url, json=body, headers=headers)
                assert answer.status_code == 200 and '"isError":true' not in answer.text, answer.text

        def calls() -> list[dict[str, Any]]:
            found = [e for e in audit_events(audit) if e["target"].get("name") == "demo_save_note"]
            return found if len(found) == len(NOTES) else []

        events = until(calls, f"{len(NOTES)} tool calls in the audit log")
    shown = {e["data"]["request"]["title"]: e["data"]["request"]["text"] for e in events}
    assert [shown[f"t{n}"] for n in range(len(NOTES))] == list(NOTES.values())
    assert re.findall(r"[A-Z]+SECRET\d", audit.read_text()) == []


# A backend that writes its command line and working directory to stderr (the gateway logs its stderr, masked).
ARGV_PRINTER = f"""
import os, runpy, sys
print("argv:", " ".join(sys.argv[1:]), "cwd:", os.environ["PWD"], file=sys.stderr, flush=True)
sys.argv = [sys.argv[0]]
runpy.run_path({str(DEMO_SERVER)!r}, run_name="__main__")
"""


def test_backend_argv_secrets_are_masked_in_the_log_and_pwd_is_not(tmp_path: Path) -> None:
    script = tmp_path / "argv_printer.py"
    script.write_text(ARGV_PRINTER)
    workdir = str(tmp_path / "work-directory")
    args = [str(script), "--token", "ARGVSECRET9", "--db-password=ARGVSECRET10", "--port", "8080"]
    backend = {"name": "printer", "command": sys.executable, "args": args, "env": {"PWD": workdir}}
    with running_gateway(write_config(tmp_path, {"backends": [backend]})) as gateway:
        line = until(lambda: [x for x in gateway.output().splitlines() if "argv:" in x], "the backend's argv line")
    assert "ARGVSECRET" not in gateway.output()
    assert f"cwd: {workdir}" in line[0], line[0]  # a path, shown: it was masked as if PWD were a password
    assert "--token *** --db-password=*** --port 8080" in line[0], line[0]


MALFORMED = [
    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"not": "an id"}}},
    {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": "not a number"}},
]
FLOOD = 200  # of each kind


def send_line(pipe: IO[bytes], message: dict[str, Any]) -> None:
    pipe.write(json.dumps(message).encode() + b"\n")
    pipe.flush()


def answer_to(pipe: IO[bytes], request_id: int) -> dict[str, Any]:
    """The gateway's answer to `request_id`, past the messages before it."""
    while True:
        line = pipe.readline()
        assert line, f"stdout ended before the answer to {request_id}"
        if (message := json.loads(line)).get("id") == request_id:
            return dict(message)


def test_a_stdio_client_flooding_malformed_notifications_gets_one_warning_and_a_count(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with stdio_gateway(write_config(tmp_path, {"backends": [demo_backend("demo")]}), log) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "flood", "version": "1"}}
        send_line(proc.stdin, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        assert "result" in answer_to(proc.stdout, 0)
        send_line(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        for _ in range(FLOOD):
            for notification in MALFORMED:
                send_line(proc.stdin, notification)
        send_line(proc.stdin, {"jsonrpc": "2.0", "id": 1, "method": "ping"})  # read after them all
        assert answer_to(proc.stdout, 1)["result"] == {}
        proc.stdin.close()  # the client is done: the gateway stops, and says what it held back
        assert proc.wait(timeout=WAIT) == 0
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    warned = [line for line in lines if re.search(r"dropped '[^']+': malformed params", line)]
    assert len(warned) == 1, warned[:3]
    counted = [line for line in lines if "more like 'dropped %r: malformed params' were not logged" in line]
    assert len(counted) == 1 and f": {2 * FLOOD - 1} more like" in counted[0], counted


# A raw backend whose one tool sends `count` malformed log notifications (a level no client knows) before its answer.
GARBLING_BACKEND = """
import json, sys

def send(message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()

for line in sys.stdin:
    request = json.loads(line)
    method, params = request.get("method"), request.get("params") or {}
    if "id" not in request:
        continue
    if method == "initialize":
        result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "garbling", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "garble", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        for _ in range(params["arguments"]["count"]):
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "loud", "data": "x"}})
        result = {"content": [{"type": "text", "text": "garbled"}]}
    else:
        result = {}
    send({"jsonrpc": "2.0", "id": request["id"], "result": result})
"""


def test_a_backend_sending_malformed_notifications_gets_one_warning_over_stdio(tmp_path: Path) -> None:
    script = tmp_path / "garbling.py"
    script.write_text(GARBLING_BACKEND)
    backend = {"name": "garbling", "command": sys.executable, "args": [str(script)]}
    log = tmp_path / "stderr.log"
    with stdio_gateway(write_config(tmp_path, {"backends": [backend]}), log) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}
        send_line(proc.stdin, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        assert "result" in answer_to(proc.stdout, 0)
        send_line(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "garbling_garble", "arguments": {"count": FLOOD}}
        send_line(proc.stdin, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        assert answer_to(proc.stdout, 1)["result"]["content"][0]["text"] == "garbled"
        proc.stdin.close()
        assert proc.wait(timeout=WAIT) == 0
    output = log.read_text(encoding="utf-8", errors="replace")
    assert output.count("Failed to validate notification: notifications/message") == 1, output[-3000:]
    assert "Traceback" not in output  # one line, its error's text folded in
    assert f"client: {FLOOD - 1} more like 'Failed to validate notification: %s' were not logged" in output
