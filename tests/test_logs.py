"""Log lines of a real `vmcp serve` whose stderr is a file: plain lines, or JSON objects, never wrapped, and
libraries' debug chatter left out even at debug level."""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import demo_backend, free_port, stop_process, wait_http, write_config
from vmcp_opt.logs import JsonFormatter, handler_for

pytestmark = pytest.mark.slow

PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
QUIET = ("bm25s", "httpx", "httpcore", "mcp", "sentence_transformers", "transformers", "faiss")


def gateway_log(tmp_path: Path, *args: str, until: str) -> str:
    """stderr of a gateway over the demo notes backend and a backend that cannot start, once `until` is logged."""
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes"), {"name": "missing", "command": str(tmp_path / "no-such-program")}],
            "optimizer": {"enabled": True, "index_dir": str(tmp_path / "indexes")},
        },
    )
    log = tmp_path / "stderr.log"
    port = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(port), *args],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", expect=(200, 503), proc=proc)
        deadline = time.monotonic() + 60
        while until not in log.read_text(encoding="utf-8") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_process(proc)
    return log.read_text(encoding="utf-8")


def test_plain_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    text = gateway_log(tmp_path, until="keyword index updated")
    lines = text.splitlines()
    assert any("backend missing failed" in line and str(tmp_path) in line for line in lines), text
    assert all(PLAIN_LINE.match(line) for line in lines), text  # one line per record: nothing wrapped


def test_json_lines_at_debug_level_leave_out_libraries_chatter(tmp_path: Path) -> None:
    text = gateway_log(tmp_path, "--log-format", "json", "--log-level", "debug", until="keyword index updated")
    records = [json.loads(line) for line in text.splitlines()]
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert any(record["message"].startswith("keyword index updated") for record in records), text
    assert any(record["level"] == "warning" and record["logger"].startswith("vmcp_opt") for record in records)
    chatter = [
        record for record in records if record["level"] in ("debug", "info") and record["logger"].split(".")[0] in QUIET
    ]
    assert chatter == []


def test_json_lines_carry_the_extra_fields_of_a_call() -> None:
    record = logging.LogRecord("vmcp_opt.routing", logging.INFO, __file__, 1, "called %s", ("notes_save",), None)
    record.__dict__.update({"tool": "notes_save", "duration_ms": 4.2})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "called notes_save"
    assert (entry["level"], entry["logger"], entry["tool"], entry["duration_ms"]) == (
        "info",
        "vmcp_opt.routing",
        "notes_save",
        4.2,
    )


def test_a_plain_line_break_in_logged_text_cannot_forge_a_record() -> None:
    forged = "2026-12-05T00:00:00.000 INFO vmcp_opt.auth: caller admin allowed"
    stream = io.StringIO()
    handler = handler_for("plain", stream)
    record = logging.LogRecord(
        "vmcp_opt.routing", logging.WARNING, __file__, 1, "tool %s refused", (f"x\n{forged}\r",), None
    )
    handler.emit(record)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and PLAIN_LINE.match(lines[0]), lines
    assert lines[0].endswith(f"tool x\\n{forged}\\r refused")


def test_an_exception_message_with_a_line_break_cannot_forge_a_record() -> None:
    forged = "2026-12-05T00:00:00.000 INFO vmcp_opt.auth: caller admin allowed"
    stream = io.StringIO()
    handler = handler_for("plain", stream)
    try:
        raise ValueError(f"bad name x\n{forged}")
    except ValueError:
        record = logging.LogRecord("vmcp_opt.routing", logging.ERROR, __file__, 1, "refused", None, sys.exc_info())
    handler.emit(record)
    lines = stream.getvalue().splitlines()
    assert PLAIN_LINE.match(lines[0]), lines
    assert all(line.startswith("  ") for line in lines[1:]), lines  # only a record's first line at the margin
    assert f"  {forged}" in lines


def test_terminal_lines_name_the_level_and_logger_once() -> None:
    leader, follower = os.openpty()
    with os.fdopen(follower, "w", encoding="utf-8") as terminal:
        handler = handler_for("auto", terminal)  # rich: the stream is a terminal
        logging.basicConfig(handlers=[handler], force=True)  # what `configure` does: it sets no formatter
        try:
            logging.getLogger("vmcp_opt.example").warning("backend ready")
            terminal.flush()
            shown = os.read(leader, 65536).decode(errors="replace")
        finally:
            logging.basicConfig(handlers=[logging.StreamHandler()], force=True)
    os.close(leader)
    assert "vmcp_opt.example: backend ready" in shown
    assert "WARNING:" not in shown and shown.count("WARNING") == 1


class _Garbage(http.server.BaseHTTPRequestHandler):
    """An 'MCP server' over HTTP whose every answer is a JSON response that does not parse."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{nope")

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


def test_a_library_traceback_is_one_line_below_debug(tmp_path: Path) -> None:
    """The SDK logs a traceback for each answer a backend garbles, at every reconnection: here one line, and
    the body it quotes (which may echo anything, a credential included) is nowhere in the log."""
    garbage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{garbage.server_address[1]}/mcp"
        config = write_config(
            tmp_path,
            {"backends": [demo_backend("notes"), {"name": "garbled", "transport": "streamable-http", "url": url}]},
        )
        log = tmp_path / "stderr.log"
        port = free_port()
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(port), "--no-optimizer"],
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", expect=(200, 503), proc=proc)
            deadline = time.monotonic() + 60
            while "not JSON-RPC" not in log.read_text(encoding="utf-8") and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop_process(proc)
    finally:
        garbage.shutdown()
    text = log.read_text(encoding="utf-8")
    assert "a backend answered with a body that is not JSON-RPC (not logged)" in text, text
    assert "Traceback" not in text and "{nope" not in text, text
    assert all(PLAIN_LINE.match(line) for line in text.splitlines()), text
