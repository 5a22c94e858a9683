"""Why a tool is dropped names the setting that made its name (pure: the catalogue's merge, no processes)."""

from __future__ import annotations

import mcp_types as types
import pytest
from pydantic import ValidationError

from vmcp_opt.aggregation import BackendSource, build_catalog
from vmcp_opt.backends.listing import BackendListing
from vmcp_opt.config import AggregationConfig


def source(name: str, *tools: str) -> BackendSource:
    listed = [types.Tool(name=t, input_schema={"type": "object"}) for t in tools]
    return BackendSource(name, BackendListing(tools=listed))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dropped:" in r.getMessage()]


def test_a_prefix_format_that_makes_names_invalid_is_refused_with_the_config() -> None:
    with pytest.raises(ValidationError, match="makes names like 'backend::tool', which no client may call"):
        AggregationConfig(prefix_format="{backend}::{name}")


def test_a_name_the_prefix_makes_too_long_names_the_prefix_format(caplog: pytest.LogCaptureFixture) -> None:
    long_name = "s" * 126  # fine as the backend lists it; 130 characters once prefixed
    assert build_catalog([source("pfx", long_name)], AggregationConfig()).tools == {}
    [warning] = warnings(caplog)
    assert "by aggregation.prefix_format '{backend}_{name}'" in warning
    assert "130 characters long (at most 128)" in warning


@pytest.mark.parametrize("name", ["web search", ""])
def test_an_override_name_no_client_may_call_is_refused_with_the_config(name: str) -> None:
    with pytest.raises(ValidationError, match="a tool name is 1 to 128 characters"):
        AggregationConfig.model_validate({"tools": {"ovr": {"overrides": {"search": {"name": name}}}}})


def test_an_automatic_name_lost_to_an_override_names_that_override(caplog: pytest.LogCaptureFixture) -> None:
    config = AggregationConfig.model_validate({"tools": {"first": {"overrides": {"save": {"name": "second_find"}}}}})
    catalog = build_catalog([source("first", "save"), source("second", "find")], config)
    assert catalog.tools["second_find"].original_name == "save"
    [warning] = warnings(caplog)
    assert "(its tool 'save', renamed by aggregation.tools.first.overrides.save.name)" in warning
