"""Tool arguments checked against an input schema before a call leaves the gateway (routed tools and meta-tools).

Schemas come from backends and arguments from clients; neither is trusted, so a check is bounded:

- `$ref` resolves inside the schema (and the bundled JSON Schema meta-schemas) only. A remote or `file://`
  reference is never fetched: that part of the schema accepts anything, and the backend enforces it.
- `pattern` and `patternProperties` run on RE2 (linear time, no backtracking) when RE2 takes the pattern,
  otherwise on `regex` with the time left as its timeout (vmcp_opt/pattern_engines.py, imported at the
  first pattern). `uniqueItems` is linear, not quadratic.
- Arguments no request can carry are refused before any schema (vmcp_opt/argument_sendable.py): nested past
  `MAX_ARGUMENT_DEPTH`, as deep as a client's own can be, or holding a lone surrogate. Only strings the gateway
  decodes make either (call_tool's string form, a workflow's `fromjson`).
- The whole check has a deadline (`limits.argument_check_timeout`): past it the call is refused, never
  sent, and the check stops at the next keyword.
- Compiled validators are cached per schema content (SHA-256 of its canonical JSON) in a bounded LRU (input and
  output schemas each in their own), and so is the verdict on a schema whose own (meta-schema) check outlasted the
  deadline on its own thread's CPU (not merely on the clock, other threads holding the GIL): later calls are
  refused at once. A compile cut off before it had worked most of a deadline (starved under load) is refused
  once and compiled again in a thread of its own, on a deadline of its own CPU, for the verdict (`_judge_soon`).
- A plain schema (`type`, `properties`, `required`, `additionalProperties`, `items`, string `enum`s and
  annotations, nothing else) first gets an exact check of its own (vmcp_opt/plain_schemas.py, a few µs against
  jsonschema's ~40 µs per call): arguments it passes are valid under jsonschema too; anything it does not
  pass (or any doubt, such as a float for `integer`) goes to jsonschema, which gives the verdict and the error.

A refusal quotes values in JSON, as the client sent them (`null`, `true`, `"text"`), each cut to a bounded
length on its own (vmcp_opt/argument_messages.py).

For the gateway, both raise `ArgumentError` with a message that names the field:
    await validator.check_async(tool_name, schema, arguments)   # in a worker thread: the event loop is free
    validator.check(tool_name, schema, arguments)               # inline: stalls the loop up to the deadline
A tool result's structured content is checked against the tool's output schema under the same bounds:
    await validator.output_problem_async(tool_name, schema, value)  # `field 'a': reason`, or None

Past ~450 lines: the input and output checks share one set of bounds (deadline, thread hop, caches, the
too-costly verdict), which read best in one place; the refusal messages are argument_messages.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from types import ModuleType
from typing import Any

import anyio
import attrs
from jsonschema import validators
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from vmcp_opt.argument_messages import SCHEMA_LIMIT, describe, describe_all, spell
from vmcp_opt.argument_sendable import unsendable_field
from vmcp_opt.display import shorten
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.plain_schemas import is_plain, plainly_valid

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1.0
DEFAULT_CACHE_SIZE = 1024
_MAX_ERRORS = 32  # errors gathered before picking the most relevant one


class ArgumentError(Exception):
    """Arguments that do not fit the schema; the message names the field and the reason, `problems` every
    field found wrong (of the first `_MAX_ERRORS` errors), one `field 'a.b': reason` each."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


class _OutOfTime(Exception):
    """The check's deadline passed; raised from inside a keyword to stop the whole check."""


# Seconds a schema whose own check outlasted the deadline is refused at once: long enough to spare every call its
# deadline, short enough that a check cut off by a moment's overload (not by the schema) is tried again.
TOO_COSTLY_FOR = 300.0


# The share of the deadline a schema's compile must have spent on its own thread's CPU to be judged too costly:
# a compile cut off by other threads holding the GIL (wall time passing, not its work) says nothing of the schema.
_OWN_WORK_SHARE = 0.8
# Deadlines of wall time a compile judged on its own CPU budget may take before it is given up on without a
# verdict (a thread starved for all that time by the others).
_JUDGING_WALL = 30.0

# Structured content past either bound is passed on unchecked: walking (and checking) it would cost every call up
# to the whole deadline of GIL-holding CPU, the backend's choice.
OUTPUT_CHECK_NODES = 10_000
OUTPUT_CHECK_TEXT = 1_000_000


class _TooCostly:
    """The cached verdict on a schema whose own check did not end within the deadline, until `expires`."""

    __slots__ = ("expires",)

    def __init__(self) -> None:
        self.expires = time.monotonic() + TOO_COSTLY_FOR


class _SchemaCache:
    """What is kept per schema, each map a bounded LRU; one for input schemas, one for output schemas, so that
    a catalogue's output schemas do not evict its input schemas' validators (nor the reverse)."""

    def __init__(self, size: int) -> None:
        self.size = size
        # A compiled validator, None for a schema left to the backend, `_TooCostly` for one whose check timed out.
        self.by_digest: OrderedDict[str, Validator | _TooCostly | None] = OrderedDict()
        # The digest of a schema object seen recently (hashing a large schema on every call costs).
        self.by_identity: OrderedDict[int, tuple[Mapping[str, Any], str]] = OrderedDict()
        # Per schema object: (cheap enough to check inline, plain enough for `plainly_valid`).
        self.traits_by_identity: OrderedDict[int, tuple[Mapping[str, Any], tuple[bool, bool]]] = OrderedDict()


class ArgumentValidator:
    """Bounded argument checks, with compiled validators cached per schema content."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.timeout = timeout
        self.cache_size = max(1, cache_size)
        self._inputs = _SchemaCache(self.cache_size)
        self._outputs = _SchemaCache(self.cache_size)
        self._lock = threading.Lock()
        # Checks run in worker threads a few at a time: more would only contend for the GIL.
        self._threads = anyio.CapacityLimiter(4)
        # Results passed on unchecked for their size (`OUTPUT_CHECK_NODES`, `OUTPUT_CHECK_TEXT`).
        self.outputs_too_large = 0
        self._unchecked_log = ThrottledLog(logger, 60.0)
        # The digest of the schema being compiled for a verdict (`_judge_soon`), and when one is over.
        self._judging: str | None = None
        self.judged = threading.Event()

    @property
    def _by_digest(self) -> Mapping[str, Validator | _TooCostly | None]:
        return self._inputs.by_digest  # the input schemas' (tests read its size)

    @property
    def _by_identity(self) -> Mapping[int, tuple[Mapping[str, Any], str]]:
        return self._inputs.by_identity

    def check(self, tool_name: str, schema: Mapping[str, Any], arguments: Mapping[str, Any] | None) -> None:
        unsendable = unsendable_field(arguments or {})
        if unsendable is not None:
            raise ArgumentError(f"invalid arguments for tool '{shorten(tool_name)}': {unsendable}")
        if self._traits(schema, self._inputs)[1] and plainly_valid(schema, arguments or {}, 0):
            return
        previous = getattr(_local, "deadline", None)
        _local.deadline = time.monotonic() + self.timeout
        try:
            errors = self._errors(tool_name, schema, dict(arguments or {}), self._inputs)
            # Built under the same deadline: naming the refused fields may run the schema's patterns.
            refusal = _refusal(tool_name, errors) if errors else None
        except _OutOfTime:
            raise ArgumentError(
                f"arguments for tool '{shorten(tool_name)}' could not be checked within {self.timeout:g}s "
                "(the tool's schema is too costly for them); the call was not sent"
            ) from None
        finally:
            _local.deadline = previous
        if refusal is not None:
            raise refusal

    def output_problem(self, tool_name: str, schema: Mapping[str, Any], value: Any) -> str | None:
        """Why `value` (a tool result's structured content) does not fit the tool's output schema, or None when it
        fits, or when that could not be found out (a schema jsonschema cannot apply, or past the deadline): the
        result was already produced, so only a proven mismatch is reported.

        Content past `OUTPUT_CHECK_NODES` values or `OUTPUT_CHECK_TEXT` characters is not checked either (counted in
        `outputs_too_large`): the check would cost up to the deadline of CPU on every such call."""
        if not _small(value, OUTPUT_CHECK_NODES, OUTPUT_CHECK_TEXT):
            self.outputs_too_large += 1
            logger.debug("tool %s: structured result too large to check; passed on unchecked", shorten(tool_name))
            return None
        if self._traits(schema, self._outputs)[1] and plainly_valid(schema, value, 0):
            return None
        previous = getattr(_local, "deadline", None)
        _local.deadline = time.monotonic() + self.timeout
        try:
            errors = self._errors(tool_name, schema, value, self._outputs)
            return describe(best_match(errors), _search) if errors else None
        except _OutOfTime:
            # Per tool and minute: a backend whose every result outlasts the deadline must not flood the log.
            self._unchecked_log.warning(
                tool_name,
                "tool %s: its structured result could not be checked against its output schema within %gs; "
                "passed on unchecked",
                shorten(tool_name),
                self.timeout,
            )
            return None
        finally:
            _local.deadline = previous

    async def output_problem_async(self, tool_name: str, schema: Mapping[str, Any], value: Any) -> str | None:
        """`output_problem`, in a worker thread unless it cannot be costly (as `check_async`)."""
        if self._inline(schema, self._outputs) and _small(value):
            return self.output_problem(tool_name, schema, value)
        return await anyio.to_thread.run_sync(
            self.output_problem, tool_name, schema, value, limiter=self._threads, abandon_on_cancel=True
        )

    def _errors(
        self, tool_name: str, schema: Mapping[str, Any], instance: Any, cache: _SchemaCache
    ) -> list[ValidationError]:
        try:
            validator = self._validator(schema, cache)
            if validator is None:
                return []
            return list(itertools.islice(validator.iter_errors(instance), _MAX_ERRORS))
        except _OutOfTime:
            raise
        except Exception:
            # A schema jsonschema cannot apply (a $ref loop, a pointer to nowhere, a keyword of the wrong
            # type): the backend enforces its own schema.
            logger.debug("tool %s: schema not applied", shorten(tool_name), exc_info=True)
            return []

    async def check_async(self, tool_name: str, schema: Mapping[str, Any], arguments: Mapping[str, Any] | None) -> None:
        """`check` in a worker thread, so a costly schema never holds up the event loop.

        Inline when it cannot be costly: a small schema with no regular expressions and no references, and small
        arguments, is a few microseconds of work, less than the hop to a thread (about 0.1 ms).
        """
        if self._inline(schema, self._inputs) and _small(arguments):
            self.check(tool_name, schema, arguments)
            return
        await anyio.to_thread.run_sync(
            self.check, tool_name, schema, arguments, limiter=self._threads, abandon_on_cancel=True
        )

    def _inline(self, schema: Mapping[str, Any], cache: _SchemaCache) -> bool:
        """Whether `schema` can be checked on the event loop, found there with bounded work: the size walk stops at
        `_INLINE_SCHEMA_NODES`, and only a schema within it is walked whole (`_traits`). A larger one's traits are
        worked out by its first check, in the worker thread: walking 15,000 properties held the loop ~0.2 s."""
        seen = self._seen_traits(schema, cache)
        if seen is not None:
            return seen[0]
        return _small(schema, _INLINE_SCHEMA_NODES, _INLINE_SCHEMA_TEXT) and self._traits(schema, cache)[0]

    def _seen_traits(self, schema: Mapping[str, Any], cache: _SchemaCache) -> tuple[bool, bool] | None:
        with self._lock:
            seen = cache.traits_by_identity.get(id(schema))
        return seen[1] if seen is not None and seen[0] is schema else None

    def _traits(self, schema: Mapping[str, Any], cache: _SchemaCache) -> tuple[bool, bool]:
        """(no costly keyword, plain), worked out once per schema object: a walk of the whole schema."""
        seen = self._seen_traits(schema, cache)
        if seen is not None:
            return seen
        # A large schema is costly too: the first check compiles it, and its meta-schema check (10,000 properties:
        # ~2 s, past the deadline, so paid again on every call) held the event loop when run inline.
        cheap = _small(schema, _INLINE_SCHEMA_NODES, _INLINE_SCHEMA_TEXT) and not _has_costly_keyword(schema)
        traits = (cheap, is_plain(schema, 0))
        with self._lock:
            cache.traits_by_identity[id(schema)] = (schema, traits)  # held, so its id cannot be reused meanwhile
            while len(cache.traits_by_identity) > cache.size:
                cache.traits_by_identity.popitem(last=False)
        return traits

    def _validator(self, schema: Mapping[str, Any], cache: _SchemaCache) -> Validator | None:
        digest = self._digest(schema, cache)
        with self._lock:
            if digest in cache.by_digest:
                cache.by_digest.move_to_end(digest)
                cached = cache.by_digest[digest]
                if not isinstance(cached, _TooCostly):
                    return cached
                if cached.expires > time.monotonic():
                    raise _OutOfTime
        # A plain schema's keywords are all well formed (`is_plain` looked): its meta-schema check is skipped.
        compile = _compile_plain if self._traits(schema, cache)[1] else compile_schema
        own_cpu = time.thread_time()
        try:
            validator: Validator | _TooCostly | None = compile(schema)
        except _OutOfTime:
            if time.thread_time() - own_cpu < _OWN_WORK_SHARE * self.timeout:
                # Cut off before it had worked most of a deadline (the digest came first; other threads held the
                # GIL): that says nothing of the schema. Refused this once; a compile of its own, on its own CPU
                # budget, gives the verdict (under load, every call would otherwise wait out the whole deadline).
                self._judge_soon(schema, digest, cache, compile)
                raise
            # The schema alone (its meta-schema check) outlasts the deadline: so would it on every call, each paying
            # the whole deadline again. The verdict is kept with the compiled validators, bounded alike.
            validator = _TooCostly()
        self._keep(cache, digest, validator)
        if isinstance(validator, _TooCostly):
            raise _OutOfTime
        return validator

    def _keep(self, cache: _SchemaCache, digest: str, validator: Validator | _TooCostly | None) -> None:
        with self._lock:
            cache.by_digest[digest] = validator
            while len(cache.by_digest) > cache.size:
                cache.by_digest.popitem(last=False)

    def _judge_soon(
        self,
        schema: Mapping[str, Any],
        digest: str,
        cache: _SchemaCache,
        compile: Callable[[Mapping[str, Any]], Validator | None],
    ) -> None:
        """Compile `schema` in a thread of its own, bounded by `timeout` of that thread's CPU (not of the clock):
        done, its validator is cached; out of CPU, it is too costly; out of `_JUDGING_WALL` deadlines of wall time
        (starved throughout), no verdict. One such compile at a time per validator, so the judging is bounded."""
        with self._lock:
            if self._judging is not None:
                return
            self._judging = digest

        def judge() -> None:
            _local.deadline = time.monotonic() + _JUDGING_WALL * self.timeout
            _local.cpu_deadline = time.thread_time() + self.timeout
            try:
                self._keep(cache, digest, compile(schema))
            except _OutOfTime:
                if time.thread_time() >= _local.cpu_deadline:
                    self._keep(cache, digest, _TooCostly())
            except Exception:
                logger.debug("schema not applied", exc_info=True)
                self._keep(cache, digest, None)  # as `_errors` does: the backend enforces its own schema
            finally:
                with self._lock:
                    self._judging = None
                self.judged.set()

        self.judged.clear()
        threading.Thread(target=judge, name="vmcp-schema-verdict", daemon=True).start()

    def _digest(self, schema: Mapping[str, Any], cache: _SchemaCache) -> str:
        with self._lock:
            seen = cache.by_identity.get(id(schema))
            if seen is not None and seen[0] is schema:
                cache.by_identity.move_to_end(id(schema))
                return seen[1]
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), default=repr)
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            cache.by_identity[id(schema)] = (schema, digest)  # held, so its id cannot be reused meanwhile
            while len(cache.by_identity) > cache.size:
                cache.by_identity.popitem(last=False)
        return digest


# Keywords whose cost is not linear in the arguments (regular expressions) or not bounded by the schema
# in view (references); a schema with none of them is checked inline.
_COSTLY_KEYWORDS = frozenset({"pattern", "patternProperties", "$ref", "$dynamicRef", "$recursiveRef", "format"})
_INLINE_NODES = 256
_INLINE_TEXT = 16_384
_INLINE_SCHEMA_NODES = 1024
_INLINE_SCHEMA_TEXT = 65_536


def _has_costly_keyword(schema: Any, depth: int = 0) -> bool:
    if depth > 32:
        return True
    if isinstance(schema, Mapping):
        return any(key in _COSTLY_KEYWORDS or _has_costly_keyword(value, depth + 1) for key, value in schema.items())
    if isinstance(schema, list):
        return any(_has_costly_keyword(item, depth + 1) for item in schema)
    return False


def _small(value: Any, nodes: int = _INLINE_NODES, text: int = _INLINE_TEXT) -> bool:
    """Few values and little text, found by a walk that stops as soon as either bound is passed."""
    budget = [nodes, text]
    stack: list[Any] = [value]
    while stack:
        value = stack.pop()
        budget[0] -= 1
        if isinstance(value, str):
            budget[1] -= len(value)
        elif isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        if budget[0] < 0 or budget[1] < 0:
            return False
    return True


def compile_schema(schema: Mapping[str, Any]) -> Validator | None:
    """A bounded validator for `schema`, or None when the schema is not valid JSON Schema (left to the backend).

    Runs under the caller's deadline (`check` sets it): the meta-schema check is bounded too.
    """
    base = validators.validator_for(schema, default=validators.Draft202012Validator)
    meta = _bounded(validators.validator_for(base.META_SCHEMA))(base.META_SCHEMA, registry=_REGISTRY)
    if next(meta.iter_errors(dict(schema)), None) is not None:
        return None
    return _bounded(base)(dict(schema), registry=_REGISTRY)


def _compile_plain(schema: Mapping[str, Any]) -> Validator:
    """`compile_schema` without the meta-schema check, for a plain schema (`is_plain` found every keyword well
    formed, and it names no `$schema`): the check would tell nothing new, and it is slow on a large schema
    (10,000 properties: ~2 s, past the deadline, so the call was refused instead of naming the missing field)."""
    return _bounded(validators.Draft202012Validator)(dict(schema), registry=_REGISTRY)


def _refusal(tool_name: str, errors: list[ValidationError]) -> ArgumentError:
    reason = describe(best_match(errors), _search)
    return ArgumentError(f"invalid arguments for tool '{shorten(tool_name)}': {reason}", describe_all(errors, _search))


# --- references: inside the schema only ------------------------------------------------------------------

_unfetched: OrderedDict[str, None] = OrderedDict()  # references already warned about

_unfetched_lock = threading.Lock()


def _not_fetched(uri: str) -> Resource[Any]:
    """A reference outside the schema: never retrieved; it stands for a schema that accepts anything."""
    with _unfetched_lock:
        new = uri not in _unfetched
        _unfetched[uri] = None
        while len(_unfetched) > 256:
            _unfetched.popitem(last=False)
    if new:
        logger.warning(
            "a tool schema refers to %s, which is not fetched (only references inside the schema are "
            "followed); that part of its arguments is left to the backend to check",
            shorten(uri, 200),
        )
    return Resource.from_contents({}, default_specification=DRAFT202012)


_REGISTRY: Registry[Any] = SPECIFICATIONS.combine(Registry(retrieve=_not_fetched))  # type: ignore[call-arg]


# --- the deadline and the bounded keywords ----------------------------------------------------------------

# `deadline`: the monotonic time the running check must end by; `cpu_deadline`: the thread's CPU time it must end
# by (only a compile judged on its own budget, `_judge_soon`, has one).
_local = threading.local()


def _time_left() -> float:
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return math.inf
    left = deadline - time.monotonic()
    if left <= 0:
        raise _OutOfTime
    cpu_deadline: float | None = getattr(_local, "cpu_deadline", None)
    if cpu_deadline is not None and time.thread_time() >= cpu_deadline:
        raise _OutOfTime  # a compile judged on its own CPU (`_judge_soon`) used up its budget
    return left


Keyword = Callable[[Any, Any, Any, Any], Any]


def _timed(keyword: Keyword) -> Keyword:
    def checked(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _time_left()
        return keyword(validator, value, instance, schema)

    return checked


@lru_cache(maxsize=16)
def _bounded(base: type[Validator]) -> type[Validator]:
    """`base` with every keyword under the deadline, patterns on a bounded engine, uniqueItems linear."""
    keywords: dict[str, Keyword] = {name: _timed(fn) for name, fn in base.VALIDATORS.items()}
    if "pattern" in keywords:
        keywords["pattern"] = _timed(_pattern)
    if "patternProperties" in keywords:
        keywords["patternProperties"] = _timed(_pattern_properties)
    if "uniqueItems" in keywords:
        keywords["uniqueItems"] = _timed(_unique_items)
    extended: type[Validator] = validators.extend(base, keywords)  # type: ignore[no-untyped-call]
    fields = [(field.name, field.alias) for field in attrs.fields(extended) if field.init]  # type: ignore[arg-type, misc]

    def evolve(self: Any, **changes: Any) -> Any:
        # jsonschema's own `evolve` turns to the standard (unbounded) class at any subschema naming a `$schema`, as
        # every vocabulary of the meta-schemas does: the meta-schema check then ignored the deadline. Stay bounded.
        schema = changes.setdefault("schema", self.schema)
        target = validators.validator_for(schema, default=base)
        for name, alias in fields:
            changes.setdefault(alias, getattr(self, name))
        return (extended if target is base else _bounded(target))(**changes)

    extended.evolve = evolve  # type: ignore[method-assign]
    return extended


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and isinstance(pattern, str) and not _search(pattern, instance):
        yield ValidationError(f"{spell(instance)} does not match {spell(pattern, SCHEMA_LIMIT)}")


def _pattern_properties(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object") or not isinstance(properties, dict):
        return
    for pattern, subschema in properties.items():
        for key, value in instance.items():
            if _search(pattern, key, unchecked=False):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if unique is not True or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for index, item in enumerate(instance):
        if index % 1024 == 0:
            _time_left()
        key = _equality_key(item)
        if key in seen:
            yield ValidationError(f"has non-unique elements (item {index} repeats an earlier one)")
            return
        seen.add(key)


def _equality_key(value: Any) -> Any:
    """Equal keys for values JSON Schema calls equal: 1 and 1.0 alike, true and 1 not, key order ignored."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_equality_key(item) for item in value))
    if isinstance(value, dict):
        return ("d", frozenset((key, _equality_key(item)) for key, item in value.items()))
    return ("o", repr(value))


def _search(pattern: str, text: str, *, unchecked: bool = True) -> bool:
    """Whether `pattern` finds a match in `text`; `unchecked` when neither engine takes the pattern (the backend's
    to enforce): a `pattern` then passes, a `patternProperties` key then matches nothing (its subschema is not
    made to apply to every key)."""
    engines = _pattern_engines()
    compiled = engines.compile_pattern(pattern)
    if compiled is None:
        return unchecked
    if isinstance(compiled, engines.Backtracking):
        try:
            return compiled.pattern.search(text, timeout=_time_left(), concurrent=True) is not None
        except TimeoutError:
            raise _OutOfTime from None
    found = compiled.search(text) is not None
    _time_left()  # one RE2 search cannot be interrupted: a slow one still fails the check that ran past its deadline
    return found


_engines: ModuleType | None = None


def _pattern_engines() -> ModuleType:
    """vmcp_opt/pattern_engines.py (re2 and regex), imported at the first pattern a check meets. The import
    (~65 ms) is not the check's: the deadline of the check that waited for it moves by as long."""
    global _engines
    if _engines is None:
        started = time.monotonic()
        import vmcp_opt.pattern_engines as engines  # another thread's import of it waits for this one

        deadline: float | None = getattr(_local, "deadline", None)
        if deadline is not None:
            _local.deadline = deadline + (time.monotonic() - started)
        _engines = engines
    return _engines
