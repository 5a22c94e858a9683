"""Discovered mode over the client config files users really have: VS Code's JSONC (comments, trailing commas),
a byte-order mark, entries of the wrong shape, broken JSON; and `--log-format json` output that is JSON from
the first line (the banner included). Real `vmcp validate` / `vmcp serve` processes, real backends, a real
MCP client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.support import DEMO_SERVER, free_port, running_gateway, stop_process, write_config
from vmcp_opt.backends.discovery import read_client_config
from vmcp_opt.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# A value that looks like comments to a careless stripper: it must reach the backend unchanged.
TRICKY = 'http://example.org//path /* not a comment */ "quoted" // end'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def discovered(tmp_path: Path, client_file: Path, **extra: Any) -> Path:
    return write_config(tmp_path, {"discovery": {"mode": "discovered", "path": str(client_file)}, **extra})


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120, encoding="utf-8"
    )


def problem_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The `discovery.path: ...` lines of an invalid-configuration report."""
    return [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("discovery.path:")]


async def test_a_vs_code_jsonc_file_with_a_bom_serves_its_servers(tmp_path: Path) -> None:
    demo = json.dumps(str(DEMO_SERVER))
    python = json.dumps(sys.executable)
    jsonc = f"""// VS Code's mcp.json: comments and trailing commas, as VS Code itself accepts
{{
  "inputs": [],
  "servers": {{
    /* the notes server, with a value that only looks like comments */
    "notes": {{
      "type": "stdio",
      "command": {python},
      "args": [{demo},],  // a trailing comma in an array
      "env": {{"DEMO_NAME": {json.dumps(TRICKY)},}},
    }},
    "more notes": {{"command": {python}, "args": [{demo}]}},
  }},
}}
"""
    client_file = tmp_path / "mcp.json"
    client_file.write_bytes(b"\xef\xbb\xbf" + jsonc.replace("\n", "\r\n").encode())  # as Notepad saves it
    config = discovered(tmp_path, client_file)

    checked = vmcp("validate", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "valid: 2 backends (notes, more-notes)" in checked.stdout

    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            whoami = await client.call_tool("notes_whoami", {})
    assert {"notes_save_note", "more-notes_save_note"} <= names
    assert not whoami.is_error and whoami.structured_content is not None
    assert whoami.structured_content["name"] == TRICKY
    assert "Traceback" not in gateway.output()


def test_entries_of_the_wrong_shape_refuse_the_file_naming_each_server_and_field(tmp_path: Path) -> None:
    started = tmp_path / "good-server-started"
    servers = {
        "good": {"command": sys.executable, "args": ["-c", f"open({str(started)!r}, 'w')"]},
        "env list": {"command": "python", "env": ["A=1"]},
        "env number": {"command": "python", "env": {"PORT": 8080}},
        "args string": {"command": "python", "args": "-m server"},
        "args number": {"command": "python", "args": ["--port", 8080]},
        "no command": {"args": ["-m", "server"]},
        "command number": {"command": 3},
        "not an object": ["python", "-m", "server"],
        "bad url": {"url": "ftp://example.org/mcp"},
    }
    client_file = tmp_path / "claude_desktop_config.json"
    client_file.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    prefix = f"discovery.path: {client_file}: server"
    expected = [
        f"{prefix} 'env list': `env` must be an object of strings (NAME: value), got an array",
        f"{prefix} 'env number': `env.PORT` must be a string, got 8080 (a number)",
        f"{prefix} 'args string': `args` must be an array of strings, got '-m server' (a string)",
        f"{prefix} 'args number': `args[1]` must be a string, got 8080 (a number)",
        f"{prefix} 'no command': has neither `command` (a stdio server) nor `url` (an HTTP server)",
        f"{prefix} 'command number': `command` must be a non-empty string, got 3 (a number)",
        f"{prefix} 'not an object': must be an object, got an array",
        f"{prefix} 'bad url': url: must start with http:// or https://, got 'ftp://example.org/mcp'",
    ]
    config = discovered(tmp_path, client_file)

    checked = vmcp("validate", "-c", str(config))
    assert checked.returncode == 2
    assert problem_lines(checked) == expected, checked.stderr
    assert "Traceback" not in checked.stderr

    served = vmcp("serve", "-c", str(config), "--port", str(free_port()), "--log-format", "json")
    assert served.returncode == 2
    [record] = [json.loads(line) for line in served.stderr.splitlines() if line.strip()]  # JSON, as asked
    assert record["problems"] == expected, served.stderr
    assert "Traceback" not in served.stderr
    assert not started.exists()  # the whole file is refused: nothing starts half-configured


def test_vs_code_settings_json_lists_its_servers_under_mcp(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(
        '{\n  "editor.fontSize": 14, // the rest of the settings\n'
        '  "mcp": {"servers": {"docs": {"type": "http", "url": "http://127.0.0.1:9001/mcp",},},},\n}\n',
        encoding="utf-8",
    )
    [docs] = load_config(discovered(tmp_path, settings), discover=read_client_config).backends
    assert (docs.name, docs.transport, docs.url) == ("docs", "streamable-http", "http://127.0.0.1:9001/mcp")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{\n  "mcpServers": {\n    "a": {"command": "python"}\n    "b": {}\n  }\n}',
            "not valid JSON at line 4, column 5: Expecting ',' delimiter",
        ),
        (b'{"servers": {}} /* never closed\n', "not valid JSON at line 1, column 17: unterminated /* comment"),
        (
            b'{"servers": {"a": {"command": "py\xe9"}}}',
            "not UTF-8 text (byte 0xe9 at line 1, column 34); save it as UTF-8",
        ),
        (b"\xef\xbb\xbf  // only a comment\n", "the file is empty"),
        (b'{"servers": ["python"]}', "`servers` must be an object of servers by name, got an array"),
        (b'{"mcp": {"servers": 3}}', "`mcp.servers` must be an object of servers by name, got 3 (a number)"),
        (b'["python"]', "the top level must be an object, got an array"),
    ],
    ids=["missing comma", "open comment", "not utf-8", "empty", "servers array", "settings.json", "top array"],
)
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path, content: bytes, expected: str) -> None:
    client_file = tmp_path / "mcp.json"
    client_file.write_bytes(content)
    result = vmcp("validate", "-c", str(discovered(tmp_path, client_file)))
    assert result.returncode == 2
    assert problem_lines(result) == [f"discovery.path: {client_file}: {expected}"], result.stderr
    assert "Traceback" not in result.stderr


async def test_under_json_log_format_every_line_is_json_the_banner_too(tmp_path: Path) -> None:
    client_file = tmp_path / "claude_desktop_config.json"
    servers = {
        "notes": {"command": sys.executable, "args": [str(DEMO_SERVER)]},
        # The banner's own snippet: skipped with a warning, logged before logging was configured.
        "vmcp": {"command": str(Path(sys.executable).parent / "vmcp"), "args": ["serve", "--stdio"]},
    }
    client_file.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    config = discovered(tmp_path, client_file)
    with running_gateway(config, "--log-format", "json") as gateway:  # its stdout and stderr, in one file
        async with Client(gateway.url) as client:
            assert "notes_save_note" in {tool.name for tool in (await client.list_tools()).tools}
    records = [json.loads(line) for line in gateway.output().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    [banner] = [record for record in records if "serving MCP at" in record["message"]]
    assert banner["url"] == gateway.url and banner["level"] == "info"
    assert banner["health_url"] == f"{gateway.base}/healthz"
    # The snippet starts the gateway as this one was started: its log format carried (cli_serve.py `carried_flags`).
    snippet_args = banner["claude_desktop_config"]["mcpServers"]["vmcp"]["args"]
    assert snippet_args == ["serve", "--stdio", "-c", str(config), "--log-format", "json"]
    [skipped] = [record for record in records if "skipping 'vmcp'" in record["message"]]
    assert skipped["level"] == "warning" and skipped["logger"] == "vmcp_opt.backends.discovery"


def test_stdio_under_json_log_format_keeps_stdout_for_the_protocol(tmp_path: Path) -> None:
    client_file = tmp_path / "claude_desktop_config.json"
    servers = {"notes": {"command": sys.executable, "args": [str(DEMO_SERVER)]}, "vmcp": {"command": "vmcp"}}
    client_file.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    config = discovered(tmp_path, client_file)
    stderr = tmp_path / "stderr.log"
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    with stderr.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config), "--log-format", "json"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"".join(json.dumps(request).encode() + b"\n" for request in requests))
        proc.stdin.flush()
        answers = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.stdin.close()  # as a desktop client does: the gateway stops
        rest = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        stop_process(proc)
    assert [answer["id"] for answer in answers] == [1, 2]
    assert "notes_save_note" in {tool["name"] for tool in answers[1]["result"]["tools"]}
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in rest.splitlines() if line.strip())
    records = [json.loads(line) for line in stderr.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert any("skipping 'vmcp'" in record["message"] for record in records)
    assert not any("serving MCP at" in record["message"] for record in records)
