"""The too-costly verdict on a schema (vmcp_opt/arguments.py) when its compile was cut off under load: judged on a
compile of its own CPU budget, in process; jsonschema runs for real, and another thread really holds the GIL."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from vmcp_opt import arguments
from vmcp_opt.arguments import ArgumentError, ArgumentValidator

# About 1 s to compile alone here (its meta-schema check): far past a 0.2 s deadline however idle the machine.
COSTLY = {
    "type": "object",
    "properties": {f"p{i}": {"type": "string", "pattern": "^a+$", "description": "x" * 50} for i in range(5000)},
}
# About 0.1-0.3 s alone: within a 1 s deadline.
CHEAP = {
    "type": "object",
    "properties": {f"p{i}": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]} for i in range(200)},
    "required": ["p0"],
}


def _holding_the_gil() -> None:
    """A backtracking match in `re`'s C code: it keeps the GIL for its whole run (about 1-2 s), as a busy C
    extension (the ONNX encoder, say) in another thread can."""
    re.match(r"(a+)+$", "a" * 25 + "b")


def _refused_under_load(validator: ArgumentValidator, schema: dict[str, Any]) -> None:
    busy = threading.Timer(0.02, _holding_the_gil)  # starts once the compile below is under way
    busy.start()
    try:
        with pytest.raises(ArgumentError, match="could not be checked within"):
            validator.check("t", schema, {"p1": "a"})
    finally:
        busy.join()


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    seen: list[object] = []
    original = arguments.compile_schema

    def counting(schema: Any) -> Any:
        seen.append(schema)
        return original(schema)

    monkeypatch.setattr(arguments, "compile_schema", counting)
    return seen


def test_a_costly_schema_cut_off_while_starved_is_still_remembered(compiles: list[object]) -> None:
    validator = ArgumentValidator(timeout=0.2)
    _refused_under_load(validator, COSTLY)
    # Starved, the call's own compile gave no verdict: one of its own, on 0.2 s of its own CPU, does.
    assert validator.judged.wait(30)
    assert [type(v).__name__ for v in validator._by_digest.values()] == ["_TooCostly"]
    compiled = len(compiles)
    with pytest.raises(ArgumentError, match="could not be checked within"):
        validator.check("t", COSTLY, {"p1": "a"})
    assert len(compiles) == compiled  # refused at once: not compiled (nor its deadline waited out) again


def test_a_schema_cheap_alone_cut_off_while_starved_gets_its_validator(compiles: list[object]) -> None:
    validator = ArgumentValidator(timeout=1.0)
    _refused_under_load(validator, CHEAP)
    assert validator.judged.wait(30)
    compiled = len(compiles)
    # Not refused for 5 minutes: checked with the validator the judging compile left, naming the missing field.
    with pytest.raises(ArgumentError, match="'p0'"):
        validator.check("t", CHEAP, {"p1": "a"})
    validator.check("t", CHEAP, {"p0": "a"})
    assert len(compiles) == compiled


def test_one_verdict_compile_at_a_time() -> None:
    validator = ArgumentValidator(timeout=0.2)
    started: list[str] = []
    real = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        if self.name == "vmcp-schema-verdict":
            started.append(self.name)
        real(self)

    gate = threading.Event()
    original = arguments.compile_schema

    def slow_for_the_judge(schema: Any) -> Any:
        if threading.current_thread().name == "vmcp-schema-verdict":
            gate.wait(30)  # the verdict compile stays under way while the calls below are cut off
        return original(schema)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Thread, "start", counted)
        patch.setattr(arguments, "compile_schema", slow_for_the_judge)
        _refused_under_load(validator, COSTLY)
        _refused_under_load(validator, COSTLY)
        gate.set()
    assert validator.judged.wait(30)
    assert started == ["vmcp-schema-verdict"]
