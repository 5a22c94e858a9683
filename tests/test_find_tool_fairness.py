"""find_tool's CPU shared fairly between callers (optimizer/search_slots.py, vmcp_opt/fair_slots.py), in the real
`vmcp serve` over the real demo backend with API keys, so each key is a caller of its own (callers from one
address are one caller by address).

One client sending many long find_tool queries at once used to take anyio's worker threads, which then queued
first come, first served for the query encoder: another caller's find_tool waited behind the whole flood.
Each search now waits on the event loop for a slot that goes to the waiting caller holding fewest, so the other
caller is answered while most of the flood is still waiting. Long queries of four intents each (five query
embeddings) make every search of the flood cost far more than what the other caller waits for.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, api_keys_file, bearer_client, demo_backend, running_gateway, write_config
from vmcp_opt.config.optimizer import FindToolSlotsConfig
from vmcp_opt.fair_slots import FairSlots
from vmcp_opt.optimizer.search_slots import SETTING, SearchSlots

pytestmark = pytest.mark.anyio

FLOOD = 24  # one caller's find_tool calls at once (fewer than anyio's 40 threads, as the old code needed)
DEADLINE = 120.0  # for a whole test: a hang fails here, no duration is asserted
CALLERS = {"flooder": ["users"], "other": ["users"]}
WORDS = ["ledger", "invoice", "archive", "parcel", "weather", "channel", "calendar", "reminder", "portfolio", "sensor"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def long_query(tag: str) -> str:
    """A query of four intents (five query embeddings, each of 256 tokens or near) that no other query repeats,
    so none is answered from the query cache. Under find_tool's 4,096 characters."""
    intents = []
    for intent in range(4):
        words = " ".join(f"{WORDS[(n + intent) % len(WORDS)]}{tag}x{intent}n{n}" for n in range(60))
        intents.append(f"please find the tool that saves {words}")
    return " and then ".join(intents)[:4000]


class Flood:
    """One caller's find_tool calls at once: their results as they come, and an event at the first."""

    def __init__(self, client: Client, tag: str) -> None:
        self.client = client
        self.tag = tag
        self.results: list[types.CallToolResult] = []
        self.first = anyio.Event()

    def start(self, group: anyio.abc.TaskGroup, count: int = FLOOD) -> None:
        for n in range(count):
            group.start_soon(self._one, n)

    async def _one(self, n: int) -> None:
        self.results.append(await self.client.call_tool("find_tool", {"query": long_query(f"{self.tag}{n}")}))
        self.first.set()


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def gateway_with(directory: Path, slots: dict[str, Any] | None) -> tuple[Path, dict[str, str]]:
    keys = api_keys_file(directory / "keys.json", CALLERS)
    optimizer: dict[str, Any] = {"enabled": True, "index_dir": str(directory / "indexes")}
    if slots is not None:
        optimizer["find_tool_slots"] = slots
    config = {
        "backends": [demo_backend("notes")],
        "optimizer": optimizer,
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
    }
    return write_config(directory, config), keys


@pytest.fixture(scope="module")
def default_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """The defaults: a slot per CPU in total, any of them to one caller, handed out fairly."""
    path, keys = gateway_with(tmp_path_factory.mktemp("fair-find-tool"), None)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


@pytest.fixture(scope="module")
def short_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """Two searches of one caller may wait; the third is refused."""
    path, keys = gateway_with(tmp_path_factory.mktemp("fair-find-tool-queue"), {"max_waiting_per_caller": 2})
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


async def vectors_ready(client: Client) -> None:
    """Until find_tool ranks with the model (the query encoder is what the flood contends for)."""
    for attempt in range(600):
        result = await client.call_tool("find_tool", {"query": f"save a note {attempt}"})
        assert not result.is_error, text(result)
        assert result.structured_content is not None
        if result.structured_content["ranking"] == "hybrid":
            return
        await anyio.sleep(0.05)
    raise AssertionError("find_tool still ranks by keywords only")


@pytest.mark.slow
async def test_another_caller_is_answered_while_one_caller_s_flood_still_waits(
    default_slots: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = default_slots
    with anyio.fail_after(DEADLINE):
        async with (
            bearer_client(running.url, keys["flooder"]) as flooder,
            bearer_client(running.url, keys["other"]) as other,
        ):
            await vectors_ready(other)
            flood = Flood(flooder, "f")
            async with anyio.create_task_group() as group:
                flood.start(group)
                await flood.first.wait()  # the flood is being served: the rest of it is in the gateway by now
                mine = await other.call_tool("find_tool", {"query": long_query("other")})
                outstanding = FLOOD - len(flood.results)
    answered = flood.results
    assert not mine.is_error, text(mine)
    assert all(not result.is_error for result in answered), [text(r) for r in answered if r.is_error]
    # Behind a first-come queue it would be answered with the last of the flood, 0-2 of it still running.
    assert outstanding >= FLOOD // 2, f"answered after {FLOOD - outstanding} of the flood's {FLOOD} calls"


@pytest.mark.slow
async def test_a_caller_past_its_waiting_bound_is_refused_with_the_setting_named_and_others_are_not(
    short_queue: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = short_queue
    with anyio.fail_after(DEADLINE):
        async with (
            bearer_client(running.url, keys["flooder"]) as flooder,
            bearer_client(running.url, keys["other"]) as other,
        ):
            await vectors_ready(other)
            flood = Flood(flooder, "w")
            async with anyio.create_task_group() as group:
                flood.start(group)
                await flood.first.wait()
                mine = await other.call_tool("find_tool", {"query": long_query("unaffected")})
    results = flood.results
    assert not mine.is_error, text(mine)
    refused = [text(result) for result in results if result.is_error]
    assert len(results) == FLOOD and refused, "no call of the flood was refused"
    assert all(SETTING in message and "too many find_tool requests" in message for message in refused), refused
    # One searched at once and two waited: at least those three were answered.
    assert FLOOD - len(refused) >= 3


@pytest.mark.slow
async def test_cancelled_waiting_searches_give_their_places_back(short_queue: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = short_queue
    with anyio.fail_after(DEADLINE):
        async with bearer_client(running.url, keys["flooder"]) as flooder:
            await vectors_ready(flooder)
            flood = Flood(flooder, "c")
            async with anyio.create_task_group() as group:
                flood.start(group)
                await flood.first.wait()  # one searching, two waiting, the rest refused: cancel those still out
                group.cancel_scope.cancel()
            # One at a time, so this caller holds nothing once it is answered (the cancelled search's thread
            # ended before its slot went to this one).
            alone = await flooder.call_tool("find_tool", {"query": long_query("alone")})
            assert not alone.is_error, text(alone)
            # A full round: one searching and two waiting, none refused, none left waiting for a leaked slot.
            again = Flood(flooder, "r")
            async with anyio.create_task_group() as group:
                again.start(group, 3)
    assert len(again.results) == 3 and [text(result) for result in again.results if result.is_error] == []


@pytest.mark.slow
def test_validate_refuses_more_per_caller_than_in_total(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"optimizer": {"enabled": True, "find_tool_slots": {"total": 2, "per_caller": 3}}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "optimizer.find_tool_slots: per_caller (3) is more than total (2)" in output, output
    assert "Traceback" not in output, output


# --- the slots themselves, on the event loop -------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_the_queue_and_nothing_of_its_caller_is_kept() -> None:
    slots = FairSlots(total=1, per_caller=1)
    await slots.acquire("alice")
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(slots.acquire, "bob")
            await anyio.wait_all_tasks_blocked()
            assert slots.waiting_of("bob") == 1
            scope.cancel()
    assert slots.waiting() == 0 and slots.held("bob") == 0
    slots.release("alice")
    assert slots.callers() == 0 and slots.free == 1


async def test_work_without_a_caller_is_bounded_only_in_total() -> None:
    slots = FairSlots(total=2, per_caller=1)
    await slots.acquire(None)
    await slots.acquire(None)  # a second at once: no per-caller cap for work without a caller
    assert slots.held(None) == 2 and slots.free == 0
    slots.release(None)
    slots.release(None)
    assert slots.callers() == 0


async def test_a_search_is_refused_only_when_its_caller_s_queue_is_full() -> None:
    searches = SearchSlots(FindToolSlotsConfig(total=1, per_caller=1, max_waiting_per_caller=1))
    assert searches.refusal("alice") is None
    async with anyio.create_task_group() as group:
        await searches.slots.acquire("alice")
        assert searches.refusal("alice") is None  # it would wait, and one may
        group.start_soon(searches.slots.acquire, "alice")
        await anyio.wait_all_tasks_blocked()
        refused = searches.refusal("alice")
        assert refused is not None and SETTING in refused
        assert searches.refusal("bob") is None and searches.refusal(None) is None  # others are not refused
        searches.slots.release("alice")  # the waiter has it now
    searches.slots.release("alice")
    assert searches.slots.callers() == 0


def test_the_total_defaults_to_the_usable_cpus_and_never_undercuts_per_caller() -> None:
    assert SearchSlots(FindToolSlotsConfig(), cpus=6).slots.total == 6
    assert SearchSlots(FindToolSlotsConfig(per_caller=4), cpus=2).slots.total == 4
    assert SearchSlots(FindToolSlotsConfig(total=3), cpus=8).slots.total == 3
    assert SearchSlots(FindToolSlotsConfig(), cpus=6).slots.per_caller == 6  # unset: the total
