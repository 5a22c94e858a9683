"""What a workflow step's call gave (vmcp_opt/workflows/executor.py runs the steps): its output read from the
backend's result, the result's non-text content kept beside it, an elicitation answer checked against its form,
the error that fails a step, and what a run's client is sent (checked, measured and written).

JSON is read on the event loop, and only up to `MAX_JSON_VALUES` values (`read_json`): json.loads costs about a
microsecond a value and holds the GIL until it is done, in a worker thread too, so a 3.9 MB "[[],[],…]" held the
gateway for 2.7 s. The values are counted first at C speed (`json_values`, ~1 ms a megabyte); a text holding more
is kept as text, measured by its length (never walked): an `UnparsedJson`, which templates see as a `KeptText`, the
text used whole, any read of it as JSON (an item, a field, its length, a loop, a filter) an error naming the step, its
values and the setting; a for_each `over` one is refused. A result of many blocks is read, and an output past
`_CHECKED_INLINE` sized, in a worker thread (`read_output`, `HeldOutputs`): pure-Python walks, which let the loop in
between (64 Ki values of structured content: ~100 ms). What a run sends is walked and written in a worker thread when
large, by the pure-Python encoder, which lets the loop in between.

At ~450 lines: reading a step's result, sizing it and what templates see of it share the same value bounds;
splitting them would pass those bounds between modules.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import jsonschema
import mcp_types as types

from vmcp_opt.backends.results import json_size, value_count
from vmcp_opt.display import printable, shorten
from vmcp_opt.workflows.budget import HeldOutputBytes
from vmcp_opt.workflows.renders import RunRenders

# Most digits of an integer JSON carries from one process to another: Python's `json` (its str conversion) and
# pydantic-core (the SDK's reader, in backends and clients) refuse more. A request holding one was read by no
# backend, so nothing answered it and its run waited for its timeout.
MAX_JSON_INT_DIGITS = 4300
TOO_WIDE = f"an integer of more than {MAX_JSON_INT_DIGITS:,} digits, which JSON cannot carry"
_PAST_JSON_INT: int = 10**MAX_JSON_INT_DIGITS
_WITHIN_JSON_BITS = _PAST_JSON_INT.bit_length() - 1  # every integer of at most these bits has fewer digits
# A run's output up to about this size is checked on the event loop (walking it costs less than a thread's hop).
_CHECKED_INLINE = 64 * 1024
_DEEPEST = 1000  # levels walked: deeper, writing its text fails the run as "nested too deeply" (`sent_result`)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_PROBLEM = "holds a lone surrogate (such as \\ud800), which UTF-8 cannot carry"
# Values of one JSON text a workflow parses, as limits.max_result_values's default for a backend's answer: a step's
# text can come from elsewhere (a client's argument as a for_each's `over`, a nested workflow's result). Measured on
# a loaded machine, 64 Ki of them parse in ~20 ms as `[]`, ~130 ms as distinct keys (the costliest shape).
MAX_JSON_VALUES = 64 * 1024
# A text this short holds no more values than characters, nor integers costly to read (100 KB of digits: ~7 ms).
_SHORT_TEXT = 100_000
_BYTES_PER_VALUE = 8  # what a parsed value weighs against limits.max_result_bytes at least (as `json_size` counts)


@dataclass
class HeldResult:
    """The bytes of a step's result charged to its caller's and the gateway's bounds (`HeldOutputs.hold`), from its
    arrival until its output is counted in its place, or until the run ends when its error text is the step's
    error (kept in the run's report); 0 once released."""

    size: int = 0


class StepError(Exception):
    def __init__(self, reason: str, *, retryable: bool = True, held: HeldResult | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.held = held  # the charge of the error result whose text is `reason`, if any


class JsonTooLarge(ValueError):
    """A JSON text that holds more values than a workflow parses, left unparsed."""


@dataclass(frozen=True)
class Called:
    """What a step's attempt gave: its output, and its result's content when that held more than text (a
    for_each's: one entry per item)."""

    output: Any
    content: list[Any] | None = None
    # What the output weighs when it was read from a text (its length, or its values'), so it is not walked.
    text_size: int | None = None
    # Why the output is the result's text although that is JSON (`JsonTooLarge`'s reason), else None.
    unread: str | None = None
    # The charge of the result it was read from (`HeldOutputs.hold`), which `HeldOutputs.count` takes over.
    held: HeldResult | None = None

    def held_size(self, cap: int) -> int | None:
        """What it comes to against limits.max_result_bytes (the output, and the content when there is one), or
        None past `cap`."""
        if self.text_size is None:
            return json_size([self.output, self.content] if self.content else self.output, cap)
        rest = json_size(self.content, cap - self.text_size) if self.content and self.text_size <= cap else 0
        size = None if rest is None else self.text_size + rest
        return size if size is not None and size <= cap else None


class UnparsedJson(str):
    """A step's output (or a for_each item's) kept as its JSON text (`JsonTooLarge`): a str wherever it goes, which
    knows its place in the run (`steps.a.output`, `steps.a.output[3]`) and why it was not parsed."""

    place: str
    why: str

    def __new__(cls, text: str, place: str, why: str) -> UnparsedJson:
        kept = super().__new__(cls, text)
        kept.place, kept.why = place, why
        return kept

    def refusal(self, use: str) -> str:
        """Why `use` of it (`iterate over`, say) fails: its place, its values and the setting."""
        return (
            f"cannot {use} {self.place}: it is kept as its JSON text, unparsed, past limits.max_result_values "
            f"({self.place} is its text, not parsed: {self.why}); a template can use it only whole, as text (`~` "
            "joins it to other text)"
        )


class KeptTextRead(Exception):
    """A template read a `KeptText` as the JSON value it is not; the message says why (templates.py: the step's)."""


class KeptText:
    """An `UnparsedJson` as templates see it. Whole, its text: `{{ steps.a.output }}`, `~`, `| string`. Read as the
    JSON it holds (an item or a field, its length, iterated, any other filter: templates.py), `KeptTextRead`. Not a
    str, which Jinja's filters and Python's operators read character by character: `[0]` gave `[`, `| length` the
    characters. No public attribute: the sandbox would hand it to `steps.a.output.<name>`."""

    __slots__ = ("_text",)

    def __init__(self, text: UnparsedJson) -> None:
        self._text = text

    def __str__(self) -> str:
        return self._text

    def __bool__(self) -> bool:
        return True  # JSON past the bound is never empty: true as data, as it is as text

    def refuse(self, use: str) -> NoReturn:
        raise KeptTextRead(self._text.refusal(use))

    def __len__(self) -> int:
        self.refuse("take the length of")

    def __iter__(self) -> NoReturn:
        self.refuse("iterate over")

    def __contains__(self, item: object) -> bool:
        self.refuse("look for an item in")

    def __add__(self, other: object) -> NoReturn:  # `~` joins it as text; `+` would add JSON values
        self.refuse("add to")

    __radd__ = __add__

    def __getitem__(self, key: object) -> NoReturn:
        part = f"item {key}" if isinstance(key, int) else f"field '{shorten(key)}'" if isinstance(key, str) else "part"
        self.refuse(f"read {part} of")

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("_"):  # a protocol's probe (copy, pickle), or `_text` not yet set
            raise AttributeError(name)
        self.refuse(f"read field '{printable(name)}' of")


def for_templates(output: Any, items: bool) -> Any:
    """A step's output as templates read it: an `UnparsedJson` as a `KeptText`, a for_each's (`items`) items too."""
    if isinstance(output, UnparsedJson):
        return KeptText(output)
    if items and isinstance(output, list) and any(isinstance(item, UnparsedJson) for item in output):
        return [KeptText(item) if isinstance(item, UnparsedJson) else item for item in output]
    return output


def json_values(text: str, most: int = MAX_JSON_VALUES) -> int:
    """About the values a JSON text holds, counted at C speed without parsing it, as limits.max_result_values counts
    a backend's answer (`value_count`: past `most`, only the `{`, `[` and `,` outside its strings: a document whose
    one string holds 70,000 commas is three values, not a refusal)."""
    return value_count(text.encode("utf-8", "surrogatepass"), most)


def read_json(text: str, most: int = MAX_JSON_VALUES, values: int | None = None) -> Any:
    """`text` parsed, unless it holds more than `most` values (`values`: its `json_values`, when counted already):
    `JsonTooLarge` then, before any parsing (or once its long integers, read in quadratic time, come to as much).
    ValueError, RecursionError as json.loads. For templates' `fromjson` too."""
    if len(text) <= min(most, _SHORT_TEXT):
        return json.loads(text)
    values = json_values(text, most) if values is None else values
    if values > most:
        raise JsonTooLarge(
            f"JSON of up to {values:,} values (by its brackets and commas), more than the {most:,} a workflow step "
            "reads"
        )
    return json.loads(text, parse_int=_IntegerCosts(most - values, most))


class _IntegerCosts:
    """json.loads's `parse_int`: each integer's digits are converted in quadratic time (4,000 of them take as long
    as some 1,000 `[]`), so their cost is counted against the values left, and past it the parse stops."""

    def __init__(self, left: int, most: int) -> None:
        self.left = left
        self.most = most

    def __call__(self, digits: str) -> int:
        if len(digits) > 128:
            self.left -= len(digits) * len(digits) // 16_384
            if self.left < 0:
                raise JsonTooLarge(
                    f"JSON whose long integers take as long to read as more than the {self.most:,} values a "
                    "workflow step reads"
                )
        return int(digits)


def answer_problem(content: Any, schema: dict[str, Any]) -> None:
    """Refuses an accepted answer that does not fit the form: the client's word is not checked by the SDK,
    and a missing or mistyped field would otherwise fail a later step with a reason naming that step."""
    try:
        problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(content or {}))
    except jsonschema.SchemaError as exc:  # checked at load (config/workflows.py); kept from crashing the run
        raise StepError(f"requested_schema is not a valid JSON Schema: {exc.message}", retryable=False) from None
    if problem is not None:
        where = "".join(f".{part}" for part in problem.absolute_path)
        raise StepError(
            f"the user's answer does not fit requested_schema: content{where}: {problem.message}", retryable=False
        )


def output_text(output: Any) -> str:
    """An output as the result's text: a string as it is, anything else as JSON. Non-ASCII as written, as
    find_tool's answer: an escape per character costs an agent's model tokens. ValueError, RecursionError
    when it cannot be written."""
    return output if isinstance(output, str) else json.dumps(output, default=str, ensure_ascii=False)


def result_text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def result_content(result: types.CallToolResult) -> list[dict[str, Any]] | None:
    """The result's content blocks as MCP JSON when any is not text, else None: the output holds only the
    texts, and an image or a resource link the backend returned must not vanish on the way to the client."""
    if all(isinstance(block, types.TextContent) for block in result.content):
        return None
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]


def step_output(result: types.CallToolResult, most: int = MAX_JSON_VALUES) -> Called:
    """What a step's call gave: the structured content, else the text (parsed when it is JSON of at most `most`
    values), else None; and the result's content when it holds more than text."""
    content = result_content(result)
    if result.structured_content is not None:
        return Called(result.structured_content, content)
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    if len(texts) != 1:
        return Called(texts or None, content)
    text = texts[0]
    values = json_values(text, most)
    try:
        output = read_json(text, most, values)
    except JsonTooLarge as exc:
        return Called(text, content, len(text) + 2, unread=str(exc))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: kept as text
        return Called(text, content, len(text) + 2)
    return Called(output, content, max(len(text), _BYTES_PER_VALUE * (values + 1)))


# Content blocks a result may have for its step's output to be read on the event loop: each is converted to JSON by
# pydantic (`result_content`), 20,000 in ~45 ms.
_INLINE_BLOCKS = 64


async def read_output(result: types.CallToolResult, most: int, renders: RunRenders) -> Called:
    """`step_output`, in a worker thread on a slot of the run's renders when the result has more than
    `_INLINE_BLOCKS` content blocks. A JSON text is parsed on the loop either way (json.loads holds the GIL)."""
    if len(result.content) <= _INLINE_BLOCKS:
        return step_output(result, most)
    return await renders.render(lambda stop: step_output(result, most))


def result_bytes(result: types.CallToolResult) -> int:
    """About what a result weighs as JSON, in one pass over its blocks: the strings that make a result large (a
    text, base64 data, an embedded resource's text or blob), and its structured content up to `_CHECKED_INLINE`
    (past it counted as that: its output is sized in full by `HeldOutputs.count`, off the loop). Not a walk of
    every field: it is charged on the event loop as the result arrives."""
    size = sum(_block_bytes(block) for block in result.content)
    if result.structured_content is not None:
        size += json_size(result.structured_content, _CHECKED_INLINE) or _CHECKED_INLINE
    return size


def _block_bytes(block: Any) -> int:
    resource = getattr(block, "resource", None)
    strings = [getattr(block, "text", None), getattr(block, "data", None)]
    if resource is not None:
        strings += [getattr(resource, "text", None), getattr(resource, "blob", None)]
    return _BYTES_PER_VALUE + sum(len(string) + 2 for string in strings if isinstance(string, str))


class HeldOutputs:
    """A run's step outputs: what they come to against limits.max_result_bytes (`cap`; None: not bounded) and, when
    given, against what its caller's and every caller's runs may hold together (`shared`, charged to `caller` until
    `release`); and the first one of each step kept as text, to say why a template failed on it.

    Each step's result is charged to `shared` as it arrives (`hold`), before it is read and sized: no bound counted
    the results waiting for a render slot to be sized, nor the error texts kept as steps' errors. Its output, once
    sized, takes the result's charge over (`count`)."""

    def __init__(self, cap: int | None, shared: HeldOutputBytes | None = None, caller: str | None = None) -> None:
        self.cap = cap
        self.held = 0  # what the outputs counted so far come to (about their JSON size)
        self.unread: dict[str, UnparsedJson] = {}
        self._shared = shared
        self._caller = caller or ""  # no caller (`vmcp workflow run`): one for all such runs
        self._charged = 0  # what `shared` holds of this run's
        self._ended = False  # released: a result's charge is not released again

    def hold(self, result: types.CallToolResult) -> HeldResult:
        """A step's result, just arrived, charged to the shared bounds (`result_bytes`) until `count` takes its
        output's charge over or `drop`; StepError past them (not retried: the next answer would be as large)."""
        if self._shared is None:
            return HeldResult()
        size = result_bytes(result)
        refused = self._shared.charge(self._caller, size, "step's result")
        if refused is not None:
            raise StepError(refused, retryable=False)
        self._charged += size
        return HeldResult(size)

    def drop(self, held: HeldResult | None) -> None:
        """A result's charge released: its result is no longer held (a second call does nothing)."""
        if held is not None and held.size and self._shared is not None and not self._ended:
            self._shared.release(self._caller, held.size)
            self._charged -= held.size
            held.size = 0

    async def count(self, step: str, called: Called, place: str, renders: RunRenders) -> Called:
        """`called` once counted (its output an `UnparsedJson` at `place` when kept as text), or StepError past the
        cap or the shared bounds; either way its result's charge is released, taken over by its output's when
        counted. Sized on the event loop up to `_CHECKED_INLINE`; past it in a worker thread on a slot of the run's
        renders: the pure-Python walk of a structured content of 64 Ki values held the loop ~100 ms."""
        try:
            return await self._count(step, called, place, renders)
        finally:
            self.drop(called.held)

    async def _count(self, step: str, called: Called, place: str, renders: RunRenders) -> Called:
        if called.unread is not None:
            called = replace(called, output=UnparsedJson(called.output, place, called.unread))
            self.unread.setdefault(step, called.output)  # one is enough to say why
        room = self._room(called.held.size if called.held is not None else 0)
        if room is None:
            return called
        left, refusal = room
        size = called.held_size(min(left, _CHECKED_INLINE))
        if size is None and left > _CHECKED_INLINE:
            size = await renders.render(lambda stop: called.held_size(left))
        if size is None:
            if self.cap is not None and left >= self.cap - self.held:  # (`held` only grows: a sum past `cap` stays)
                self.held = self.cap + 1
            raise StepError(refusal, retryable=False)
        if self._shared is not None:  # checked again: other runs may have charged while this one was sized
            self.drop(called.held)  # the output takes its result's place, in the same step as it is charged
            refused = self._shared.charge(self._caller, size)
            if refused is not None:
                raise StepError(refused, retryable=False)
            self._charged += size
        self.held += size
        return called

    def _room(self, result: int = 0) -> tuple[int, str] | None:
        """The bytes this run's outputs may still come to, and the error past them; None: not bounded. `result`:
        what the output's own result holds of the shared bounds, which the output takes over."""
        rooms: list[tuple[int, str]] = []
        if self.cap is not None:
            reason = f"the workflow's step outputs come to more than {self.cap:,} bytes (limits.max_result_bytes)"
            rooms.append((self.cap - self.held, reason))
        if self._shared is not None:
            shared, reason = self._shared.room(self._caller)
            rooms.append((shared + result, reason))
        return min(rooms, key=lambda room: room[0]) if rooms else None

    def release(self) -> None:
        """The run ended: its results and outputs are no longer charged to the shared bounds (a second call does
        nothing)."""
        if self._shared is not None and self._charged:
            self._shared.release(self._caller, self._charged)
        self._charged = 0
        self._ended = True

    def explained(self, reason: str) -> str:
        """`reason` (a template's failure) with why each output kept as text is text, unless it says so already."""
        notes = [f"{text.place} is its text, not parsed: {text.why}" for text in self.unread.values()]
        notes = [note for note in notes if note not in reason]
        return f"{reason} ({'; '.join(notes)})" if notes else reason


def too_wide(value: int) -> bool:
    """Whether `value` has more digits than JSON carries: compared, never written out (that is quadratic)."""
    return value.bit_length() > _WITHIN_JSON_BITS and abs(value) >= _PAST_JSON_INT


@dataclass(frozen=True)
class Sent:
    """A successful run's result as its client is sent it: its output's text and the content blocks passed on;
    or why it cannot be sent (then nothing else)."""

    error: str | None = None
    text: str | None = None
    content: list[dict[str, Any]] | None = None


# A workflow without `output` passes on its last step's: (its type, its output, its content).
LastStep = tuple[str, Any, list[Any] | None]


async def sent_result(
    output: Any, last: LastStep | None, max_bytes: int | None, workflow: str, renders: RunRenders
) -> Sent:
    """What the client is sent of a run's `output`: checked (`unsendable`), measured against `max_bytes` and
    written. A large one in a worker thread, on a slot of the run's renders, its text by the pure-Python encoder:
    walking and writing it there lets the event loop run between their turns at the GIL."""
    if json_size([output, last[2] if last is not None else None], _CHECKED_INLINE) is not None:
        return _sent(output, last, max_bytes, workflow, output_text)
    return await renders.render(lambda stop: _sent(output, last, max_bytes, workflow, _writer_in_turns(stop)))


def _sent(output: Any, last: LastStep | None, max_bytes: int | None, workflow: str, write: _Write) -> Sent:
    problem = unsendable(output, "output")  # a backend's lone surrogate, say: the client's parser would refuse it
    if problem is not None:
        return Sent(error=problem)
    try:
        content = passed_on(*last) if last is not None else None
        if max_bytes is not None and json_size(sent_value(output, content), max_bytes) is None:
            return Sent(
                error=f"workflow '{workflow}' returned a result larger than {max_bytes:,} bytes "
                "(limits.max_result_bytes); it was not passed on"
            )
        return Sent(text=write(output), content=content)
    except (ValueError, RecursionError):  # the output (or an item's) too deeply nested to write as text
        return Sent(error="its output is nested too deeply to send")


def passed_on(step_type: str, output: Any, content: list[Any] | None) -> list[dict[str, Any]] | None:
    """The content blocks a workflow without `output` passes on from its last step, or None (its output goes
    as text). A for_each's items in order: each item's blocks as they came, a text-only item as its output's
    text, so an item's image stays beside that item's texts."""
    if step_type != "for_each" or content is None:  # (content is set only on an ok step)
        return content
    blocks: list[dict[str, Any]] = []
    for item, item_content in zip(output, content, strict=True):
        blocks += item_content if item_content is not None else [{"type": "text", "text": output_text(item)}]
    return blocks


def sent_value(output: Any, content: list[dict[str, Any]] | None) -> Any:
    """What the client is sent of a run's result, for limits.max_result_bytes: the blocks when there are any
    (and the output beside them as structured content when it is an object), else the output."""
    if not content:
        return output
    return [output, content] if isinstance(output, dict) else content


_Write = Callable[[Any], str]
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # as `output_text` writes


def _writer_in_turns(stop: threading.Event) -> _Write:
    """`output_text` by json's pure-Python encoder: the C one (json.dumps) holds the GIL until it is done, from a
    worker thread too. Stops once `stop` is set (its run was cancelled: the text is not used)."""

    def write(output: Any) -> str:
        if isinstance(output, str):
            return output
        chunks: list[str] = []
        for chunk in _ENCODER.iterencode(output):  # not one-shot: the pure-Python encoder
            chunks.append(chunk)
            if len(chunks) % 4096 == 0 and stop.is_set():
                break
        return "".join(chunks)

    return write


def unsendable(value: Any, place: str) -> str | None:
    """`place.path: why` for the first part of `value`, in document order, that no JSON message can carry: an
    integer past `MAX_JSON_INT_DIGITS` digits, a non-finite float, a string or key with a lone surrogate (UTF-8 has
    none: the client's parser refused the answer), anything that is not JSON data. None when all of it can go.
    Iterative; a container met twice (shared, or a cycle) is walked once, and none deeper than `_DEEPEST`. A part's
    path is written only for the part named."""
    seen: set[int] = set()
    stack: list[tuple[Any, _Path, int]] = [(value, (place,), 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen or depth >= _DEEPEST:
                continue
            seen.add(id(node))
            if isinstance(node, list):
                stack.extend((node[i], (path, i), depth + 1) for i in range(len(node) - 1, -1, -1))
                continue
            for key in node:
                if not isinstance(key, str):
                    return f"{_written(path)}: a key that is not a string"
                if _has_surrogate(key):
                    return f"{_written(path)}: a key that {_SURROGATE_PROBLEM}"
            stack.extend((item, (path, key), depth + 1) for key, item in reversed(node.items()))
            continue
        problem = _scalar_problem(node)
        if problem is not None:
            return f"{_written(path)}: {problem}"
    return None


# A part's path, kept unwritten while the walk goes: its container's, and its key or index (the whole: its place).
_Path = tuple[Any, ...]


def _written(path: _Path) -> str:
    parts: list[str] = []
    while len(path) == 2:
        path, step = path
        parts.append(f"[{step}]" if isinstance(step, int) else f".{shorten(step, 80)}")
    return str(path[0]) + "".join(reversed(parts))


def _scalar_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return TOO_WIDE if too_wide(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value}, which JSON cannot hold"
    if isinstance(value, str):
        return _SURROGATE_PROBLEM if _has_surrogate(value) else None
    return f"a {type(value).__name__}, which is not JSON data"


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None
