"""A stdio backend that answers garbage, against a real gateway process: garbled JSON-RPC and results that fail
the SDK's validation are failures for the backend's circuit (it opens), named as the backend's fault to the
client; results over `limits.max_result_bytes` are the tool's output being large and leave the circuit closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.scripted_backend import scripted
from tests.support import running_gateway, write_config
from tests.test_failure_recovery import backend, text

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def garbage_config(directory: Path, failure_threshold: int) -> Path:
    config: dict[str, Any] = {
        # Its tools answer what no SDK server would, each what its name says (garbled, invalid, big).
        "backends": [scripted("junk", "--garbage-answers")],
        "limits": {"max_result_bytes": 100_000},
        # Only calls feed the circuit in these tests: no health check runs within them.
        "health": {"interval": 3600},
        "failure": {"circuit_breaker": {"failure_threshold": failure_threshold, "cooldown": 3600}},
    }
    return write_config(directory, config)


async def test_garbled_answers_open_the_circuit(tmp_path: Path) -> None:
    with running_gateway(garbage_config(tmp_path, failure_threshold=3)) as gateway:
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("junk_ok", {})).is_error
            for _ in range(3):
                # A tool result with isError, as a timeout is: what an agent reads, not a protocol error.
                garbled = await client.call_tool("junk_garbled", {})
                assert garbled.is_error
                assert text(garbled).startswith("backend 'junk' answered with a message of")
                assert "not valid JSON-RPC" in text(garbled)
            circuit = backend(gateway, "junk")["circuit"]
            assert circuit["state"] == "open" and "not valid JSON-RPC" in circuit["reason"], circuit
            refused = await client.call_tool("junk_ok", {})
            assert refused.is_error and "circuit open" in text(refused)


async def test_results_that_fail_validation_are_the_backends_fault_and_open_the_circuit(tmp_path: Path) -> None:
    with running_gateway(garbage_config(tmp_path, failure_threshold=2)) as gateway:
        async with Client(gateway.url) as client:
            for _ in range(2):
                invalid = await client.call_tool("junk_invalid", {})
                # Not -32602 "Invalid request parameters", which blamed the client's arguments: the backend's fault.
                assert invalid.is_error
                message = text(invalid)
                assert message.startswith("backend 'junk' answered with an invalid result: ") and "content" in message
            assert backend(gateway, "junk")["circuit"]["state"] == "open"


async def test_results_over_the_size_cap_leave_the_circuit_closed(tmp_path: Path) -> None:
    with running_gateway(garbage_config(tmp_path, failure_threshold=2)) as gateway:
        async with Client(gateway.url) as client:
            for _ in range(4):
                big = await client.call_tool("junk_big", {})
                assert big.is_error and "larger than 100,000 bytes" in text(big)
            circuit = backend(gateway, "junk")["circuit"]
            assert circuit["state"] == "closed" and circuit["consecutive_failures"] == 0, circuit
            assert not (await client.call_tool("junk_ok", {})).is_error
