"""Three authorization defects, through a real gateway with API-key callers and a Cedar policy.

1. A resource URI is judged in RFC 3986 normal form, and the backend is sent that form: percent-encoding a
   forbidden URI (`files://%73ecret`) got past a forbid naming it, since the backend's template matching decodes
   what it reads. Reads, subscriptions, listen streams and `like` policies alike.
2. A code-mode script's call of a tool that asks the client for input (an `@approval` tool) answers the script
   with an error it can handle; it ended the script with -32603 for a 2026-07-28 client.
3. A caller's view of a large catalogue, now judged in chunks (each batch holds the GIL), is the same view.

Real backends: one written here with the SDK's MCPServer (a listed secret, a template serving the same URIs,
updates for listen streams), the demo backend, and a lowlevel server listing many tools; real SDK clients or
plain HTTP. The event-loop stall item 3 fixed is a timing and is measured outside the tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPError

from tests.support import RAW_HEADERS, Gateway, bearer_client, demo_backend, policed_config, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECRET = "SECRET-PAYROLL"
FILES_BACKEND = f"""
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus

server = MCPServer("files", subscriptions=InMemorySubscriptionBus())
DATA = {{"secret": "{SECRET}", "readme": "public readme"}}


@server.resource("files://secret")
def secret() -> str:
    return DATA["secret"]


@server.resource("files://{{name}}")
def any_file(name: str) -> str:
    return DATA.get(name, "")


@server.tool()
async def touch(uri: str, ctx: Context) -> str:
    await ctx.notify_resource_updated(uri)
    return uri


server.run()
"""
FILES_POLICY = """\
permit(principal, action, resource);
forbid(principal == User::"bob", action in [Action::"read_resource", Action::"list_resources"],
       resource == Resource::"files://secret");
forbid(principal == User::"bob", action == Action::"read_resource", resource)
  when { resource has uri && resource.uri like "notes://note/hidden*" };
"""
# The same secret spelled otherwise: each is `files://secret` once decoded as the backend decodes it.
SPELLINGS = [
    "files://%73ecret",
    "files://secre%74",
    "files://%73%65%63%72%65%74",
    "FILES://secret",
    "files://%73ecre%74",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory: Path = tmp_path_factory.mktemp("authz28-files")
    backend = directory / "files_backend.py"
    backend.write_text(FILES_BACKEND, encoding="utf-8")
    config = {
        "backends": [{"name": "files", "command": sys.executable, "args": [str(backend)]}, demo_backend("notes")],
        "optimizer": {"enabled": False},
    }
    path, keys = policed_config(directory, {"alice": ["dev"], "bob": ["guest"]}, FILES_POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


async def refused_read(client: Client, uri: str) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await client.read_resource(uri)
    return caught.value


def read_text(result: types.ReadResourceResult) -> str:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    return content.text


@pytest.mark.parametrize("uri", SPELLINGS)
async def test_a_forbidden_uri_spelled_with_escapes_is_refused_as_the_uri_itself(
    files: tuple[Gateway, dict[str, str]], uri: str
) -> None:
    gateway, keys = files
    async with bearer_client(gateway.url, keys["bob"]) as bob:
        refused = await refused_read(bob, uri)
        assert refused.error.code == -32002 and refused.error.message == f"Resource not found: '{uri}'"
        assert read_text(await bob.read_resource("files://re%61dme")) == "public readme"
    async with bearer_client(gateway.url, keys["alice"]) as alice:
        # Served in the form judged: the listed resource, whichever spelling asked for it.
        assert read_text(await alice.read_resource(uri)) == SECRET


async def test_a_like_policy_judges_the_decoded_uri(files: tuple[Gateway, dict[str, str]]) -> None:
    gateway, keys = files
    async with bearer_client(gateway.url, keys["alice"]) as alice:
        await alice.call_tool("notes_save_note", {"title": "hidden", "text": "TOP-SECRET-VALUE"})
        assert read_text(await alice.read_resource("notes://note/hidd%65n")) == "TOP-SECRET-VALUE"
    async with bearer_client(gateway.url, keys["bob"]) as bob:
        for uri in ("notes://note/hidden", "notes://note/hidd%65n", "notes://note/%68idden"):
            assert (await refused_read(bob, uri)).error.code == -32002


async def test_a_uri_with_a_stray_percent_gets_a_clear_error(files: tuple[Gateway, dict[str, str]]) -> None:
    gateway, keys = files
    async with bearer_client(gateway.url, keys["alice"]) as alice:
        for uri, at in (("files://%zzsecret", 8), ("files://secret%4", 14), ("files://%4%73ecret", 8)):
            refused = await refused_read(alice, uri)
            assert refused.error.code == types.INVALID_PARAMS, refused.error
            assert f"'%' at character {at} not followed by two hex digits" in refused.error.message


@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
async def test_subscribing_to_a_forbidden_uri_by_another_spelling_is_refused(
    files: tuple[Gateway, dict[str, str]],
) -> None:
    gateway, keys = files
    async with bearer_client(gateway.url, keys["bob"], mode="legacy") as bob:
        for uri in SPELLINGS[:2]:
            with pytest.raises(MCPError) as caught:
                await bob.subscribe_resource(uri)
            assert caught.value.error.message == f"Resource not found: '{uri}'"
            with pytest.raises(MCPError) as caught:
                await bob.unsubscribe_resource(uri)
            assert caught.value.error.message == f"Resource not found: '{uri}'"


async def test_a_listen_stream_follows_the_normal_form_and_not_a_forbidden_spelling(
    files: tuple[Gateway, dict[str, str]],
) -> None:
    gateway, keys = files
    asked = ["files://%73ecret", "files://re%61dme"]
    async with bearer_client(gateway.url, keys["bob"]) as bob, bob.listen(resource_subscriptions=asked) as listening:
        assert listening.honored.resource_subscriptions == ["files://readme"]
    async with bearer_client(gateway.url, keys["alice"]) as alice:
        asked = ["files://%73ecret", "files://secret", "files://secre%74"]
        async with alice.listen(resource_subscriptions=asked) as listening:
            # One URI, followed once, promised in the form the backend follows and tells of.
            assert listening.honored.resource_subscriptions == ["files://secret"]
            await alice.call_tool("files_touch", {"uri": "files://secret"})
            with anyio.fail_after(20):
                event = await anext(listening)
            assert event == ResourceUpdated("files://secret")


# --- 2: a script's call that asks the client ----------------------------------------------------------------

APPROVAL_POLICY = """\
permit(principal, action, resource);
@approval("Saving overwrites notes.")
permit(principal, action == Action::"call_tool", resource == Tool::"notes_save_note");
"""


async def test_a_script_calling_a_tool_that_asks_the_client_gets_an_error_it_can_read(
    tmp_path: Path,
) -> None:
    config = {"backends": [demo_backend("notes")], "optimizer": {"enabled": False}, "code_mode": {"enabled": True}}
    path, keys = policed_config(tmp_path, {"bob": ["guest"]}, APPROVAL_POLICY, config)
    asked: list[str] = []

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})

    script = "x = call_tool('notes_save_note', title='cm', text='code mode')\nx"
    with running_gateway(path, "--log-level", "warning") as gateway:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {keys['bob']}"}, timeout=60)
        transport = streamable_http_client(gateway.url, http_client=http)
        async with Client(transport, mode="auto", elicitation_callback=elicitation) as bob:  # type: ignore[arg-type]
            result = await bob.call_tool("execute_tool_script", {"script": script})
            shown = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
            assert "'notes_save_note' asked the client for input, which a script's call cannot relay" in shown
            # The script's question reached no one, and its call did not run.
            assert asked == []
            found = await bob.call_tool("notes_search_notes", {"query": "code mode"})
            assert "cm" not in "".join(c.text for c in found.content if isinstance(c, types.TextContent))


# --- 3: a large catalogue's view, judged in chunks ----------------------------------------------------------

MANY = 1500
MANY_BACKEND = f"""
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

TOOLS = [types.Tool(name=f"t{{i}}", description=f"tool {{i}}", input_schema={{"type": "object"}}) for i in range({MANY})]


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx, params):
    return types.CallToolResult(content=[types.TextContent(type="text", text=params.name)])


async def main():
    server = Server("many", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())

anyio.run(main)
"""
MANY_POLICY = """\
permit(principal, action, resource);
forbid(principal == User::"bob", action == Action::"call_tool", resource)
  when { resource has name && resource.name like "*7" };
forbid(principal == User::"bob", action == Action::"list_tools", resource)
  when { resource has name && resource.name like "*1" };
"""


def test_a_large_catalogues_view_is_every_decision_of_its_chunks(tmp_path: Path) -> None:
    backend = tmp_path / "many_backend.py"
    backend.write_text(MANY_BACKEND, encoding="utf-8")
    config = {
        "backends": [{"name": "many", "command": sys.executable, "args": [str(backend)]}],
        "optimizer": {"enabled": False},
    }
    path, keys = policed_config(tmp_path, {"alice": ["dev"], "bob": ["guest"]}, MANY_POLICY, config)
    with running_gateway(path, "--log-level", "warning") as gateway:
        alice, bob = (set(listed_tools(gateway, keys[who])) for who in ("alice", "bob"))
    assert len(alice) == MANY
    assert bob == {name for name in alice if not name.endswith(("7", "1"))}


def listed_tools(gateway: Gateway, key: str) -> list[str]:
    headers = {**RAW_HEADERS, "Authorization": f"Bearer {key}", "mcp-protocol-version": "2026-07-28"}
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "authz28", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    names: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"_meta": meta, **({"cursor": cursor} if cursor else {})}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params}
        answer = httpx2.post(gateway.url, json=body, headers={**headers, "mcp-method": "tools/list"}, timeout=60)
        result = answer.json()["result"]
        names.extend(tool["name"] for tool in result["tools"])
        cursor = result.get("nextCursor")
        if not cursor:
            return names


def test_decisions_are_asked_of_the_engine_in_chunks_and_match_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's batches observed, not replaced: no batch holds the GIL for the whole catalogue, and the
    chunked decisions are those the engine gives one target at a time."""
    import cedarpy

    from vmcp_opt.auth import cedar
    from vmcp_opt.auth.caller import Caller, Identification
    from vmcp_opt.routing.policy import Target

    sizes: list[int] = []
    engine = cedarpy.is_authorized_batch

    def observed(requests: list[dict[str, Any]], *args: Any) -> Any:
        sizes.append(len(requests))
        return engine(requests, *args)

    monkeypatch.setattr(cedarpy, "is_authorized_batch", observed)
    bob = Caller("c", Identification.API_KEY, "2025-11-25", subject="bob", groups=frozenset({"guest"}))
    targets = [Target("tool", f"t{i}", "many", op) for i in range(MANY) for op in ("list", "use")]
    chunked = cedar.CedarPolicy(MANY_POLICY, cache_size=0).decide_all(bob, targets)
    assert sum(sizes) == len(targets) and len(sizes) > 1 and max(sizes) <= cedar.MAX_CHUNK
    one_by_one = cedar.CedarPolicy(MANY_POLICY, cache_size=0)
    assert chunked == [one_by_one.decide_all(bob, [target])[0] for target in targets]
    assert sum(not d.allowed for d in chunked) == 2 * (MANY // 10)  # names ending in 7 (use) and in 1 (list)
