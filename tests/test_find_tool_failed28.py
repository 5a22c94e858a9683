"""find_tool and `/readyz` when embedding the catalogue failed, in the real `vmcp serve` with a model whose weights
are corrupt, over the real demo backend and a real MCP client.

find_tool's note said "the embedding model is still loading" for good, and `/readyz` only `vectors_ready: false`:
agents waited for vectors that never came, and operators could not tell loading from failed. Now the note says
embedding failed, `/readyz` says why (`vectors_failed`), and both are cleared by the next update that succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WEIGHTS = "model.safetensors"
# Loading the model and failing (torch's import included), then embedding it: minutes on a loaded machine at most.
DEADLINE = 180.0
STILL_LOADING = "still loading"
FAILED = "embedding the tools failed"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def model_with_corrupt_weights(directory: Path) -> Path:
    """The bundled model's files, linked, but its weights: bytes no loader reads."""
    bundled = resolve_model(DEFAULT_MODEL).path
    model = directory / "embedder"
    for source in bundled.rglob("*"):
        if source.is_file() and source.name != WEIGHTS:
            target = model / source.relative_to(bundled)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    # The first 8 bytes, the header's length, say far more than the file holds: a garbled download.
    (model / WEIGHTS).write_bytes(b"\xe0\x93\x78\xef" + bytes(range(256)) * 4)
    return model


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    directory = tmp_path_factory.mktemp("find-tool-failed")
    model = model_with_corrupt_weights(directory)
    optimizer = {
        "enabled": True,
        "index_dir": str(directory / "indexes"),
        "model": str(model),
        "model_cache": str(directory / "models"),
        "encoder": "torch",  # the ONNX export of corrupt weights fails too, only later: the same failure sooner
    }
    config = write_config(directory, {"backends": [demo_backend("notes")], "optimizer": optimizer})
    with running_gateway(config) as running:
        yield running, model


def optimizer_readiness(gateway: Gateway) -> dict[str, Any]:
    optimizer: dict[str, Any] = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()["optimizer"]
    return optimizer


def logged(gateway: Gateway, line: str) -> None:
    """Until the gateway's log holds `line`, polled until `DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while line not in gateway.output():
        if time.monotonic() > deadline or gateway.proc.poll() is not None:
            raise AssertionError(f"no {line!r} in the gateway's log:\n{gateway.output()[-3000:]}")
        time.sleep(0.2)


def readiness_until(gateway: Gateway, settled: Callable[[dict[str, Any]], bool], what: str) -> None:
    """Until `settled(/readyz's optimizer member)`, polled until `DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while not settled(optimizer := optimizer_readiness(gateway)):
        if time.monotonic() > deadline or gateway.proc.poll() is not None:
            raise AssertionError(f"{what}: /readyz's optimizer is {optimizer}\n{gateway.output()[-3000:]}")
        time.sleep(0.2)


async def find(client: Client, query: str) -> dict[str, Any]:
    result = await client.call_tool("find_tool", {"query": query})
    assert not result.is_error, result.content
    answer: dict[str, Any] = result.structured_content or {}
    return answer


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_failed_embedding_is_told_as_failed_and_cleared_by_an_update_that_succeeds(
    gateway: tuple[Gateway, Path],
) -> None:
    running, model = gateway
    await anyio.to_thread.run_sync(logged, running, "embedding the catalogue failed")
    failed = optimizer_readiness(running)
    reason = failed.get("vectors_failed")
    assert isinstance(reason, str), failed
    assert failed["vectors_ready"] is False
    assert "header" in reason.lower(), reason  # the loader's own words for the corrupt weights
    assert "\n" not in reason and len(reason) < 400, reason  # a line for an operator, not a traceback

    async with Client(running.url) as client:
        answer = await find(client, "save a note")
        assert answer["ranking"] == "keyword"
        assert FAILED in answer["note"] and STILL_LOADING not in answer["note"], answer["note"]

        # The weights mended in place; a new tool is a new catalogue, whose update loads the model again.
        weights = model / WEIGHTS
        weights.unlink()
        weights.symlink_to(resolve_model(DEFAULT_MODEL).path / WEIGHTS)
        added = await client.call_tool(
            "call_tool", {"tool_name": "notes_add_tool", "arguments": {"name": "forecast", "description": "Weather"}}
        )
        assert not added.is_error, text(added)
        await anyio.to_thread.run_sync(
            readiness_until,
            running,
            lambda optimizer: optimizer["vectors_ready"] and optimizer["vectors_failed"] is None,
            "the failure outlived an update that succeeded",
        )

        answer = await find(client, "save a note")
        assert answer["ranking"] != "keyword"
        assert FAILED not in answer.get("note", ""), answer
