"""What a backend learns of a client's capabilities through the gateway, with real backends and the SDK client.

Roots: a client's roots name folders on the client's machine. A stdio backend runs on the gateway's host, where
server-filesystem took a client's roots as the folders it may read instead of the operator's `args`: any client
could read anywhere the gateway can. So a backend's `roots` setting decides, and by default only a remote
(streamable HTTP or SSE) backend is told of roots and asked for them.

Sampling: server-everything lists `trigger-sampling-request` only to a client that declares sampling, and the
catalogue is the backend's shared session's listing: the shared session declares sampling and elicitation (never
roots), so a client with sampling sees the tool and gets the question on its own session, one without gets an error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, NODE_BIN, Gateway, running_gateway, write_config
from tests.test_conformance import http_conformance_backend

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
FILESYSTEM = NODE_BIN / "mcp-server-filesystem"
EVERYTHING = NODE_BIN / "mcp-server-everything"
SAMPLING_TOOL = "everything_trigger-sampling-request"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The folder the operator lets the filesystem backend read, and one beside it holding a secret."""
    base = tmp_path_factory.mktemp("caps30-folders")
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "notes.txt").write_text("allowed", encoding="utf-8")
    (outside / "secret.txt").write_text("the gateway host's secret", encoding="utf-8")
    return allowed.resolve(), outside.resolve()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, folders: tuple[Path, Path]) -> Iterator[Gateway]:
    for program in (FILESYSTEM, EVERYTHING):
        if not program.exists():
            pytest.skip(f"{program.name} is not installed (npm ci)")
    conformance = {"command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}
    with http_conformance_backend() as remote_url:
        config = {
            "backends": [
                {"name": "files", "command": str(FILESYSTEM), "args": [str(folders[0])]},
                {"name": "local", **conformance},
                {"name": "relayed", **conformance, "roots": "relay"},
                {"name": "remote", "transport": "streamable-http", "url": remote_url},
                {"name": "everything", "command": str(EVERYTHING)},
            ],
            "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        }
        with running_gateway(write_config(tmp_path_factory.mktemp("caps30"), config)) as running:
            yield running


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


class RootsAsked:
    """A client's roots callback that counts how often a backend asked for them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.asked = 0

    async def __call__(self, context: ClientRequestContext) -> types.ListRootsResult:
        self.asked += 1
        return types.ListRootsResult(roots=[types.Root(uri=self.folder.as_uri(), name="the client's")])


async def _roots_of(gateway: Gateway, tool: str, roots: RootsAsked, mode: str) -> str:
    """What the backend's `test_roots` saw of the client's roots: its answer, or the error it got."""
    async with Client(gateway.url, mode=mode, list_roots_callback=roots) as client:
        try:
            return _text(await client.call_tool(tool, {}))
        except MCPError as exc:
            return exc.error.message


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_stdio_backend_is_not_asked_for_the_clients_roots_by_default(gateway: Gateway, mode: str) -> None:
    roots = RootsAsked(Path("/"))
    assert anyio.run(_roots_of, gateway, "local_test_roots", roots, mode) == "List roots not supported"
    assert roots.asked == 0


def test_a_backend_set_to_relay_and_a_remote_one_get_the_clients_roots(gateway: Gateway) -> None:
    roots = RootsAsked(Path("/work/project"))
    for tool in ("relayed_test_roots", "remote_test_roots"):
        assert anyio.run(_roots_of, gateway, tool, roots, "legacy") == 'Roots: ["file:///work/project"]'
    assert roots.asked == 2


def test_a_clients_roots_do_not_widen_the_filesystem_backends_folders(
    gateway: Gateway, folders: tuple[Path, Path]
) -> None:
    allowed, outside = folders
    roots = RootsAsked(outside)

    async def main() -> list[types.CallToolResult]:
        async with Client(gateway.url, mode="legacy", list_roots_callback=roots) as client:
            read = {"path": str(outside / "secret.txt")}
            first = await client.call_tool("files_read_text_file", read)
            await client.send_roots_list_changed()  # the server would ask again: it must not be told of them
            listed = await client.call_tool("files_list_allowed_directories", {})
            return [first, listed, await client.call_tool("files_read_text_file", read)]

    first, listed, again = anyio.run(main)
    assert roots.asked == 0
    assert str(allowed) in _text(listed) and str(outside) not in _text(listed)
    for read in (first, again):
        assert read.is_error and "Access denied" in _text(read)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_client_with_sampling_sees_and_calls_everythings_sampling_tool(gateway: Gateway, mode: str) -> None:
    asked: list[types.CreateMessageRequestParams] = []

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled by the client"), model="fake"
        )

    async def main() -> tuple[list[str], str]:
        async with Client(gateway.url, mode=mode, sampling_callback=sampling) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool(SAMPLING_TOOL, {"prompt": "hi", "maxTokens": 5})
            assert not result.is_error, _text(result)
            return names, _text(result)

    names, text = anyio.run(main)
    assert SAMPLING_TOOL in names
    assert "sampled by the client" in text
    assert len(asked) == 1 and asked[0].max_tokens == 5


def test_a_client_without_sampling_gets_a_clear_error_from_the_sampling_tool(gateway: Gateway) -> None:
    async def main() -> tuple[list[str], str]:
        async with Client(gateway.url, mode="legacy") as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            try:
                result = await client.call_tool(SAMPLING_TOOL, {"prompt": "hi", "maxTokens": 5})
            except MCPError as exc:
                return names, exc.error.message
            assert result.is_error
            return names, _text(result)

    names, error = anyio.run(main)
    assert SAMPLING_TOOL in names
    assert "relays it only to a client that declared sampling" in error
