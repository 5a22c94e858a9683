"""find_tool waits for the vectors (`optimizer.vector_wait`) on the event loop, not in one of anyio's worker threads
per waiting request: a burst of find_tool right after start (agents reconnecting after a restart) took all 40 of
the default pool, stalling the gateway's other thread work for the whole wait.

A real `vmcp serve` with the demo backend, whose embedding model is held back for good by a `sitecustomize` first
on the gateway's path (the keyword index serves at once, the vectors never come): every find_tool waits the whole
`vector_wait`, then ranks by keywords. The gateway's threads are counted (psutil) while the burst waits."""

from __future__ import annotations

from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client

from tests.support import demo_backend, patched_on_import, running_gateway, sitecustomize, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BURST = 60  # more than anyio's 40 default worker threads
WAIT = 3.0  # optimizer.vector_wait: long enough to count the threads of those who wait, often
# Threads the gateway may start besides its own while the burst runs: find_tool's searches (find_tool_slots),
# the relay of the backend's answers. Far fewer than the 40 a waiting thread per request made.
SPARE_THREADS = 20

# Wraps `load_configured_embedder` as its module is imported: the model then never loads in this process.
SITECUSTOMIZE = patched_on_import(
    "vmcp_opt.optimizer.embedding",
    """
    def patch(module):
        import threading

        def held(*args, **kwargs):
            threading.Event().wait()

        module.load_configured_embedder = held
    """,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_burst_of_find_tool_waiting_for_the_vectors_holds_no_worker_thread_each(tmp_path: Path) -> None:
    optimizer = {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": WAIT}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer})
    with running_gateway(config, env=sitecustomize(tmp_path / "hook", SITECUSTOMIZE)) as gateway:
        process = psutil.Process(gateway.proc.pid)
        async with Client(gateway.url) as client:
            first = await client.call_tool("find_tool", {"query": "save a note"})  # waits, then keywords
            assert first.structured_content is not None and first.structured_content["ranking"] == "keyword"
            before = process.num_threads()
            answers: list[bool] = []
            most = before

            async def find() -> None:
                result = await client.call_tool("find_tool", {"query": "save a note"})
                answers.append(result.structured_content is not None)

            async with anyio.create_task_group() as burst:
                for _ in range(BURST):
                    burst.start_soon(find)
                while len(answers) < BURST:  # counted until the last one has waited its turn and answered
                    most = max(most, process.num_threads())
                    await anyio.sleep(0.02)
    assert all(answers)
    assert most < before + SPARE_THREADS, (before, most)
