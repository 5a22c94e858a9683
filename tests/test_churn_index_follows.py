"""find_tool follows the catalogue while the index embeds: a tool a backend removed leaves find_tool's answers
as soon as the router stops serving it, even while another backend's large catalogue is being embedded (that
took 22 s for 1,500 tools here, and a bulk child's embedding may take up to `optimizer.bulk_process_timeout`),
and the older catalogue being embedded is never swapped back in when its vectors are done.

The first test drives a `ToolIndex` with the real ONNX embedder, whose document encoding waits until the test
lets it go (the one thing not real: when the embedding ends), so the order of events is exact. The second runs
the real gateway over two real stdio backends and a real client.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.embedding import TextEmbedder, load_embedder
from vmcp_opt.optimizer.index import ToolIndex


class HeldEmbedder:
    """The real embedder; `encode_documents` waits for `release` (set by the test) before it encodes."""

    def __init__(self, real: TextEmbedder) -> None:
        self.real = real
        self.spec, self.model_id, self.dimensions = real.spec, real.model_id, real.dimensions
        self.batch_size, self.kind = real.batch_size, real.kind
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.real.encode_queries(texts)

    def encode_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        self.started.set()
        assert self.release.wait(60), "the test never released the embedding"
        return self.real.encode_documents(texts)


@pytest.fixture(scope="module")
def embedder() -> Iterator[HeldEmbedder]:
    yield HeldEmbedder(load_embedder("all-MiniLM-L6-v2"))


def tool(name: str, description: str, backend: str = "b") -> ToolRecord:
    return ToolRecord(name=name, backend=backend, description=description)


def names(index: ToolIndex, query: str) -> list[str]:
    return [hit.record.name for hit in index.search(query, limit=5).hits]


def test_keywords_follow_a_removal_while_an_older_catalogue_embeds_and_it_is_not_swapped_back(
    tmp_path: Path, embedder: HeldEmbedder
) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder=embedder)  # type: ignore[arg-type]
    zap = tool("zap_gone", "Zap the quasar with a plasma beam")
    keep = tool("keep", "Water the garden plants")
    index.update_keywords([zap, keep])
    index.update([zap, keep])
    # A backend brings a new tool: its catalogue goes to the embedder, which is held there.
    rocket = tool("launch_rocket", "Launch a rocket into orbit", backend="big")
    older = [zap, keep, rocket]
    index.update_keywords(older)
    embedder.started.clear()
    embedder.release.clear()
    embedding = threading.Thread(target=index.update, args=(older,))
    embedding.start()
    try:
        assert embedder.started.wait(30)
        # Meanwhile another backend removes zap_gone: the keyword refresh must not wait for that embedding.
        newer = [keep, rocket]
        refresh = threading.Thread(target=index.update_keywords, args=(newer,))
        refresh.start()
        refresh.join(20)
        assert not refresh.is_alive(), "update_keywords waited for the embedding of an older catalogue"
        assert "zap_gone" not in names(index, "zap the quasar with plasma")
    finally:
        embedder.release.set()
        embedding.join(60)
    # The older catalogue's vectors are done: its snapshot (zap_gone in it) must not come back, and the newer
    # catalogue ranks its tools with those vectors (a similarity is there only for a tool with a vector).
    hits = index.search("send a spacecraft to space", limit=5).hits
    assert "zap_gone" not in [hit.record.name for hit in hits]
    assert hits[0].record.name == "launch_rocket" and hits[0].similarity is not None
    # The newer catalogue's own update (queued behind, in the gateway) then embeds nothing.
    assert index.update(newer).embedded == 0


BACKEND = """
import json, os, sys
from pathlib import Path
import anyio
import mcp_types as types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

SPEC, NAME = Path(sys.argv[1]), sys.argv[2]
BUS = InMemorySubscriptionBus()

async def list_tools(ctx, params):
    tools = [{"name": f"relist_{NAME}", "description": "announce a change"}, *json.loads(SPEC.read_text())]
    schema = {"type": "object"}
    return types.ListToolsResult(tools=[types.Tool(name=t["name"], description=t["description"], input_schema=schema)
                                        for t in tools])

async def call_tool(ctx, params):
    if params.name == f"relist_{NAME}":
        await BUS.publish(ToolsListChanged())
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{NAME}:{params.name}")])

async def main():
    server = Server(NAME, on_list_tools=list_tools, on_call_tool=call_tool, on_subscriptions_listen=ListenHandler(BUS))
    async with stdio_server() as (read, write):
        options = server.create_initialization_options(NotificationOptions(tools_changed=True))
        await server.run(read, write, options)

anyio.run(main)
"""

# Enough long documents that embedding them takes seconds (22 s for 1,500 on the 2-core CI machine).
BIG = [
    {"name": f"tool_{i}", "description": f"Tool {i} handles widget requests of kind {i % 97}, with care. " * 12}
    for i in range(1200)
]
KEEP = {"name": "keep", "description": "Water the garden plants"}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, Path, Path]]:
    script = tmp_path / "backend.py"
    script.write_text(BACKEND)
    big, small = tmp_path / "big.json", tmp_path / "small.json"
    big.write_text(json.dumps([{"name": "seed", "description": "A seed tool"}]))
    small.write_text(
        json.dumps([{"name": "zap_gone", "description": "Zap the quasar with a plasma beam"}, KEEP]),
    )
    backends = [
        {"name": n, "command": sys.executable, "args": [str(script), str(p), n]}
        for n, p in [("big", big), ("small", small)]
    ]
    optimizer = {"enabled": True, "index_dir": str(tmp_path / "index"), "bulk_process_min": 0}
    config = write_config(tmp_path, {"backends": backends, "optimizer": optimizer})
    with running_gateway(config) as running:
        yield running, big, small


async def find(client: Client, query: str) -> dict[str, Any]:
    result = await client.call_tool("find_tool", {"query": query, "limit": 3})
    assert result.structured_content is not None, result.content
    return result.structured_content


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_removed_tool_leaves_find_tool_while_another_backends_catalogue_embeds(
    gateway: tuple[Gateway, Path, Path],
) -> None:
    running, big, small = gateway
    async with Client(running.url) as client:
        with anyio.fail_after(60):
            while (await find(client, "anything"))["ranking"] != "hybrid":  # noqa: ASYNC110 - polling the server
                await anyio.sleep(0.2)
        big.write_text(json.dumps(BIG))
        await client.call_tool("call_tool", {"tool_name": "big_relist_big", "arguments": {}})
        # Once the index has the big catalogue (by keywords: its vectors take seconds), a second change.
        with anyio.fail_after(60):
            while not (await find(client, "handles widget requests"))["tools"][0]["name"].startswith("big_tool_"):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        small.write_text(json.dumps([KEEP]))
        await client.call_tool("call_tool", {"tool_name": "small_relist_small", "arguments": {}})
        with anyio.fail_after(60):
            while True:
                found = [t["name"] for t in (await find(client, "zap the quasar with plasma"))["tools"]]
                if "small_zap_gone" not in found:
                    break
                await anyio.sleep(0.1)
        # It left with the keyword refresh, not once the big catalogue's vectors were done.
        assert "embedded 1200" not in running.output(), "find_tool kept a removed tool until an embedding ended"
        refused = await client.call_tool("call_tool", {"tool_name": "small_zap_gone", "arguments": {}})
        assert refused.is_error and "unknown tool" in refused.content[0].text  # type: ignore[union-attr]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
