"""Which tools issue a value another tool requires (optimizer/prerequisites.py): names and schemas only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.prerequisites import (
    MAX_ISSUERS,
    Prerequisite,
    find_prerequisites,
    handle_target,
    issued_object,
    raised,
    required_arguments,
)


def _schema(*names: str, required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {name: {"type": "string"} for name in names}}
    if required is not None:
        schema["required"] = required
    return schema


def _tool(name: str, *arguments: str, backend: str = "b", required: list[str] | None = None) -> ToolRecord:
    return ToolRecord(
        f"{backend}_{name}", backend, input_schema=_schema(*arguments, required=required), original_name=name
    )


@pytest.mark.parametrize(
    ("argument", "target"),
    [
        ("token", ("token",)),
        ("access_token", ("access", "token")),
        ("channel_id", ("channel",)),
        ("channelIds", ("channel",)),
        ("sessionId", ("session",)),
        ("api_key", ("api", "key")),
        ("id", None),  # says nothing about what issues it
        ("country", None),  # the user knows their country
        ("page", None),
        ("query", None),
    ],
)
def test_only_arguments_naming_an_issued_value_have_a_target(argument: str, target: tuple[str, ...] | None) -> None:
    assert handle_target(argument) == target


@pytest.mark.parametrize(
    ("name", "obj"),
    [
        ("GetUserToken", ("user", "token")),
        ("slack_list_channels", ("channel",)),
        ("create_session", ("session",)),
        ("get_user_id_by_username", ("user",)),
        ("get_user_by_id", ("user",)),  # what follows "by" is its input
        ("delete_alarm", None),  # no issuing verb
        ("list", None),  # a verb with no object
    ],
)
def test_a_tools_name_says_what_it_issues(name: str, obj: tuple[str, ...] | None) -> None:
    assert issued_object(name) == obj


def test_required_arguments_are_the_schemas_list_or_every_property() -> None:
    assert required_arguments(_schema("token", "time", required=["token"])) == ["token"]
    assert required_arguments(_schema("token", "time")) == ["token", "time"]
    assert required_arguments(_schema("token", required=["token", "ghost"])) == ["token"]
    assert required_arguments({}) == []


def test_a_token_requiring_tool_needs_the_tool_that_issues_tokens() -> None:
    records = [
        _tool("GetUserToken", "username", "password"),
        _tool("DeleteAlarm", "token", "timer_id"),
        _tool("AddAlarm", "token", "time"),
        _tool("GetToday"),
    ]
    found = find_prerequisites(records)
    assert found == {1: (Prerequisite(0, "token"),), 2: (Prerequisite(0, "token"),)}


def test_issuers_come_from_the_same_backend_and_do_not_take_the_value() -> None:
    records = [
        _tool("get_token", backend="other"),  # another server's tokens are no use here
        _tool("get_token_info", "token"),  # object is "token info", and it reads a token
        _tool("read_token", "token"),  # takes the very value: it reads, not issues
        _tool("send_message", "token", "text"),
    ]
    assert find_prerequisites(records) == {}


def test_an_optional_argument_needs_nothing() -> None:
    records = [_tool("list_channels"), _tool("post_message", "text", "channel_id", required=["text"])]
    assert find_prerequisites(records) == {}
    required = [_tool("list_channels"), _tool("post_message", "text", "channel_id", required=["channel_id"])]
    assert find_prerequisites(required) == {1: (Prerequisite(0, "channel_id"),)}


def test_too_many_issuers_of_one_value_raise_none() -> None:
    issuers = [_tool(name) for name in ("get_user", "search_users", "find_user", "list_users")[: MAX_ISSUERS + 1]]
    needs = find_prerequisites([*issuers, _tool("delete_user", "user_id")])[MAX_ISSUERS + 1]
    assert raised(needs, None) == []
    hidden_one = np.array([True] * MAX_ISSUERS + [False, True])
    assert raised(needs, hidden_one) == [Prerequisite(i, "user_id") for i in range(MAX_ISSUERS)]
    found = find_prerequisites([*issuers[:MAX_ISSUERS], _tool("delete_user", "user_id")])
    assert found == {MAX_ISSUERS: tuple(Prerequisite(i, "user_id") for i in range(MAX_ISSUERS))}
