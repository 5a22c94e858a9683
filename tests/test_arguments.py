"""Argument checks against hostile schemas: no $ref leaves the schema, patterns and costly checks are bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import counting_http_server
from vmcp_opt import argument_messages, arguments
from vmcp_opt.arguments import ArgumentError, ArgumentValidator

pytestmark = pytest.mark.timeout(60)


def schema_of(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def check_in_thread(validator: ArgumentValidator, schema: dict[str, Any], args: dict[str, Any]) -> str:
    """The check's outcome ('ok' or the error); fails the test if it does not end within a generous bound."""
    outcome: list[str] = []

    def run() -> None:
        try:
            validator.check("tool", schema, args)
            outcome.append("ok")
        except ArgumentError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert outcome, "the check did not end"  # a backtracking engine takes minutes on these
    return outcome[0]


@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    with counting_http_server() as (base, hits):
        yield f"{base}", hits


def test_a_remote_ref_is_never_fetched(counting_server: tuple[str, list[str]]) -> None:
    base, hits = counting_server
    schema = schema_of(a={"$ref": f"{base}/integer.json"})
    assert check_in_thread(ArgumentValidator(), schema, {"a": "not an integer"}) == "ok"
    assert hits == []


def test_a_file_ref_is_never_read_and_its_contents_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"type": "integer", "description": "TOP-SECRET-VALUE"}', encoding="utf-8")
    schema = schema_of(a={"$ref": secret.as_uri()}, b={"type": "integer"})
    outcome = check_in_thread(ArgumentValidator(), schema, {"a": "x", "b": "y"})
    assert "field 'b'" in outcome and "TOP-SECRET-VALUE" not in outcome
    # An `$id` that puts the schema in a file:// directory does not make a relative $ref readable either.
    relative = {"$id": tmp_path.as_uri() + "/", **schema_of(a={"$ref": "secret.json"})}
    assert check_in_thread(ArgumentValidator(), relative, {"a": "x"}) == "ok"


def test_refs_inside_the_schema_and_to_the_meta_schemas_still_resolve() -> None:
    schema = {**schema_of(a={"$ref": "#/$defs/count"}), "$defs": {"count": {"type": "integer"}}}
    assert "field 'a'" in check_in_thread(ArgumentValidator(), schema, {"a": "x"})
    meta = schema_of(s={"$ref": "https://json-schema.org/draft/2020-12/schema"})
    assert "field 's.type'" in check_in_thread(ArgumentValidator(), meta, {"s": {"type": 5}})


def test_nested_quantifier_pattern_ends_at_once_and_names_the_field() -> None:
    schema = schema_of(a={"type": "string", "pattern": "^(a+)+$"})
    outcome = check_in_thread(ArgumentValidator(), schema, {"a": "a" * 30 + "!"})
    assert "field 'a'" in outcome and "does not match" in outcome


def test_a_pattern_only_a_backtracking_engine_takes_is_cut_at_the_deadline() -> None:
    schema = schema_of(a={"type": "string", "pattern": "^(?=a)(a|aa)+$"})  # lookahead: not RE2
    outcome = check_in_thread(ArgumentValidator(timeout=0.2), schema, {"a": "a" * 60 + "!"})
    assert "could not be checked within 0.2s" in outcome and "not sent" in outcome
    assert check_in_thread(ArgumentValidator(), schema, {"a": "aaaa"}) == "ok"


def test_an_re2_search_that_ends_past_the_deadline_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """One RE2 search is a single C call the deadline cannot stop: one that returns past it fails the check
    rather than letting the call through late."""
    engines = arguments._pattern_engines()

    class SlowSearch:
        def search(self, text: str) -> object:
            arguments._local.deadline = time.monotonic() - 1  # as if the search had run past the deadline
            return object()

    monkeypatch.setattr(engines, "compile_pattern", lambda pattern: SlowSearch())
    schema = schema_of(a={"type": "string", "pattern": "^slow-re2$"})
    outcome = check_in_thread(ArgumentValidator(timeout=0.5), schema, {"a": "x"})
    assert "could not be checked within 0.5s" in outcome


def test_pattern_properties_are_bounded_too() -> None:
    schema = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}}
    outcome = check_in_thread(ArgumentValidator(), schema, {"a" * 30 + "!": "x", "aaa": "y"})
    assert "field 'aaa'" in outcome


def test_unique_items_over_many_objects_is_linear() -> None:
    schema = schema_of(a={"type": "array", "uniqueItems": True})
    items: list[Any] = [{"k": i, "v": [i, {"x": 1}]} for i in range(20_000)]  # brute force: 2e8 comparisons
    patient = ArgumentValidator(timeout=25)  # the deadline is not what is tested here
    assert check_in_thread(patient, schema, {"a": items}) == "ok"
    assert "non-unique" in check_in_thread(patient, schema, {"a": [*items, {"v": [5, {"x": 1.0}], "k": 5}]})
    assert check_in_thread(patient, schema, {"a": [1, True]}) == "ok"  # true is not 1


def test_a_schema_that_cannot_be_applied_is_left_to_the_backend() -> None:
    assert check_in_thread(ArgumentValidator(), {"$ref": "#"}, {"a": 1}) == "ok"  # a $ref loop
    assert check_in_thread(ArgumentValidator(), schema_of(a={"$ref": "#/nowhere"}), {"a": 1}) == "ok"
    assert check_in_thread(ArgumentValidator(), schema_of(a={"type": 5}), {"a": 1}) == "ok"


def test_errors_never_echo_unbounded_input() -> None:
    huge = "x" * 1_000_000
    schema = schema_of(a={"type": "integer"})
    outcome = check_in_thread(ArgumentValidator(), schema, {"a": huge})
    assert len(outcome) < 600
    validator = ArgumentValidator()
    with pytest.raises(ArgumentError) as raised:
        validator.check("t" * 1_000_000, {"type": "object", "additionalProperties": False}, {huge: 1})
    assert len(str(raised.value)) < 600


def test_the_error_names_the_best_problem_and_lists_every_field_found_wrong() -> None:
    schema = {
        **schema_of(a={"type": "string"}, b={"type": "string"}, c={"type": "object", "required": ["d", "e"]}),
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    with pytest.raises(ArgumentError) as raised:
        ArgumentValidator().check("tool", schema, {"c": {}, "y": 1, "x": 2})
    assert str(raised.value).startswith("invalid arguments for tool 'tool': field '")  # one problem, as before
    assert sorted(raised.value.problems) == [
        "field 'a': required but missing",
        "field 'b': required but missing",
        "field 'c.d': required but missing",
        "field 'c.e': required but missing",
        "field 'x': not accepted by this tool",
        "field 'y': not accepted by this tool",
    ]


def test_validators_are_compiled_once_per_schema_content_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[object] = []
    original = arguments.compile_schema

    def counting(schema: Any) -> Any:
        compiled.append(schema)
        return original(schema)

    monkeypatch.setattr(arguments, "compile_schema", counting)
    validator = ArgumentValidator(cache_size=2)
    # `multipleOf`/`const`: beyond the plain subset (which is checked without compiling anything)
    for _ in range(3):
        validator.check("t", schema_of(a={"type": "integer", "multipleOf": 2}), {"a": 2})  # a new but equal object
    assert len(compiled) == 1
    for kind in ("string", "number", "boolean"):
        validator.check("t", schema_of(a={"type": kind, "const": 5}), {})
    assert len(validator._by_digest) == 2 and len(validator._by_identity) == 2


@pytest.mark.anyio
async def test_check_async_leaves_the_event_loop_free_while_a_costly_check_runs() -> None:
    schema = schema_of(a={"type": "string", "pattern": "^(?=a)(a|aa)+$"})
    validator = ArgumentValidator(timeout=1.0)
    ticks = 0
    outcome: list[str] = []

    async def costly() -> None:
        try:
            await validator.check_async("tool", schema, {"a": "a" * 60 + "!"})
        except ArgumentError as exc:
            outcome.append(str(exc))

    async with anyio.create_task_group() as group:
        group.start_soon(costly)
        with anyio.fail_after(30):
            while not outcome:
                await anyio.sleep(0.01)
                ticks += 1
    assert "could not be checked" in outcome[0]
    assert ticks > 1, "the event loop answered while the check ran"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ENGINES_SCRIPT = """
import sys, time
from vmcp_opt.arguments import ArgumentError, ArgumentValidator

validator = ArgumentValidator(timeout=0.05)
plain = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}}
validator.check("t", plain, {"name": "x"})
print("re2" in sys.modules, "regex" in sys.modules)
patterned = {"type": "object", "properties": {"name": {"pattern": "^[a-z]+$"}, "more": {"type": "string"}}}
validator.check("t", patterned, {"name": "abc", "more": "x"})  # imports the engines, not in the check's time
try:
    validator.check("t", patterned, {"name": "ABC", "more": "x"})
except ArgumentError as exc:
    print("refused", "does not match" in str(exc))
print("re2" in sys.modules, "regex" in sys.modules)
"""


def test_the_pattern_engines_load_at_the_first_pattern_outside_its_deadline() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ENGINES_SCRIPT], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["False False", "refused True", "True True"], out


def test_plain_schema_check_never_passes_what_jsonschema_refuses() -> None:
    """The plain schema's own check (`plain_schemas.plainly_valid`) may only say "valid" where jsonschema agrees."""
    from jsonschema import Draft202012Validator

    from vmcp_opt.plain_schemas import is_plain as _is_plain
    from vmcp_opt.plain_schemas import plainly_valid as _plainly_valid

    schemas: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"message": {"type": "string"}, "seconds": {"type": "number", "default": 1.0}},
            "required": ["message"],
        },
        {
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "flag": {"type": ["boolean", "null"]},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "inner": {"type": "object", "properties": {"x": {"type": "integer"}}, "additionalProperties": False},
            },
            "additionalProperties": {"type": "string"},
        },
        {"type": "object", "additionalProperties": False},
        {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": 1, "maximum": 50},
                "y": {"exclusiveMinimum": 0, "exclusiveMaximum": 1.5, "minLength": 2},
                "message": {"type": "string", "minLength": 1, "maxLength": 3},
                "tags": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                "n": {"minItems": 1, "maxItems": 0},
            },
        },
    ]
    values: list[Any] = [None, True, False, 0, 1, -3, 1.0, 1.5, "", "a", "b", "c", [], ["x"], [1], {}, {"x": 1}]
    values += [["x", "y"], ["x", "y", "z"], ["x", 1]]
    values += [50, 51, 1.25, float("nan"), float("inf"), "abc", "abcd", "日本語", 10**30]
    values += [{"x": 1.0}, {"x": True}, {"y": 1}]
    argument_sets: list[Any] = [
        {},
        {"message": "hi"},
        {"message": 3},
        {"seconds": 1},
        {"message": "m", "seconds": True},
    ]
    for key in ("message", "seconds", "n", "flag", "mode", "tags", "inner", "other"):
        argument_sets += [{key: value} for value in values]
        argument_sets += [{"message": "m", key: value} for value in values]
    for schema in schemas:
        assert _is_plain(schema, 0)
        reference = Draft202012Validator(schema)
        for args in argument_sets:
            if _plainly_valid(schema, args, 0):
                assert reference.is_valid(args), (schema, args)
        # and the checker as a whole still refuses what jsonschema refuses
        validator = ArgumentValidator()
        for args in argument_sets:
            try:
                validator.check("t", schema, args)
                ok = True
            except ArgumentError:
                ok = False
            assert ok == reference.is_valid(args), (schema, args)


def test_the_meta_tools_schemas_are_checked_without_jsonschema() -> None:
    """find_tool and call_tool are called more than any other tool: their schemas take the plain check (find_tool's
    `backends` has `maxItems`, which once sent its every call to jsonschema on the event loop)."""
    from vmcp_opt.optimizer.meta_tool_forms import CALL_TOOL, FIND_TOOL, MAX_BACKEND_FILTER
    from vmcp_opt.plain_schemas import is_plain as _is_plain
    from vmcp_opt.plain_schemas import plainly_valid as _plainly_valid

    for tool in (FIND_TOOL, CALL_TOOL):
        assert _is_plain(tool.input_schema, 0), tool.name
    assert _plainly_valid(FIND_TOOL.input_schema, {"query": "q", "backends": ["a"]}, 0)
    too_many = {"query": "q", "backends": [str(i) for i in range(MAX_BACKEND_FILTER + 1)]}
    assert not _plainly_valid(FIND_TOOL.input_schema, too_many, 0)
    with pytest.raises(ArgumentError):
        ArgumentValidator().check("find_tool", FIND_TOOL.input_schema, too_many)


def test_schemas_beyond_the_plain_subset_go_to_jsonschema() -> None:
    from vmcp_opt.plain_schemas import is_plain as _is_plain

    assert not _is_plain({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}, 0)
    assert not _is_plain({"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"}, 0)
    assert not _is_plain({"type": "object", "properties": {"a": {"multipleOf": 3}}}, 0)
    assert not _is_plain({"type": "object", "properties": {"a": {"minimum": "3"}}}, 0)
    assert not _is_plain({"type": "object", "properties": {"a": {"minLength": -1}}}, 0)
    assert not _is_plain({"type": "object", "properties": {"a": {"maxItems": 1.5}}}, 0)
    assert not _is_plain({"type": "array", "items": [{"type": "string"}]}, 0)
    assert not _is_plain({"type": "objekt"}, 0)
    assert not _is_plain({"enum": [1, 2]}, 0)


@pytest.mark.parametrize(
    ("schema", "args", "reason"),
    [
        (schema_of(a={"const": {"k": None}}), {"a": False}, """field 'a': {"k": null} was expected, not false"""),
        (
            schema_of(a={"not": {"type": "null"}}),
            {"a": None},
            """field 'a': null should not be valid under {"type": "null"}""",
        ),
        (
            schema_of(a={"items": False, "prefixItems": [{}]}),
            {"a": [1, None]},
            "field 'a': at most 1 items are accepted, got 2: [null] unexpected",
        ),
        (
            {**schema_of(a={}), "dependentRequired": {"a": ["b"]}},
            {"a": 1},
            "field 'b': required when 'a' is given but missing",
        ),
        (
            {**schema_of(a={}), "unevaluatedProperties": False},
            {"a": 1, "b": None, "it's": 2},
            """Unevaluated properties are not allowed ("b", "it's" were unexpected)""",
        ),
        (
            {"patternProperties": {"^x": {}}, "additionalProperties": False},
            {"x1": 1, "y": True},
            "field 'y': not accepted by this tool",
        ),
        (schema_of(a={"type": "integer"}), {"a": "\x1b[2J"}, """field 'a': "\\u001b[2J" is not of type "integer\""""),
    ],
)
def test_every_reason_spells_values_in_json(schema: dict[str, Any], args: dict[str, Any], reason: str) -> None:
    with pytest.raises(ArgumentError) as raised:
        ArgumentValidator().check("tool", schema, args)
    assert reason in str(raised.value)
    assert not any(word in str(raised.value) for word in ("None", "True", "False"))


def test_refused_fields_are_named_up_to_a_bound() -> None:
    with pytest.raises(ArgumentError) as raised:
        ArgumentValidator().check("tool", {"additionalProperties": False}, {f"k{i:03}": 1 for i in range(500)})
    assert len(raised.value.problems) == argument_messages.MAX_NAMED_FIELDS + 1
    assert (
        raised.value.problems[-1]
        == f"field '(arguments)': {500 - argument_messages.MAX_NAMED_FIELDS} more fields not accepted"
    )
