"""Editing the API keys file while `vmcp serve` runs: the re-read leaves the event loop serving.

A re-read is made as slow as the test wants by swapping the keys file for a named pipe: the gateway's read of it
waits until the test writes the new keys, so "during the re-read" is an ordering the test holds, not a guess at
how long parsing takes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.auth.api_keys import MAX_FILE_BYTES, new_key

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def post(gateway: Gateway, key: str) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {key}"}
    return httpx2.post(gateway.url, json=INITIALIZE, headers=headers, timeout=30)


def healthz(gateway: Gateway) -> int:
    return httpx2.get(f"{gateway.base}/healthz", timeout=30).status_code


def keys_yaml(*entries: tuple[str, str]) -> str:
    """A YAML keys file, one flow mapping per (subject, sha256)."""
    return "keys:\n" + "".join(
        f"  - {{sha256: {digest}, subject: {subject}, groups: [dev]}}\n" for subject, digest in entries
    )


def replace(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    staging.replace(path)  # a new file, as an editor or a deploy writes it


def writer_once_read(fifo: Path) -> int:
    """The pipe's write end, opened once the gateway has opened it to read (its re-read is under way)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
        else:
            os.set_blocking(fd, True)
            return fd


def gateway_config(directory: Path, keys: Path) -> Path:
    auth = {"incoming": {"mode": "api_keys", "api_keys": {"file": keys.name}}}
    return write_config(directory, {"backends": [demo_backend("notes")], "auth": auth})


async def listed_tools(gateway: Gateway, key: str) -> set[str]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    async with Client(streamable_http_client(gateway.url, http_client=http)) as client:  # type: ignore[arg-type]
        return {tool.name for tool in (await client.list_tools()).tools}


async def test_a_keys_file_being_reread_leaves_the_gateway_serving_then_its_keys_take_over(tmp_path: Path) -> None:
    alice, alice_hash = new_key()
    bob, bob_hash = new_key()
    keys = tmp_path / "keys.yaml"
    replace(keys, keys_yaml(("alice", alice_hash)))
    with running_gateway(gateway_config(tmp_path, keys)) as gateway, ThreadPoolExecutor(4) as pool:
        assert post(gateway, alice).status_code == 200
        assert post(gateway, bob).status_code == 401
        fifo = tmp_path / "keys.fifo"
        os.mkfifo(fifo)
        fifo.replace(keys)  # the edit; reading the file now waits for the test to write it
        bob_first = pool.submit(post, gateway, bob)  # notices the change, starts the re-read and waits for it
        writer = writer_once_read(keys)
        try:
            assert healthz(gateway) == 200  # the re-read is under way and the event loop still serves
            assert post(gateway, alice).status_code == 200  # with the previous keys meanwhile
            bobs_later = [pool.submit(post, gateway, bob) for _ in range(3)]  # they share the one re-read
            assert not bob_first.done()  # the new keys are not in until the re-read ends
            new_keys = keys_yaml(("bob", bob_hash))  # bob added, alice revoked
            replace(keys, new_keys)  # a plain file again for the requests to come
            os.write(writer, new_keys.encode())
        finally:
            os.close(writer)
        assert bob_first.result().status_code == 200
        assert [later.result().status_code for later in bobs_later] == [200, 200, 200]
        revoked = post(gateway, alice)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error_description"]
        assert "notes_whoami" in await listed_tools(gateway, bob)  # a real client gets in with the new key
        log = gateway.output()
    assert "not reloaded" not in log and "Traceback" not in log  # no second reader found the pipe empty
    assert alice not in log and bob not in log


def test_a_broken_or_oversized_keys_file_is_refused_with_the_reason_logged_once_until_fixed(tmp_path: Path) -> None:
    alice, alice_hash = new_key()
    keys = tmp_path / "keys.yaml"
    good = keys_yaml(("alice", alice_hash))
    replace(keys, good)
    config = gateway_config(tmp_path, keys)
    oversized = good + "#" * MAX_FILE_BYTES + "\n"  # still valid YAML: only its size is wrong
    with running_gateway(config) as gateway:
        assert post(gateway, alice).status_code == 200
        replace(keys, good.replace("groups: [dev]}", "groups: [dev]"))  # an unclosed flow mapping
        for _ in range(2):
            assert post(gateway, alice).status_code == 401  # fail-closed: a botched revocation revokes all
        assert healthz(gateway) == 200
        replace(keys, oversized)
        assert post(gateway, alice).status_code == 401
        replace(keys, good)
        assert post(gateway, alice).status_code == 200  # fixed: accepted again, no restart
        log = gateway.output()
    assert log.count("not valid YAML/JSON") == 1 and "line 3" in log  # where the YAML broke
    assert log.count(f"{keys}: larger than {MAX_FILE_BYTES // 2**20} MiB") == 1
    assert "Traceback" not in log
    keys.write_text(oversized)
    command = [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "larger than" in " ".join(done.stderr.split())


def test_a_keys_file_nested_past_the_parsers_stack_is_refused_as_unparseable(tmp_path: Path) -> None:
    # RecursionError escaped the fail-closed path: each request then started another 8 MiB parse.
    from vmcp_opt.auth.api_keys import ApiKeyFileError, ApiKeys

    deep = tmp_path / "keys.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(ApiKeyFileError, match="nested too deeply"):
        ApiKeys(deep, None)
