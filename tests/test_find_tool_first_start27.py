"""find_tool waits for the vectors (`optimizer.vector_wait`) once per start, not once per call: on a first start the
model's ONNX export takes a minute or more, and each find_tool in that time waited the whole `vector_wait` again
(four queries in a row: 10 s each) before ranking by keywords.

A real `vmcp serve` with the demo backend whose embedding model is held back for good (the `sitecustomize` of
tests/test_gaps22_vector_wait_threads.py): the first find_tool waits the whole `vector_wait`; the next, made after
that deadline, answers by keywords at once."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from tests.test_gaps22_vector_wait_threads import SITECUSTOMIZE

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# optimizer.vector_wait: long, so that a second wait of it cannot pass for an answer "at once" (half of it).
WAIT = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_find_tool_after_the_first_wait_ran_out_answers_by_keywords_without_waiting_again(
    tmp_path: Path,
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    paths = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    optimizer = {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": WAIT}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer})
    with running_gateway(config, env={"PYTHONPATH": paths}) as gateway:
        async with Client(gateway.url, read_timeout_seconds=WAIT * 3) as client:
            first = await client.call_tool("find_tool", {"query": "save a note"})  # waits the whole vector_wait
            assert first.structured_content is not None and first.structured_content["ranking"] == "keyword"
            second = None
            with anyio.move_on_after(WAIT / 2):  # the old code waited the whole WAIT again
                second = await client.call_tool("find_tool", {"query": "list my notes"})
    assert second is not None, "the second find_tool waited for the vectors again"
    answer = second.structured_content
    assert answer is not None and answer["ranking"] == "keyword"
    assert "still loading" in answer["note"]
    assert answer["tools"], answer
