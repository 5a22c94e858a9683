"""Many concurrent long find_tool calls through the real gateway (ONNX int8 encoder): the model runs at most
one query run per usable CPU at once whatever the number of callers, every call is still answered, and after
the burst the heap the runs took is handed back (`QueryRuns`, optimizer/onnx_encoder.py). RSS figures are for
benchmarks; here the bound itself is asserted, from the gateway's own account of the burst."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import anyio
import httpx2
import pytest

from tests.support import Gateway, demo_backend, raw_session, running_gateway, write_config
from vmcp_opt.optimizer.cpu import usable_cpus

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CALLS = 24
BURST = re.compile(r"heap handed back after a burst of (\d+) runs \(at most (\d+) at once, (\d+) slots\)")
# Sentences find_tool splits into intents: a request is one model input of 256 tokens plus shorter ones.
SENTENCES = [
    "save a note about the quarterly budget review",
    "list every note I wrote last week",
    "read the note called shopping and show it to me",
    "add up the numbers in my expenses",
    "echo back the text I give you",
    "find the weather in Paris and tell me if it will rain",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def long_query(seed: int, chars: int = 3300) -> str:
    """A distinct ~`chars`-character request of many sentences (so no two calls share a cached vector)."""
    parts: list[str] = []
    i = seed
    while sum(len(part) + 2 for part in parts) < chars:
        parts.append(f"{SENTENCES[i % len(SENTENCES)]} number {i}")
        i += 7
    return ". ".join(parts)[:chars]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("qmem21")
    config = {
        "backends": [demo_backend("notes")],
        # No query cache: every call embeds its request.
        "optimizer": {"enabled": True, "index_dir": str(directory / "idx"), "query_cache_size": 0},
        "limits": {"max_connections_per_address": 4 * CALLS},
    }
    with running_gateway(write_config(directory, config), "--log-level", "debug") as running:
        yield running


def call(i: int, query: str) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": i,
        "method": "tools/call",
        "params": {"name": "find_tool", "arguments": {"query": query, "limit": 3}},
    }


async def find_tool_burst(gateway: Gateway, headers: dict[str, str], queries: list[str]) -> list[bytes]:
    """Every query's answer body, all asked at once (one connection each)."""
    bodies: list[bytes] = [b""] * len(queries)
    limits = httpx2.Limits(max_connections=len(queries), max_keepalive_connections=len(queries))
    async with httpx2.AsyncClient(headers=headers, timeout=120, limits=limits) as client:

        async def one(i: int) -> None:
            response = await client.post(gateway.url, json=call(i + 100, queries[i]))
            assert response.status_code == 200, response.text[:300]
            bodies[i] = response.content

        async with anyio.create_task_group() as tasks:
            for i in range(len(queries)):
                tasks.start_soon(one, i)
    return bodies


def wait_for_vectors(gateway: Gateway, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 120
    with httpx2.Client(headers=headers, timeout=60) as client:
        while b'"ranking":"hybrid"' not in client.post(gateway.url, json=call(2, "save a note")).content:
            assert time.monotonic() < deadline, "find_tool never ranked with vectors"
            time.sleep(0.2)


def bursts_logged(gateway: Gateway) -> list[tuple[int, int, int]]:
    return [tuple(int(n) for n in match) for match in BURST.findall(gateway.output())]  # type: ignore[misc]


@pytest.mark.skipif(usable_cpus() < 2, reason="one CPU: one run at a time, nothing overlaps to hand back")
async def test_concurrent_long_queries_run_at_most_one_per_cpu_and_the_heap_is_handed_back(
    gateway: Gateway,
) -> None:
    headers = raw_session(gateway.url)
    wait_for_vectors(gateway, headers)
    earlier = len(bursts_logged(gateway))
    bodies = await find_tool_burst(gateway, headers, [long_query(seed) for seed in range(CALLS)])
    for body in bodies:
        assert b'"ranking":"hybrid"' in body and b'"isError":true' not in body, body[:300]
    # The trim follows a quiet second after the burst, on a thread of its own: wait for its line.
    deadline = time.monotonic() + 60
    while len(bursts_logged(gateway)) == earlier:
        assert time.monotonic() < deadline, "no burst was handed back:\n" + gateway.output()[-3000:]
        await anyio.sleep(0.2)
    runs, at_once, slots = bursts_logged(gateway)[-1]
    assert slots == usable_cpus()  # one slot per CPU (optimizer.query_threads: 1)
    assert 2 <= at_once <= slots  # 24 callers, never more runs at once than slots
    assert runs >= CALLS  # every call's request ran (one run or more each) within the account
