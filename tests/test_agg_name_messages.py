"""Why a tool is dropped names the setting that made its name (pure: the catalogue's merge, no processes)."""

from __future__ import annotations

import mcp_types as types
import pytest

from vmcp_opt.aggregation import BackendSource, build_catalog
from vmcp_opt.backends.listing import BackendListing
from vmcp_opt.config import AggregationConfig


def source(name: str, *tools: str) -> BackendSource:
    listed = [types.Tool(name=t, input_schema={"type": "object"}) for t in tools]
    return BackendSource(name, BackendListing(tools=listed))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dropped:" in r.getMessage()]


def test_a_prefix_format_that_makes_names_invalid_is_named_as_the_cause(caplog: pytest.LogCaptureFixture) -> None:
    config = AggregationConfig(prefix_format="{backend}::{name}")
    assert build_catalog([source("pfx", "search")], config).tools == {}
    [warning] = warnings(caplog)
    assert "exposed as 'pfx::search' by aggregation.prefix_format '{backend}::{name}'" in warning
    assert "characters outside A-Z a-z 0-9 _ - ." in warning


def test_an_invalid_override_name_is_named_not_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    config = AggregationConfig.model_validate({"tools": {"ovr": {"overrides": {"search": {"name": "web search"}}}}})
    assert set(build_catalog([source("ovr", "search", "save")], config).tools) == {"ovr_save"}
    [warning] = warnings(caplog)
    assert "aggregation.tools.ovr.overrides.search.name is 'web search'" in warning and "choose another" in warning


def test_an_automatic_name_lost_to_an_override_names_that_override(caplog: pytest.LogCaptureFixture) -> None:
    config = AggregationConfig.model_validate({"tools": {"first": {"overrides": {"save": {"name": "second_find"}}}}})
    catalog = build_catalog([source("first", "save"), source("second", "find")], config)
    assert catalog.tools["second_find"].original_name == "save"
    [warning] = warnings(caplog)
    assert "(its tool 'save', renamed by aggregation.tools.first.overrides.save.name)" in warning
