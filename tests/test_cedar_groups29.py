"""A caller with thousands of groups (enterprise IdPs put them all in the token) against a Cedar policy.

Cedar parses every entity it is sent in every batch, and each group was sent as an entity and a parent: 500
decisions cost 5 s at 2,000 groups. Only the groups the policies can test are sent now (those named as
`Group::"…"` and the literals of `principal.groups.contains…`); these tests check that the decisions stay
exactly those every group would give, through a real gateway with API-key callers and the real engine, and
that a policy reading `principal.groups` as a whole denies a caller with more groups than it is evaluated with
rather than judging a cut list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, bearer_client, demo_backend, policed_config, running_gateway
from vmcp_opt.auth import cedar
from vmcp_opt.auth.caller import Caller, Identification
from vmcp_opt.routing.policy import Target

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MANY = 2000
POLICY = """\
permit(principal in Group::"ops", action, resource);
forbid(principal in Group::"blocked", action, resource == Tool::"notes_save_note");
"""
WHOLE_POLICY = "permit(principal, action, resource) when { principal.groups.contains(resource.backend) };\n"


def many_groups(count: int, *named: str) -> list[str]:
    """`count` groups: `named` and near misses of the policy's names (case, spacing, prefixes) for the rest."""
    near = ["Ops", "ops ", " ops", "OPS", "blocked2", "Blocked", "ops/blocked", 'ops"', "notes-admins"]
    fill = near + [f"8c1f{i:04x}-2b7e-4d0a-9f3c-{i:012x}" for i in range(count)]
    return [*named, *fill[: count - len(named)]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    callers = {
        "opsy": many_groups(MANY, "ops"),
        "barred": many_groups(MANY, "blocked", "ops"),
        "stranger": many_groups(MANY),
    }
    config = {"backends": [demo_backend("notes")], "optimizer": {"enabled": False}}
    path, keys = policed_config(tmp_path_factory.mktemp("groups29"), callers, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


async def listed_and_saved(gateway: Gateway, key: str) -> tuple[set[str], str]:
    """The tools `key`'s caller is listed, and how its call of notes_save_note went."""
    async with bearer_client(gateway.url, key) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        try:
            result = await client.call_tool("notes_save_note", {"title": "g", "text": "groups"})
        except MCPError as refused:
            return listed, refused.error.message
        return listed, "error" if result.is_error else "saved"


async def test_among_two_thousand_groups_ops_and_blocked_alone_decide_what_is_listed_and_called(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    listed, saved = await listed_and_saved(running, keys["opsy"])
    assert "notes_save_note" in listed and len(listed) > 1  # no meta-tools: the optimizer is off
    assert saved == "saved"

    barred, saved = await listed_and_saved(running, keys["barred"])
    assert barred == listed - {"notes_save_note"}
    assert saved == "Unknown tool: 'notes_save_note'"

    stranger, saved = await listed_and_saved(running, keys["stranger"])
    assert stranger == set()  # near misses of "ops" are not "ops"
    assert saved == "Unknown tool: 'notes_save_note'"


async def test_a_policy_reading_the_groups_whole_denies_a_caller_with_more_than_it_evaluates(
    tmp_path: Path,
) -> None:
    callers = {
        "within": many_groups(cedar.MAX_WHOLE_GROUPS, "notes"),
        "beyond": many_groups(cedar.MAX_WHOLE_GROUPS + 1, "notes"),
    }
    config = {"backends": [demo_backend("notes")], "optimizer": {"enabled": False}}
    path, keys = policed_config(tmp_path, callers, WHOLE_POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        listed, saved = await listed_and_saved(running, keys["within"])
        assert "notes_save_note" in listed and saved == "saved"
        listed, saved = await listed_and_saved(running, keys["beyond"])
        assert listed == set() and saved == "Unknown tool: 'notes_save_note'"
        listed, saved = await listed_and_saved(running, keys["beyond"])  # logged once, denied again
        assert listed == set()
    log = running.output()
    assert log.count(f"a caller with {cedar.MAX_WHOLE_GROUPS + 1} groups is denied") == 1
    assert "8c1f" not in log  # the groups themselves are not logged


# --- in this process, with the real engine observed ---------------------------------------------------


def caller(groups: list[str] | set[str], subject: str = "u") -> Caller:
    return Caller("c", Identification.API_KEY, "2025-11-25", subject=subject, groups=frozenset(groups))


def test_the_engine_is_sent_only_the_groups_the_policies_name(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[list[dict[str, Any]]] = []
    engine = cedarpy.is_authorized_batch

    def observed(requests: list[dict[str, Any]], policies: Any, entities: str, *args: Any) -> Any:
        sent.append(json.loads(entities))
        return engine(requests, policies, entities, *args)

    monkeypatch.setattr(cedarpy, "is_authorized_batch", observed)
    policy = cedar.CedarPolicy(POLICY + 'permit(principal, action, resource) when { principal.groups.contains("x") };')
    targets = [Target("tool", f"t{i}", "notes", op) for i in range(300) for op in ("list", "use")]
    decisions = policy.decide_all(caller(many_groups(MANY, "ops", "x")), targets)
    assert all(d.allowed for d in decisions) and len(sent) > 1
    for entities in sent:
        groups = sorted(e["uid"]["id"] for e in entities if e["uid"]["type"] == "Group")
        [user] = [e for e in entities if e["uid"]["type"] == "User"]
        assert groups == ["ops", "x"]
        assert user["attrs"]["groups"] == ["ops", "x"]
        assert [p["id"] for p in user["parents"]] == ["ops", "x"]


# Policies reaching groups every way Cedar allows: by entity, by literal set tests, and as a whole set.
POLICIES = [
    POLICY,
    'permit(principal, action, resource) when { principal.groups.contains("ops") };\n'
    'forbid(principal, action, resource) when { principal.groups.containsAny(["blocked", "b2"]) };',
    'permit(principal, action, resource) when { principal["groups"].containsAll(["ops", "g3"]) };',
    "permit(principal, action, resource) unless { principal.groups.isEmpty() };",
    "permit(principal, action, resource) when { resource is Tool && principal.groups.contains(resource.name) };",
    'permit(principal is User in Group::"g1", action, resource);\n'
    'permit(principal, action, resource) when { principal in [Group::"g2", Group :: "ops"] };\n'
    'forbid(principal, action, resource) unless { principal has groups && !principal.groups.contains("b\\u{32}") };',
]
NAMES = ["ops", "blocked", "b2", "g1", "g2", "g3", "t1", "t2", "noise", "Ops"]


@pytest.mark.parametrize(
    "text", POLICIES, ids=["by-entity", "literal-tests", "contains-all", "is-empty", "non-literal", "mixed"]
)
def test_the_groups_sent_decide_as_every_group_would(text: str) -> None:
    narrowed = cedar.CedarPolicy(text, cache_size=0)
    every_group = cedar.CedarPolicy(text, cache_size=0)
    every_group.group_use = cedar.GroupUse()  # what the gateway sent before: all of the caller's groups
    targets = [Target("tool", f"t{i}", "notes", op) for i in range(3) for op in ("list", "use")]
    for size in range(len(NAMES) + 1):
        for start in range(len(NAMES)):
            groups = {NAMES[(start + i) % len(NAMES)] for i in range(size)}
            assert narrowed.decide_all(caller(groups), targets) == every_group.decide_all(caller(groups), targets)
