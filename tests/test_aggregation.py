"""Aggregation: conflict strategies, filters and overrides, resource routing (pure, no processes)."""

from __future__ import annotations

import mcp_types as types
import pytest

from vmcp_opt.aggregation import BackendSource, build_catalog
from vmcp_opt.backends.listing import BackendListing
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


def test_manual_strategy_drops_an_unresolved_conflict_naming_both_backends_and_the_override(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sources = [source("a", "search"), source("b", "search", "save")]
    catalog = build_catalog(sources, AggregationConfig(conflict_resolution="manual"))
    assert {name: routed.backend for name, routed in catalog.tools.items()} == {"search": "a", "save": "b"}
    [warning] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert "backend b: tool 'search' dropped" in warning and "backend 'a' already exposes 'search'" in warning
    assert "aggregation.tools.b.overrides.search.name" in warning


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


def dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dropped:" in r.getMessage()]


@pytest.mark.parametrize("mode", ["prefix", "priority", "manual"])
def test_a_name_listed_twice_by_one_backend_drops_the_second_copy_only(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    listing = BackendListing(tools=[tool("dup", "first"), tool("dup", "second"), tool("other")])
    twice = f"twice_{mode}"  # warnings are given once per process: a name of its own per case
    sources = [BackendSource(twice, listing), source("fine", "search")]
    catalog = build_catalog(sources, AggregationConfig(conflict_resolution=mode))  # type: ignore[arg-type]
    served = {(r.backend, r.original_name, r.tool.description) for r in catalog.tools.values()}
    assert served == {(twice, "dup", "first"), (twice, "other", "other"), ("fine", "search", "search")}
    [warning] = dropped(caplog)
    assert f"backend {twice}: tool 'dup' dropped" in warning and "more than once" in warning


def test_prefixed_names_colliding_across_backends_keep_the_first_backend() -> None:
    # "a" + "b_c" and "a_b" + "c" both become "a_b_c".
    catalog = build_catalog([source("a", "b_c", "x"), source("a_b", "c", "y")], AggregationConfig())
    assert catalog.tools["a_b_c"].backend == "a"
    assert {"a_x", "a_b_y"} <= set(catalog.tools)


def test_tools_with_an_invalid_input_schema_or_an_absurd_name_are_dropped_and_the_rest_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    huge = "n" * 1_000_000
    tools = [
        types.Tool(name="string_schema", input_schema={"type": "string"}),
        types.Tool(name="bad_properties", input_schema={"type": "object", "properties": ["a"]}),
        types.Tool.model_construct(name="not_a_mapping", input_schema=["x"]),
        types.Tool(name=huge, input_schema={"type": "object"}),
        types.Tool(name="spaces and\x1b[31m", input_schema={"type": "object"}),
        types.Tool(name="no_type_at_all", input_schema={}),
        tool("fine"),
    ]
    catalog = build_catalog([BackendSource("odd", BackendListing(tools=tools)), source("b", "x")], AggregationConfig())
    assert set(catalog.tools) == {"odd_no_type_at_all", "odd_fine", "b_x"}
    warnings = dropped(caplog)
    assert len(warnings) == 5
    assert all(len(w) < 400 for w in warnings), "a dropped tool's name is shortened in its warning"
    assert not any("\x1b" in w for w in warnings), "control characters are escaped"


def test_an_exposed_name_over_128_characters_is_dropped_with_the_override_to_set() -> None:
    name = "t" * 125
    catalog = build_catalog([source("long", name, "short")], AggregationConfig())
    assert set(catalog.tools) == {"long_short"}
    config = AggregationConfig.model_validate({"tools": {"long": {"overrides": {name: {"name": "renamed"}}}}})
    assert "renamed" in build_catalog([source("long", name)], config).tools


def test_a_dropped_tool_is_warned_about_once_across_rebuilds(caplog: pytest.LogCaptureFixture) -> None:
    sources = [BackendSource("again", BackendListing(tools=[tool("same"), tool("same")]))]
    for _ in range(3):
        build_catalog(sources, AggregationConfig())
    assert len(dropped(caplog)) == 1
