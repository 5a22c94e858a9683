"""Review R1's smaller items, each over a real gateway process and real SDK clients.

- `resources/updated` reaches a client only for the URIs it subscribed to (MCP), whatever its backend announces.
- A large answer to a 2025-11-25 POST is encoded off the event loop, and arrives whole.
- The saved catalogue (`catalogue.json`) is encoded a piece at a time, returning to Python between pieces (one
  `json.dumps` over 50,000 tools held the GIL, and so the event loop, for half a second), in the same JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage

from tests.support import Gateway, running_gateway, write_config
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.listing import LISTING_FILE, Listing, save_listing

# resources/subscribe is what a 2025-11-25 client uses, though deprecated for 2026-07-28 ones.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

BACKEND = Path(__file__).parent / "r1_backend29.py"
# After a client's own updates arrived, how long the others it must not get would have had to follow them.
SETTLE = 0.5


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {"backends": [{"name": "r1", "command": sys.executable, "args": [str(BACKEND)]}]}
    directory = tmp_path_factory.mktemp("r1-items")
    with running_gateway(write_config(directory, config), "--log-level", "debug") as running:
        yield running


class Updates:
    """The `resources/updated` URIs one client hears, and an event once it has heard `expected` of them."""

    def __init__(self, expected: int) -> None:
        self.uris: list[str] = []
        self.expected = expected
        self.heard = anyio.Event()

    async def on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.uris.append(str(message.params.uri))
            if len(self.uris) >= self.expected:
                self.heard.set()


def test_resource_updates_reach_only_the_clients_subscribed_to_that_uri(gateway: Gateway) -> None:
    """The backend announces every URI it serves to each client's session; each client hears only its own:
    `file:///a` twice (once spelled `file:///%61`, delivered in the form subscribed), `file:///b` once."""
    first, second = Updates(expected=2), Updates(expected=1)

    async def subscribe_and_broadcast(client: Any, uri: str, updates: Updates) -> None:
        await client.subscribe_resource(uri)
        result = await client.call_tool("r1_broadcast", {})
        assert not result.is_error
        with anyio.fail_after(30):
            await updates.heard.wait()

    async def main() -> None:
        async with (
            Client(gateway.url, mode="legacy", message_handler=first.on_message) as a,
            Client(gateway.url, mode="legacy", message_handler=second.on_message) as b,
        ):
            await subscribe_and_broadcast(a, "file:///a", first)
            await subscribe_and_broadcast(b, "file:///b", second)
            await anyio.sleep(SETTLE)

    anyio.run(main)
    assert first.uris == ["file:///a", "file:///a"]
    assert second.uris == ["file:///b"]


OFF_LOOP = "encoded off the event loop"


def test_a_large_json_answer_arrives_whole_and_is_encoded_off_the_loop(gateway: Gateway) -> None:
    """Past `LARGE_ANSWER` bytes (server/lazy_stream.py) a plain-JSON answer takes the worker-thread path (its
    debug line says so); a small one the SDK's own. Both arrive intact."""
    large = 1024 * 1024  # well past the bound

    async def texts() -> tuple[str, str]:
        async with Client(gateway.url, mode="legacy") as client:
            small = await client.call_tool("r1_big", {"n": 10})
            assert OFF_LOOP not in gateway.output()  # the small one went the SDK's way
            big = await client.call_tool("r1_big", {"n": large})
            return _text(small), _text(big)

    small, big = anyio.run(texts)
    assert small == "x" * 10
    assert big == "x" * large
    assert gateway.output().count(OFF_LOOP) == 1


def _text(result: types.CallToolResult) -> str:
    assert not result.is_error
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def _records(count: int) -> list[ToolRecord]:
    schema = {"type": "object", "properties": {"x": {"type": "string", "description": "café ✓"}}}
    return [
        ToolRecord(f"b_t{i}", "b", f"tool {i} — does thing {i % 7}", schema, original_name=f"t{i}")
        for i in range(count)
    ]


def test_the_catalogue_is_saved_a_piece_at_a_time_as_the_same_json(tmp_path: Path) -> None:
    """While the catalogue is encoded, the encoder returns to Python (where a waiting thread may take the GIL)
    at least once per tool; the file is what `json.dumps` wrote, and no temporary file is left."""
    listing = Listing(_records(500), tools_list_tokens=1234, model="m", config_key="k")
    returns = 0

    def count_encoder_frames(frame: Any, event: str, arg: Any) -> None:
        nonlocal returns
        if event == "call" and frame.f_code.co_filename == json.encoder.__file__:
            returns += 1

    threading.setprofile(None)
    sys.setprofile(count_encoder_frames)
    try:
        save_listing(tmp_path, listing)
    finally:
        sys.setprofile(None)

    assert returns >= 500
    text = (tmp_path / LISTING_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    assert [tool["name"] for tool in data["tools"]] == [f"b_t{i}" for i in range(500)]
    assert "café ✓" in text
    assert sorted(path.name for path in tmp_path.iterdir()) == [LISTING_FILE]


def test_a_gateway_saves_its_catalogue_in_the_same_json(tmp_path: Path) -> None:
    """Through a running gateway: `catalogue.json` as one `json.dumps` writes it, non-ASCII as UTF-8."""
    index_dir = tmp_path / "index"
    config = {
        "backends": [{"name": "r1", "command": sys.executable, "args": [str(BACKEND)]}],
        "optimizer": {"enabled": True, "index_dir": str(index_dir)},
    }
    saved = index_dir / LISTING_FILE
    with running_gateway(write_config(tmp_path, config)):
        deadline = time.monotonic() + 60
        while not saved.exists():
            assert time.monotonic() < deadline, f"{saved} never written"
            time.sleep(0.05)
    text = saved.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    assert {tool["name"] for tool in data["tools"]} == {"r1_broadcast", "r1_big", "r1_note"}
    assert "café ✓" in text
