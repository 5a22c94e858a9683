"""A long list answer is built once and shared (server/list_cache.py): lists asked at once hold one answer, not one
each, and no caller is ever answered with another's view of the lists.

A real gateway in front of real stdio backends (the standard library only) listing long lists, real clients: plain
HTTP for the memory (a client that has its answer's first bytes and reads on only when told), the SDK's client in
both protocol eras behind API keys and a Cedar policy for the views.

Before, each `tools/list` shaped and encoded its own answer and wrote it whole into its connection: six clients
reading slowly held six answers in the gateway (663 tools of ~200 KB: 269 MB to 1,192 MB for six lists at once).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
import pytest

from tests.support import Gateway, bearer_client, policed_config, running_gateway, write_config
from vmcp_opt.server.list_cache import Built, ListAnswers

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/list",
}
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "lister", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}

# A stdio MCP server (newline-delimited JSON-RPC, the standard library only): `count` tools, prompts, resources and
# templates named after it, each tool described in `size` characters, its tools in pages.
BACKEND = """
import json, sys
name, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
described = ("word " * (size // 5 + 1))[:size]
schema = {"type": "object", "properties": {"a": {"type": "string"}}}
answers = {
    "initialize": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "prompts": {}, "resources": {}},
                   "serverInfo": {"name": name, "version": "1"}},
    "tools/list": {"tools": [{"name": f"t{i}", "description": f"{i} {described}", "inputSchema": schema}
                             for i in range(count)]},
    "prompts/list": {"prompts": [{"name": f"p{i}"} for i in range(count)]},
    "resources/list": {"resources": [{"uri": f"{name}://r{i}", "name": f"{name}_r{i}"} for i in range(count)]},
    "resources/templates/list": {"resourceTemplates": [{"uriTemplate": f"{name}://t{i}/{{x}}", "name": f"{name}_rt{i}"}
                                                       for i in range(count)]},
    "ping": {},
}
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method = message.get("method")
    reply = {"jsonrpc": "2.0", "id": message["id"]}
    if method == "tools/list":  # in pages of 50: a page is bounded by limits.max_result_bytes
        start = int((message.get("params") or {}).get("cursor") or 0)
        page = {"tools": answers[method]["tools"][start : start + 50]}
        reply["result"] = {**page, "nextCursor": str(start + 50)} if start + 50 < count else page
    elif method in answers:
        reply["result"] = answers[method]
    else:
        reply["error"] = {"code": -32601, "message": f"no {method}"}
    sys.stdout.write(json.dumps(reply) + "\\n")
    sys.stdout.flush()
"""

BIG_TOOLS = 300
DESCRIPTION = 100_000  # characters: a `tools/list` answer of ~30 MB
LISTERS = 6
SMALL = 210  # items of each list per backend: past server/list_answers.py's SLICE, so shaped off the loop

POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guest", action, resource in Backend::"hidden");
"""


def _backend(directory: Path, name: str, count: int, size: int) -> dict[str, Any]:
    script = directory / "lists_backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    return {"name": name, "command": sys.executable, "args": [str(script), name, str(count), str(size)]}


@pytest.fixture(scope="module")
def big_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("list-answers27-big")
    config = {"backends": [_backend(directory, "big", BIG_TOOLS, DESCRIPTION)]}
    with running_gateway(write_config(directory, config), "--log-level", "warning") as gateway:
        yield gateway


def _list_body(request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {"_meta": META}}


def _tool_names(answer: bytes, request_id: int) -> list[str]:
    message = json.loads(answer)
    assert message.get("id") == request_id and "result" in message, answer[:300]
    return [tool["name"] for tool in message["result"]["tools"]]


class _SlowLister:
    """A client that sends `tools/list`, takes its answer's first bytes, and reads the rest only once `go` is set."""

    def __init__(self, gateway: Gateway, request_id: int, go: threading.Event) -> None:
        self.gateway, self.request_id, self.go = gateway, request_id, go
        self.started = threading.Event()
        self.answer = b""

    def run(self) -> None:
        with (
            httpx2.Client(timeout=120) as client,
            client.stream("POST", self.gateway.url, json=_list_body(self.request_id), headers=HEADERS) as response,
        ):
            chunks = response.iter_raw()
            first = next(chunks)
            self.started.set()
            assert self.go.wait(120)
            self.answer = first + b"".join(chunks)


def _held_by_slow_listers(gateway: Gateway, before: int) -> tuple[list[_SlowLister], int]:
    """`LISTERS` slow listers run to their end, and what the gateway's memory had grown by since `before` once
    every answer had begun (what it keeps of them until they are read)."""
    process = psutil.Process(gateway.proc.pid)
    go = threading.Event()
    listers = [_SlowLister(gateway, n, go) for n in range(1, LISTERS + 1)]
    with ThreadPoolExecutor(LISTERS) as pool:
        running = [pool.submit(lister.run) for lister in listers]
        try:
            for lister, future in zip(listers, running, strict=True):
                while not lister.started.wait(0.1):
                    assert not future.done(), future.result()  # raises what ended it early
            held = process.memory_info().rss - before
        finally:
            go.set()
        for future in running:
            future.result()
    return listers, held


def test_lists_asked_at_once_hold_one_answer_in_the_gateway(big_catalogue: Gateway) -> None:
    gateway = big_catalogue
    expected = [f"big_t{i}" for i in range(BIG_TOOLS)]
    warm = httpx2.post(gateway.url, json=_list_body(0), headers=HEADERS, timeout=120)
    assert warm.status_code == 200 and _tool_names(warm.content, 0) == expected
    answer_bytes = len(warm.content)
    before = psutil.Process(gateway.proc.pid).memory_info().rss
    listers, held = _held_by_slow_listers(gateway, before)
    for lister in listers:
        assert _tool_names(lister.answer, lister.request_id) == expected
    # Each answer written whole held ~LISTERS x 30 MB here; shared, the answers cost a chunk per connection.
    assert held < answer_bytes, f"{LISTERS} lists at once held {held / 1e6:.0f} MB ({answer_bytes / 1e6:.0f} each)"


# --- views: two principals listing at once, each answered with its own lists --------------------------------


@pytest.fixture(scope="module")
def policed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("list-answers27-views")
    config = {
        "backends": [_backend(directory, "shown", SMALL, 40), _backend(directory, "hidden", SMALL, 40)],
        "health": {"interval": 600},
    }
    path, keys = policed_config(directory, {"guest": ["guest"], "staff": ["staff"]}, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as gateway:
        yield gateway, keys


async def _lists(client: Any) -> dict[str, list[str]]:
    """The names (URIs for resources) of everything in each of the client's four lists, in order."""
    return {
        "tools": [tool.name for tool in (await client.list_tools()).tools],
        "prompts": [prompt.name for prompt in (await client.list_prompts()).prompts],
        "resources": [str(resource.uri) for resource in (await client.list_resources()).resources],
        "templates": [t.uri_template for t in (await client.list_resource_templates()).resource_templates],
    }


def _expected(backends: list[str]) -> dict[str, list[str]]:
    return _sorted(
        {
            "tools": [f"{name}_t{i}" for name in backends for i in range(SMALL)],
            "prompts": [f"{name}_p{i}" for name in backends for i in range(SMALL)],
            "resources": [f"{name}://r{i}" for name in backends for i in range(SMALL)],
            "templates": [f"{name}://t{i}/{{x}}" for name in backends for i in range(SMALL)],
        }
    )


@pytest.mark.anyio
@pytest.mark.parametrize("mode", [MODERN, "legacy"])
async def test_principals_listing_at_once_each_get_their_own_view(
    policed: tuple[Gateway, dict[str, str]], mode: str
) -> None:
    gateway, keys = policed
    seen: dict[str, list[dict[str, list[str]]]] = {"guest": [], "staff": []}

    async def lister(who: str) -> None:
        async with bearer_client(gateway.url, keys[who], mode) as client:
            for _ in range(3):  # the first lists built at once, the later ones served from what was kept
                seen[who].append(await _lists(client))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for who in ["guest", "staff"] * 3:
                group.start_soon(lister, who)

    guest, staff = _expected(["shown"]), _expected(["shown", "hidden"])
    assert [_sorted(lists) for lists in seen["guest"]] == [guest] * 9
    assert [_sorted(lists) for lists in seen["staff"]] == [staff] * 9


def _sorted(lists: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each list in name order: the backends' items come in the order their listings were taken."""
    return {kind: sorted(items) for kind, items in lists.items()}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- lists asked at once before any was answered: one build between them ---------------------------------------


@pytest.fixture
def cold_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("list-answers27-cold")
    config = {"backends": [_backend(directory, "big", BIG_TOOLS, DESCRIPTION)]}
    with running_gateway(write_config(directory, config), "--log-level", "warning") as gateway:
        yield gateway


def test_lists_asked_at_once_before_any_was_answered_share_one_build(cold_catalogue: Gateway) -> None:
    gateway = cold_catalogue
    before = psutil.Process(gateway.proc.pid).memory_info().rss
    listers, held = _held_by_slow_listers(gateway, before)
    answer_bytes = len(listers[0].answer)
    for lister in listers:
        assert _tool_names(lister.answer, lister.request_id) == [f"big_t{i}" for i in range(BIG_TOOLS)]
    # The answer kept, and what its one build left to the allocator; one build per list held ~LISTERS answers.
    assert held < 3 * answer_bytes, f"{LISTERS} lists at once held {held / 1e6:.0f} MB ({answer_bytes / 1e6:.0f} each)"


# --- what is kept: in process, the cache itself --------------------------------------------------------------


class _Builds:
    """A build of a list answer that counts its runs and can be held until `release` (to overlap requests)."""

    def __init__(self, size: int = 10) -> None:
        self.runs = 0
        self.size = size
        self.release = anyio.Event()
        self.release.set()

    async def __call__(self) -> Built:
        self.runs += 1
        await self.release.wait()
        return Built({"tools": [self.runs]}, self.size)


@pytest.mark.anyio
async def test_lists_of_the_same_items_at_once_are_built_once_and_kept() -> None:
    answers, builds, items = ListAnswers(), _Builds(), [object() for _ in range(3)]
    builds.release = anyio.Event()
    got: list[Built] = []

    async def ask() -> None:
        got.append(await answers.get("tools/list", MODERN, items, "catalogue", builds))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        builds.release.set()
    assert builds.runs == 1 and len({id(built) for built in got}) == 1
    assert await answers.get("tools/list", MODERN, list(items), "catalogue", builds) is got[0]
    # Other items (another view), another version or another method: answers of their own.
    assert await answers.get("tools/list", MODERN, items[:2], "catalogue", builds) is not got[0]
    assert await answers.get("tools/list", "2025-11-25", items, "catalogue", builds) is not got[0]
    assert await answers.get("prompts/list", MODERN, items, "catalogue", builds) is not got[0]
    assert builds.runs == 4


@pytest.mark.anyio
async def test_kept_answers_are_bounded_in_number_bytes_and_generation() -> None:
    answers, builds = ListAnswers(entries=2, most_bytes=100), _Builds(size=40)
    lists = [[object()] for _ in range(3)]
    for items in lists:
        await answers.get("tools/list", MODERN, items, "one", builds)
    assert len(answers) == 2 and answers.kept_bytes == 80 and builds.runs == 3
    await answers.get("tools/list", MODERN, lists[0], "one", builds)  # the least recently used was dropped
    assert builds.runs == 4

    await answers.get("tools/list", MODERN, lists[1], "two", builds)  # a new catalogue: the ones before dropped
    assert len(answers) == 1 and answers.kept_bytes == 40

    huge = _Builds(size=101)
    await answers.get("tools/list", MODERN, lists[2], "two", huge)
    await answers.get("tools/list", MODERN, lists[2], "two", huge)
    assert huge.runs == 2 and len(answers) == 1  # larger than all the room: shared by its flight alone
