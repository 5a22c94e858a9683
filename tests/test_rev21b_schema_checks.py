"""Bounded schema checks (vmcp_opt/arguments.py, vmcp_opt/plain_schemas.py), in process: the functions are pure
apart from their caches, and jsonschema runs for real (no stand-ins)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import pytest

from vmcp_opt import arguments
from vmcp_opt.arguments import OUTPUT_CHECK_NODES, ArgumentError, ArgumentValidator
from vmcp_opt.plain_schemas import is_plain, plainly_valid

# `multipleOf` is beyond the plain subset: these schemas are compiled by jsonschema and cached.
ROWS = {"type": "object", "properties": {"rows": {"type": "array", "items": {"type": "integer", "multipleOf": 1}}}}


def _input(i: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"a{i}": {"type": "integer", "multipleOf": 2}}}


def _output(i: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"r{i}": {"type": "integer", "multipleOf": 3}}, "title": f"o{i}"}


def test_output_schemas_do_not_evict_the_input_schemas_validators(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[Any] = []
    original = arguments.compile_schema

    def counting(schema: Any) -> Any:
        compiled.append(schema)
        return original(schema)

    monkeypatch.setattr(arguments, "compile_schema", counting)
    validator = ArgumentValidator(cache_size=2)  # two tools: each fits, inputs and outputs alike
    for _ in range(3):
        for i in range(2):
            validator.check("t", _input(i), {f"a{i}": 2})
            assert validator.output_problem("t", _output(i), {f"r{i}": 3}) is None
    assert len(compiled) == 4  # once each; sharing one cache of 2, every call compiled again


def test_structured_content_past_the_bound_is_passed_on_unchecked() -> None:
    validator = ArgumentValidator()
    wrong = {"rows": ["not a number"] * (OUTPUT_CHECK_NODES + 1)}
    assert validator.output_problem("t", ROWS, wrong) is None
    assert validator.outputs_too_large == 1
    # Under the bound, the same mistake is found.
    problem = validator.output_problem("t", ROWS, {"rows": ["not a number"] * 10})
    assert problem is not None and "is not of type" in problem and validator.outputs_too_large == 1


def test_an_unchecked_result_is_warned_of_once_per_tool(caplog: pytest.LogCaptureFixture) -> None:
    # A pattern the backtracking engine runs (a backreference) on a long string: past a 1 ms deadline every time.
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": r"^(a+)+\1$"}}}
    validator = ArgumentValidator(timeout=0.001)
    value = {"s": "a" * 5_000 + "b"}
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.arguments"):
        for _ in range(5):
            assert validator.output_problem("slow", schema, value) is None
        assert validator.output_problem("other", schema, value) is None
    warned = [r.getMessage() for r in caplog.records if "could not be checked" in r.getMessage()]
    assert len(warned) == 2 and "slow" in warned[0] and "other" in warned[1]


def _holding_the_gil() -> None:
    """A backtracking match in `re`'s C code: it keeps the GIL for its whole run (about 2 s), as a busy
    C extension in another thread can."""
    re.match(r"(a+)+$", "a" * 25 + "b")


def test_a_compile_cut_off_by_another_threads_work_is_not_remembered_as_too_costly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compiles in about 0.1-0.3 s alone, well within the 1 s deadline.
    schema = {
        "type": "object",
        "properties": {f"p{i}": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]} for i in range(200)},
    }
    # A starved judging thread gives no verdict: on a busy machine (other tests beside this one) 30 deadlines of
    # wall time can pass before it has had the CPU its compile needs.
    monkeypatch.setattr(arguments, "_JUDGING_WALL", 2_000.0)
    validator = ArgumentValidator(timeout=1.0)
    busy = threading.Timer(0.02, _holding_the_gil)  # starts once the compile below is under way
    busy.start()
    try:
        validator.check("b", schema, {"p1": "x"})
        contended = False
    except ArgumentError as refused:
        assert "could not be checked within" in str(refused)
        contended = True
    busy.join()
    if not contended:
        pytest.skip("the other thread did not hold the compile up past its deadline here")
    # The verdict comes from a compile in a thread of its own (`_judge_soon`); a call before it compiles inline
    # again, which a busy machine can cut off by the clock as well. Once it is given, the schema is checked.
    if validator._judging is not None:
        assert validator.judged.wait(120)
    validator.check("b", schema, {"p1": "x"})  # checked, not refused for 5 minutes


def test_an_empty_type_list_is_not_plain_and_x_extensions_are_annotations() -> None:
    assert not is_plain({"type": []}, 0)
    assert not is_plain({"type": "object", "properties": {"a": {"type": []}}}, 0)
    wrapped = {
        "type": "object",
        "properties": {"result": {"type": "array", "items": {"type": "string"}}},
        "required": ["result"],
        "x-fastmcp-wrap-result": True,
    }
    assert is_plain(wrapped, 0) and plainly_valid(wrapped, {"result": ["a"]}, 0)
    assert not is_plain({"type": "object", "format": "x-thing"}, 0)  # only keys that start with x- are skipped


def test_a_schema_with_an_empty_type_list_is_left_to_the_backend() -> None:
    # Not JSON Schema (the meta-schema wants one type at least): the backend checks its own arguments.
    ArgumentValidator().check("t", {"type": "object", "properties": {"a": {"type": []}}}, {"a": 1})


def test_a_fastmcp_wrapped_result_is_still_checked() -> None:
    wrapped = {
        "type": "object",
        "properties": {"result": {"type": "array", "items": {"type": "string"}}},
        "required": ["result"],
        "x-fastmcp-wrap-result": True,
    }
    problem = ArgumentValidator().output_problem("t", wrapped, {"result": [1]})
    assert problem is not None and "field 'result[0]'" in problem
