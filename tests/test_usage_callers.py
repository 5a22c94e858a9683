"""One caller, one vote a day (optimizer/usage_ledger.py): what any one caller teaches the co-usage graph is bounded,
whatever it scripts, while distinct callers count as before. The recorder on a fake clock; the real gateway is
in test_usage_callers_gateway.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmcp_opt.optimizer import usage
from vmcp_opt.optimizer.usage import UsageGraph, UsageRecorder
from vmcp_opt.optimizer.usage_ledger import CALLER_BUDGET, CALLER_PERIOD, CallerLedger

WINDOW = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def recorder() -> tuple[UsageRecorder, Clock]:
    clock = Clock()
    return UsageRecorder(UsageGraph(), WINDOW, clock=clock), clock


def task(rec: UsageRecorder, clock: Clock, client: object, *tools: str) -> None:
    """One task of `client`: its tools back to back, then a pause that ends the task."""
    for tool in tools:
        rec.tool_used(client, tool)
    clock.now += WINDOW + 1


def test_one_callers_200_tasks_teach_what_its_first_did() -> None:
    rec, clock = recorder()
    task(rec, clock, ("subject", "mallory"), "search_flights", "convert_currency")
    after_one = rec.graph.to_json()
    for _ in range(199):
        task(rec, clock, ("subject", "mallory"), "search_flights", "convert_currency")
    assert rec.graph.to_json() == after_one
    assert rec.graph.companions("search_flights") == {"convert_currency": pytest.approx(1 / 3)}


def test_distinct_callers_each_count_as_before() -> None:
    rec, clock = recorder()
    for number in range(5):
        task(rec, clock, ("subject", f"user{number}"), "search_flights", "convert_currency")
    imported = UsageGraph()
    for _ in range(5):
        imported.record_task(["search_flights", "convert_currency"])
    assert rec.graph.to_json() == imported.to_json()
    assert rec.graph.companions("search_flights") == {"convert_currency": pytest.approx(5 / 7)}


def test_a_callers_next_period_is_a_new_vote() -> None:
    rec, clock = recorder()
    task(rec, clock, "caller", "a", "b")
    clock.now += CALLER_PERIOD - 2 * (WINDOW + 1)  # still the same day
    task(rec, clock, "caller", "a", "b")
    assert rec.graph.to_json()["tasks"] == {"a": 1, "b": 1}
    clock.now += WINDOW + 1  # a day after the first call
    task(rec, clock, "caller", "a", "b")
    assert rec.graph.to_json()["together"]["a"] == {"b": 2}


def test_a_new_pair_of_tools_already_counted_today_counts_the_pair_only() -> None:
    rec, clock = recorder()
    task(rec, clock, "caller", "a", "b")
    task(rec, clock, "caller", "a", "c")
    data = rec.graph.to_json()
    assert data["tasks"] == {"a": 1, "b": 1, "c": 1}
    assert data["together"]["a"] == {"b": 1, "c": 1}


def test_a_pair_taught_alone_is_saved(tmp_path: Path) -> None:
    """Nothing new but a pair (both its tools counted earlier today, and saved) is still something to write."""
    rec, clock = recorder()
    path = tmp_path / "usage.json"
    task(rec, clock, "caller", "a", "b")
    task(rec, clock, "caller", "c")
    rec.graph.save(path)
    assert not rec.graph.has_new
    task(rec, clock, "caller", "a", "c")
    assert rec.graph.has_new
    rec.graph.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["tasks"] == {"a": 1, "b": 1, "c": 1}
    assert saved["together"]["a"] == {"b": 1, "c": 1}


def test_a_clear_lets_every_caller_teach_again_at_once() -> None:
    rec, clock = recorder()
    task(rec, clock, "caller", "a", "b")
    rec.graph.forget()  # vmcp index usage --clear, noticed
    task(rec, clock, "caller", "a", "b")
    assert rec.graph.to_json()["tasks"] == {"a": 1, "b": 1}


def test_a_caller_past_its_budget_teaches_nothing_more_today_and_others_still_do() -> None:
    rec, clock = recorder()
    tools = [f"t{number}" for number in range(16)]  # 16 tools and 120 pairs a task
    number = 0
    while rec.graph.stats()["tool_uses"] + rec.graph.stats()["pairs"] < CALLER_BUDGET:
        task(rec, clock, "greedy", *(f"{tool}-{number}" for tool in tools))
        number += 1
    learned = rec.graph.to_json()
    assert sum(learned["tasks"].values()) + sum(map(len, learned["together"].values())) // 2 == CALLER_BUDGET
    task(rec, clock, "greedy", "x", "y")
    assert rec.graph.to_json() == learned
    task(rec, clock, "someone else", "x", "y")
    assert rec.graph.companions("x") == {"y": pytest.approx(1 / 3)}


def test_a_pair_is_taught_only_with_both_its_tools_so_together_never_exceeds_tasks() -> None:
    ledger = CallerLedger(budget=3)
    assert ledger.teach("caller", 0.0, 0, "a", []) == (True, [])
    assert ledger.teach("caller", 0.0, 0, "b", ["a"]) == (True, ["a"])
    assert ledger.teach("caller", 0.0, 0, "c", ["a", "b"]) == (False, [])  # budget spent: c not counted, nor its pairs
    assert ledger.teach("caller", 0.0, 0, "a", ["c"]) == (False, [])  # a counted today, c not: no pair


def test_the_ledger_keeps_at_most_max_callers_and_drops_ended_periods_first() -> None:
    ledger = CallerLedger(period=100.0, max_callers=3)
    for number in range(5):
        ledger.teach(f"caller-{number}", 0.0, 0, "a", [])
    assert len(ledger) == 3
    assert ledger.teach("caller-0", 1.0, 0, "a", []) == (True, [])  # forgotten: it counts again
    assert ledger.teach("caller-4", 2.0, 0, "a", []) == (False, [])  # remembered
    ledger.teach("late", 150.0, 0, "a", [])  # every other period has ended by now
    assert len(ledger) == 1


def test_the_ledger_knows_callers_by_a_keyed_digest_only() -> None:
    ledger = CallerLedger()
    ledger.teach(("subject", "alice@example.org"), 0.0, 0, "a", [])
    kept = repr(ledger.__dict__)
    assert "alice" not in kept
    # Another gateway (another key) would not recognise the digest either.
    assert CallerLedger()._digest(("subject", "alice")) != ledger._digest(("subject", "alice"))


@pytest.mark.parametrize(
    ("first", "second", "votes"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", 1),  # one /64: one host rotating its addresses
        ("2001:db8:1:2::1", "2001:db8:1:3::1", 2),
        ("192.0.2.1", "192.0.2.2", 2),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.2", 2),  # IPv4 seen through IPv6: each its own
    ],
)
def test_addresses_vote_by_host_and_ipv6_by_its_64(first: str, second: str, votes: int) -> None:
    rec, clock = recorder()
    task(rec, clock, ("address", first), "a", "b")
    task(rec, clock, ("address", second), "a", "b")
    assert rec.graph.to_json()["together"]["a"] == {"b": votes}


def test_a_full_ledger_stays_within_its_memory_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "MAX_LIVE_CLIENTS", 50)
    rec, clock = recorder()
    for number in range(200):
        task(rec, clock, ("subject", f"user{number}"), "a", "b")
    assert len(rec.ledger) == 50
