"""One caller cannot steer find_tool for every other: what it teaches the co-usage graph is one vote a day.

A real `vmcp serve` with API keys, over real backends (the time server and four demo notes servers), driven by
real SDK clients, one per key. `mallory` scripts 20 tasks that each call notes_save_note and then
time_get_current_time (and 14 other tools: a task holds 16 distinct tools, so the 17th call starts the next
task however fast she calls, with no waiting for `usage_window`). `bob` only searches. Five honest callers
each do one task with another pair. The history is read from `index_dir/usage.json` after a graceful stop.

Why 20 scripted tasks and not thousands: counted task by task, 20 would read 20 in the history, not 1, and make
the pair 20/22 likely instead of 1/3; nothing in a caller's ledger grows with repeats of the same tools, so more
repeats check nothing more, and each costs 32 requests (the SDK lists tools before calling one not listed).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import api_keys_file, bearer_client, demo_backend, running_gateway, stop_process, write_config
from tests.test_usage_gateway import call_ok, find_answer, wait_for_catalogue, wait_for_vectors

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# mallory's pair: "save a note" ranks notes_save_note first and the time tools nowhere in three results.
SEED, PUSHED = "notes_save_note", "time_get_current_time"
# The honest callers' pair, which mallory never touches: a time conversion, then a note search.
HONEST_QUERY, HONEST_SEED, HONEST_COMPANION = (
    "convert a time to another time zone",
    "time_convert_time",
    "notes_search_notes",
)
HONEST = [f"honest{n}" for n in range(1, 6)]
SCRIPTED_TASKS = 20
SECOND_NOTES = ("memo", "jot", "scrap")


def fillers() -> list[tuple[str, dict[str, Any]]]:
    """14 tools besides mallory's pair, none the honest callers use: with the pair, the 16 of a full task."""
    calls: list[tuple[str, dict[str, Any]]] = [
        ("notes_whoami", {}),
        ("notes_slow_echo", {"message": "m", "seconds": 0}),
    ]
    for backend in SECOND_NOTES:
        calls += [
            (f"{backend}_whoami", {}),
            (f"{backend}_slow_echo", {"message": "m", "seconds": 0}),
            (f"{backend}_save_note", {"title": "t", "text": "x"}),
            (f"{backend}_search_notes", {"query": "x"}),
        ]
    return calls


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def names(answer: list[dict[str, Any]]) -> list[str]:
    return [tool["name"] for tool in answer]


@dataclass
class Learned:
    bob_before: list[dict[str, Any]]  # "save a note", nothing learned yet
    after_first: list[dict[str, Any]]  # ... after mallory's first scripted task
    after_all: list[dict[str, Any]]  # ... after all of them
    honest_before: list[dict[str, Any]]  # the honest query, before the honest callers
    honest_after: list[dict[str, Any]]  # ... after each did its task once
    usage: dict[str, Any]
    raw_file: str
    keys: dict[str, str]


@pytest.fixture(scope="module")
async def learned(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Learned]:
    directory = tmp_path_factory.mktemp("usage-callers")
    index_dir = directory / "indexes"
    keys = api_keys_file(directory / "keys.json", {name: ["users"] for name in ("mallory", "bob", *HONEST)})
    config = {
        "backends": [
            {"name": "time", "command": "python", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
            demo_backend("notes"),
            *(demo_backend(name) for name in SECOND_NOTES),
        ],
        # Only the way out writes the file: what bob sees is what the gateway ranks with.
        "optimizer": {"enabled": True, "index_dir": str(index_dir), "usage_sync_interval": 3600},
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
    }
    with running_gateway(write_config(directory, config)) as gateway:
        async with bearer_client(gateway.url, keys["bob"]) as bob:
            await wait_for_vectors(bob)
            await wait_for_catalogue(bob)
            bob_before = await find_answer(bob, limit=25)
            honest_before = await find_answer(bob, HONEST_QUERY, limit=3)
            async with bearer_client(gateway.url, keys["mallory"]) as mallory:
                task = [(SEED, {"title": "t", "text": "x"}), (PUSHED, {"timezone": "UTC"}), *fillers()]
                after_first: list[dict[str, Any]] = []
                for number in range(SCRIPTED_TASKS):
                    for name, arguments in task:
                        await call_ok(mallory, name, arguments)
                    if number == 0:
                        after_first = await find_answer(bob, limit=25)
            after_all = await find_answer(bob, limit=25)
            for name in HONEST:
                async with bearer_client(gateway.url, keys[name]) as honest:
                    await call_ok(
                        honest,
                        HONEST_SEED,
                        {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
                    )
                    await call_ok(honest, HONEST_COMPANION, {"query": "meeting"})
            honest_after = await find_answer(bob, HONEST_QUERY, limit=3)
        stop_process(gateway.proc)
        raw = (index_dir / "usage.json").read_text(encoding="utf-8")
        yield Learned(bob_before, after_first, after_all, honest_before, honest_after, json.loads(raw), raw, keys)


async def test_scripted_tasks_of_one_caller_count_as_one_in_the_history(learned: Learned) -> None:
    tasks, together = learned.usage["tasks"], learned.usage["together"]
    assert tasks[SEED] == 1 and tasks[PUSHED] == 1
    assert together[SEED][PUSHED] == 1 and together[PUSHED][SEED] == 1
    assert all(tasks[name] == 1 for name, _ in fillers())


async def test_scripted_tasks_move_another_callers_ranking_no_more_than_the_first_did(learned: Learned) -> None:
    before, first, after = (names(answer) for answer in (learned.bob_before, learned.after_first, learned.after_all))
    assert before[0] == SEED and PUSHED in before  # limit 25: where the request alone ranks it
    assert first.index(PUSHED) < before.index(PUSHED)  # her first task is learned from, as anyone's
    assert after == first  # the SCRIPTED_TASKS - 1 more move nothing in bob's answer


async def test_five_callers_doing_a_task_once_each_raise_its_companion_as_before(learned: Learned) -> None:
    assert names(learned.honest_before)[0] == HONEST_SEED
    assert HONEST_COMPANION not in names(learned.honest_before)
    after = {tool["name"]: tool for tool in learned.honest_after}
    assert names(learned.honest_after)[:2] == [HONEST_SEED, HONEST_COMPANION]  # raised by co-usage alone
    assert after[HONEST_COMPANION].get("used_with") == HONEST_SEED
    assert learned.usage["tasks"][HONEST_SEED] == len(HONEST)
    assert learned.usage["together"][HONEST_SEED] == {HONEST_COMPANION: len(HONEST)}


async def test_the_history_keeps_no_caller_identity(learned: Learned) -> None:
    assert set(learned.usage) == {"version", "tasks", "together"}
    for name, key in learned.keys.items():
        assert name not in learned.raw_file and key not in learned.raw_file
