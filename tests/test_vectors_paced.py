"""A serving gateway writes `vectors.npz` at most once per `vector_store.SAVE_INTERVAL`, not at every index
update, and writes what is pending when it stops (SIGTERM): a restart embeds none of it again.

The gateway test runs a real `vmcp serve` in front of tests/agg_backend.py, whose catalogue changes on demand
(the test rewrites its JSON file and calls its relist tool); the others run two real stores on one directory
(two replicas) and a store's own timer, on real files and the real lock.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config
from vmcp_opt.optimizer.documents import document_hash, tool_document
from vmcp_opt.optimizer.listing import load_listing
from vmcp_opt.optimizer.model_registry import resolve_model
from vmcp_opt.optimizer.vector_store import VECTORS_FILE, VectorCache, VectorStore

BACKEND = Path(__file__).parent / "agg_backend.py"
MODEL = resolve_model("all-MiniLM-L6-v2")
UPDATED = re.compile(r"index updated: embedded \d+")
ROUNDS = 4


def file_hashes(path: Path) -> tuple[set[str], set[str]]:
    """(the catalogue's hashes, all hashes) in a vectors.npz."""
    with np.load(path, allow_pickle=False) as data:
        hashes = [h.decode("ascii") for h in data["hashes"]]
        current = len(hashes) - int(data["retired"])
    return set(hashes[:current]), set(hashes)


def file_version(path: Path) -> tuple[int, int, str]:
    """What changes at every write: a new file renamed in, with other content (the catalogue changed)."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


async def wait_for(gateway: Gateway, what: str, done: Any, seconds: float = 60.0) -> None:
    """Until `done()`, polling; a hang guard names `what` and shows the gateway's log."""
    with anyio.fail_after(seconds):
        while not done():
            assert gateway.proc.poll() is None, gateway.output()
            await anyio.sleep(0.1)


async def hybrid(client: Client) -> bool:
    result = await client.call_tool("find_tool", {"query": "round tool"})
    assert result.structured_content is not None, result.content
    return bool(result.structured_content["ranking"] == "hybrid")


@pytest.mark.slow
def test_a_churning_backend_gets_one_write_per_interval_and_the_last_catalogue_is_written_on_sigterm(
    tmp_path: Path,
) -> None:
    index_dir = tmp_path / "index"
    spec = tmp_path / "a.json"
    spec.write_text(json.dumps({"tools": ["start_tool"]}), encoding="utf-8")
    backend = {
        "name": "a",
        "command": sys.executable,
        "args": [str(BACKEND)],
        "env": {"AGG_SPEC": str(spec), "AGG_NAME": "a"},
    }
    config = write_config(
        tmp_path, {"backends": [backend], "optimizer": {"enabled": True, "index_dir": str(index_dir), "usage": False}}
    )
    vectors = index_dir / MODEL.slug / VECTORS_FILE
    versions: list[tuple[int, int, str]] = []
    with running_gateway(config, "--log-level", "debug") as gateway:

        def updates() -> int:
            return len(UPDATED.findall(gateway.output()))

        async def churn() -> None:
            async with Client(gateway.url) as client:
                with anyio.fail_after(60):
                    while not await hybrid(client):  # noqa: ASYNC110 - polling the server
                        await anyio.sleep(0.2)
                await wait_for(gateway, "the first write", vectors.exists)
                versions.append(file_version(vectors))
                for round_ in range(ROUNDS):
                    before = updates()
                    tools = [f"round{round_}_tool{k}" for k in range(3)]
                    spec.write_text(json.dumps({"tools": ["start_tool", *tools]}), encoding="utf-8")
                    await client.call_tool("call_tool", {"tool_name": "a_relist_a", "arguments": {}})
                    # The update's line comes after its save returned: the file is what that save left.
                    await wait_for(gateway, f"round {round_}'s update", lambda: updates() > before)  # noqa: B023
                    versions.append(file_version(vectors))

        anyio.run(churn)
        assert gateway.proc.poll() is None
    # Unpaced, each of the ROUNDS updates wrote a new file; paced, the first embedding's write stands (a second
    # only when the test outlived an interval, and the timer wrote).
    assert len(set(versions)) <= 2, (versions, gateway.output())
    assert gateway.proc.returncode == 0, gateway.output()
    # SIGTERM wrote what was pending: every tool of the last catalogue has its vector on disk.
    listing = load_listing(index_dir, MODEL.id)
    assert listing is not None and any(r.name == f"a_round{ROUNDS - 1}_tool0" for r in listing.records)
    last = {document_hash(tool_document(record)) for record in listing.records}
    current, everything = file_hashes(vectors)
    assert current == last, gateway.output()
    # The earlier rounds' tools left the catalogue; their vectors are kept (`optimizer.keep_removed`).
    assert len(everything - current) >= 3 * (ROUNDS - 1)


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, MODEL.dimensions)).astype(np.float32)
    normalised: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalised


def cache_of(names: list[str], seed: int, retired: VectorCache | None = None) -> VectorCache:
    """A cache whose catalogue is `names` (hashed as content hashes are), the rest of `retired` kept."""
    hashes = [hashlib.sha256(name.encode()).hexdigest() for name in names]
    cache = VectorCache({h: i for i, h in enumerate(hashes)}, unit_vectors(len(names), seed))
    if retired is not None:
        cache = VectorCache(cache.rows, cache.matrix, retired=retired.retire(set(hashes), 100))
    return cache


def hashes_of(names: list[str]) -> set[str]:
    return {hashlib.sha256(name.encode()).hexdigest() for name in names}


def test_a_pending_save_keeps_another_replicas_vectors_when_it_is_written(tmp_path: Path) -> None:
    ours = VectorStore(tmp_path, MODEL, keep_removed=100, interval=3600)
    theirs = VectorStore(tmp_path, MODEL, keep_removed=100, interval=3600)
    first = cache_of(["a1", "a2"], seed=1)
    with ours.updating():
        ours.save(first)  # a store's first save writes at once
    assert file_hashes(tmp_path / VECTORS_FILE)[0] == hashes_of(["a1", "a2"])
    with ours.updating() as cache:
        second = cache_of(["a2", "a3"], seed=2, retired=cache)
        ours.save(second)  # within the interval: pending
    assert file_hashes(tmp_path / VECTORS_FILE)[0] == hashes_of(["a1", "a2"])
    with theirs.updating():
        theirs.save(cache_of(["b1"], seed=3))  # another replica's save meanwhile
    with ours.updating() as cache:  # our next update reads theirs, and keeps what we have not written
        assert {*cache.rows, *cache.retired} == hashes_of(["a1", "a2", "a3", "b1"])
        ours.save(cache)
    ours.close()
    current, everything = file_hashes(tmp_path / VECTORS_FILE)
    assert current == hashes_of(["a2", "a3"])
    assert everything == hashes_of(["a1", "a2", "a3", "b1"])
    assert ours.unsaved is None
    # Written as kept: the restarted replica finds the vectors it embedded, not copies of theirs.
    found, _ = VectorStore(tmp_path, MODEL).cache().stack(list(second.rows), MODEL.dimensions)
    np.testing.assert_allclose(found, second.matrix, atol=1e-6)


def test_a_pending_save_is_written_by_the_timer_without_another_save(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, MODEL, interval=0.5)
    with store.updating():
        store.save(cache_of(["a1"], seed=1))
    with store.updating():
        store.save(cache_of(["a2"], seed=2))
    deadline = time.monotonic() + 30  # a hang guard: the loop ends when the timer has written
    while file_hashes(tmp_path / VECTORS_FILE)[0] != hashes_of(["a2"]):
        assert time.monotonic() < deadline, "the pending save was never written"
        time.sleep(0.05)
    store.close()
