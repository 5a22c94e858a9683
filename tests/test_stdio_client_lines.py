"""What a stdio client writes that the gateway must not simply take: a line longer than `server.max_body_bytes`
(the HTTP body cap) is dropped as it is read and answered under its id, and the lines after it are served. A real
`vmcp serve --stdio` process, a real stdio backend, the client's lines by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import demo_backend, write_config

CAP = 20_000


def served(tmp_path: Path, lines: list[bytes], start: bytes = b"") -> list[dict[str, Any]]:
    """The gateway's answers to `lines` (the stream opening with `start`), written at once and stdin closed, as
    `cat requests | vmcp` does."""
    config = write_config(tmp_path, {"backends": [demo_backend("demo")], "server": {"max_body_bytes": CAP}})
    client = {"name": "test", "version": "1"}
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
    opening = [
        {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": params},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    lines = [json.dumps(message).encode() + b"\n" for message in opening] + lines
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
        input=start + b"".join(lines),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def echo(request_id: str | int, message: str) -> bytes:
    params = {"name": "demo_slow_echo", "arguments": {"message": message, "seconds": 0}}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode() + b"\n"


def test_a_line_over_the_cap_is_answered_under_its_id_and_the_next_lines_are_served(tmp_path: Path) -> None:
    answers = served(
        tmp_path,
        [
            echo("big-1", "x" * (CAP * 10)),
            echo(2, "small"),
            b'{"jsonrpc": "2.0", "method": "x", "params": {"id": 9, "pad": "' + b"y" * CAP * 3 + b'"}}\n',
            b'{"jsonrpc":"2.0","id":3,"method":"ping"}\n',
        ],
    )
    by_id = {answer.get("id"): answer for answer in answers if "id" in answer}
    big = by_id["big-1"]["error"]
    assert big["code"] == -32600 and "server.max_body_bytes" in big["message"]
    assert big["data"] == {"limit": "server.max_body_bytes", "max_bytes": CAP}
    assert by_id[2]["result"]["content"][0]["text"] == "small"
    assert by_id[3]["result"] == {}
    # An `"id"` inside the params of a long line is not taken for the request's: that one is answered under null.
    assert 9 not in by_id and by_id[None]["error"]["data"]["max_bytes"] == CAP


def test_a_byte_order_mark_at_the_start_of_the_stream_is_read_past(tmp_path: Path) -> None:
    """A client (or a file piped in) that writes UTF-8 with a byte-order mark: its first line, usually
    `initialize`, was -32700 Parse error."""
    answers = served(tmp_path, [b'{"jsonrpc":"2.0","id":3,"method":"ping"}\n'], start=b"\xef\xbb\xbf")
    by_id = {answer.get("id"): answer for answer in answers if "id" in answer}
    assert "result" in by_id["init"], answers
    assert by_id[3]["result"] == {}
