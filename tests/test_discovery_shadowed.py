"""A discovered server named as a backend of the gateway's own config is not served, and never silently: one
warning names the server, the client file and the backend that wins. A real client config file, a real
`vmcp serve` process and real stdio backends; the warning read from the gateway's own output."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from mcp import Client

from tests.support import DEMO_SERVER, demo_backend, running_gateway, write_config
from vmcp_opt.backends.discovery import read_client_config

DEMO = {"command": sys.executable, "args": [str(DEMO_SERVER)]}


def client_file(directory: Path) -> Path:
    path = directory / "claude_desktop_config.json"
    path.write_text(json.dumps({"mcpServers": {"notes": DEMO, "extra": DEMO}}), encoding="utf-8")
    return path


def test_a_server_named_as_a_served_backend_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = client_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.backends.discovery"):
        backends = read_client_config(path, served={"notes", "other"})
    assert [backend.name for backend in backends] == ["extra"]
    [warning] = [record.getMessage() for record in caplog.records if "not served" in record.getMessage()]
    assert warning == (
        f"discovery: server 'notes' in {path} is not served: the gateway's config has a backend named 'notes', "
        "which wins over a discovered server of the same name; rename one of them to serve both"
    )
    assert [backend.name for backend in read_client_config(path)] == ["notes", "extra"]  # nothing served: all read


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_gateway_says_which_of_two_same_named_backends_it_serves(tmp_path: Path) -> None:
    path = client_file(tmp_path)
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            # The config's own `notes` serves one tool, the discovered one would serve all: told apart.
            "aggregation": {"tools": {"notes": {"include": ["save_note"]}}},
            "discovery": {"mode": "discovered", "path": str(path)},
        },
    )
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
        output = gateway.output()
    assert {"notes_save_note", "extra_save_note", "extra_search_notes"} <= names, names
    assert "notes_search_notes" not in names  # the config's own `notes` won
    warnings = [line for line in output.splitlines() if "is not served" in line]
    assert len(warnings) == 1, output
    assert f"server 'notes' in {path} is not served: the gateway's config has a backend named 'notes'" in warnings[0]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
