"""Aggregation: conflict strategies, filters and overrides, resource routing (pure, no processes)."""

from __future__ import annotations

import mcp_types as types
import pytest

from vmcp_opt.aggregation import BackendSource, ConflictError, build_catalog
from vmcp_opt.backends.connection import BackendListing
from vmcp_opt.config import AggregationConfig


def tool(name: str, description: str = "") -> types.Tool:
    return types.Tool(name=name, description=description or name, input_schema={"type": "object"})


def source(name: str, *tools: str, resources: tuple[str, ...] = (), templates: tuple[str, ...] = ()) -> BackendSource:
    return BackendSource(
        name,
        BackendListing(
            tools=[tool(t) for t in tools],
            resources=[types.Resource(name=uri, uri=uri) for uri in resources],
            resource_templates=[types.ResourceTemplate(name=t, uri_template=t) for t in templates],
        ),
    )


def test_prefix_strategy_names_every_tool_by_its_backend() -> None:
    catalog = build_catalog([source("a", "search", "save"), source("b", "search")], AggregationConfig())
    assert set(catalog.tools) == {"a_search", "a_save", "b_search"}
    assert catalog.tools["b_search"].backend == "b"
    assert catalog.tools["b_search"].original_name == "search"


def test_prefix_format_is_configurable() -> None:
    catalog = build_catalog([source("a", "search")], AggregationConfig(prefix_format="{backend}.{name}"))
    assert list(catalog.tools) == ["a.search"]


def test_priority_strategy_drops_lower_backend() -> None:
    config = AggregationConfig(conflict_resolution="priority", priority=["b", "a"])
    catalog = build_catalog([source("a", "search", "only_a"), source("b", "search")], config)
    assert set(catalog.tools) == {"search", "only_a"}
    assert catalog.tools["search"].backend == "b"


def test_manual_strategy_fails_on_unresolved_conflict_naming_both_backends() -> None:
    with pytest.raises(ConflictError, match="'a' and 'b'"):
        build_catalog([source("a", "search"), source("b", "search")], AggregationConfig(conflict_resolution="manual"))


def test_manual_strategy_with_overrides_resolves() -> None:
    config = AggregationConfig.model_validate(
        {
            "conflict_resolution": "manual",
            "tools": {"b": {"overrides": {"search": {"name": "b_search", "description": "Search B's docs"}}}},
        }
    )
    catalog = build_catalog([source("a", "search"), source("b", "search")], config)
    assert catalog.tools["search"].backend == "a"
    assert catalog.tools["b_search"].original_name == "search"
    assert catalog.tools["b_search"].tool.description == "Search B's docs"


def test_include_exclude_globs_filter_tools() -> None:
    config = AggregationConfig.model_validate({"tools": {"a": {"include": ["git_*"], "exclude": ["*_commit"]}}})
    catalog = build_catalog([source("a", "git_status", "git_commit", "other")], config)
    assert set(catalog.tools) == {"a_git_status"}


def test_override_name_is_kept_verbatim_under_prefix() -> None:
    config = AggregationConfig.model_validate({"tools": {"a": {"overrides": {"search": {"name": "docs_search"}}}}})
    catalog = build_catalog([source("a", "search", "save")], config)
    assert set(catalog.tools) == {"docs_search", "a_save"}


def test_resources_and_templates_route_to_their_backend() -> None:
    catalog = build_catalog(
        [
            source("a", resources=("notes://all",), templates=("notes://note/{title}",)),
            source("b", resources=("file:///x",)),
        ],
        AggregationConfig(),
    )
    assert catalog.route_resource("notes://all") == "a"
    assert catalog.route_resource("notes://note/hello") == "a"
    assert catalog.route_resource("file:///x") == "b"
    assert catalog.route_resource("nope://1") is None
