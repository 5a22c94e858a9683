"""find_tool waits for the vectors (`optimizer.vector_wait`) once per start, not once per call: on a first start the
model's ONNX export takes a minute or more, and each find_tool in that time waited the whole `vector_wait` again
(four queries in a row: 10 s each) before ranking by keywords.

A real `vmcp serve` with the demo backend whose embedding model is held back for good (the `sitecustomize` of
tests/test_gaps22_vector_wait_threads.py): the first find_tool waits the whole `vector_wait`; the next, made after
that deadline, answers by keywords without waiting again. The same `sitecustomize` records each wait for the vectors
(its length) in a file, so the test counts the waits instead of timing the second answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.support import demo_backend, patched_on_import, running_gateway, sitecustomize, write_config
from tests.test_gaps22_vector_wait_threads import SITECUSTOMIZE

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# optimizer.vector_wait: short, as the waits are counted, not timed.
WAIT = 2.0

# Each `ReadySignal.wait` (find_tool's wait for the vectors) appends its length to $VMCP_TEST_WAITS.
RECORD_WAITS = patched_on_import(
    "vmcp_opt.optimizer.ready_signal",
    """
    def patch(module):
        wait = module.ReadySignal.wait

        async def recorded(self, seconds):
            import os

            with open(os.environ["VMCP_TEST_WAITS"], "a", encoding="utf-8") as record:
                record.write(f"{seconds}\\n")
            await wait(self, seconds)

        module.ReadySignal.wait = recorded
    """,
)


def recorded(waits: Path) -> list[float]:
    return [float(line) for line in waits.read_text(encoding="utf-8").split()]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_find_tool_after_the_first_wait_ran_out_answers_by_keywords_without_waiting_again(
    tmp_path: Path,
) -> None:
    waits = tmp_path / "waits"
    env = {**sitecustomize(tmp_path / "hook", SITECUSTOMIZE + RECORD_WAITS), "VMCP_TEST_WAITS": str(waits)}
    optimizer = {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": WAIT}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer})
    with running_gateway(config, env=env) as gateway:
        async with Client(gateway.url, read_timeout_seconds=60) as client:
            first = await client.call_tool("find_tool", {"query": "save a note"})  # waits the whole vector_wait
            assert first.structured_content is not None and first.structured_content["ranking"] == "keyword"
            [waited] = recorded(waits)  # the whole vector_wait (less the moment since its deadline was set)
            assert 0 < waited <= WAIT, waited
            second = await client.call_tool("find_tool", {"query": "list my notes"})
    # The old code waited the whole vector_wait again.
    assert recorded(waits) == [waited], "the second find_tool waited for the vectors again"
    answer = second.structured_content
    assert answer is not None and answer["ranking"] == "keyword"
    assert "still loading" in answer["note"]
    assert answer["tools"], answer
