"""One run of a workflow: its steps as a graph, independent ones at once, each call made by `call`.

Every step starts as a task that waits for the steps it depends on, so the graph needs no scheduler of
its own: a step runs as soon as its last dependency finishes. Calls (for_each items included) hold a slot
of the run's `CapacityLimiter` only while they call, never while they wait, so nesting cannot deadlock.
The run's `timeout` is one `fail_after` around the task group; a client's cancellation reaches running
calls the same way (anyio cancels the group). A step that fails under `on_error: abort` (or after its
retries) cancels the group, and the run reports that step's id and reason. Every call is charged to the
run's `CallBudget` (budget.py) first, and to those of the runs this one is nested in.

A run started by a step of another (a nested workflow, directly or through call_tool) finds that run through
one context variable, `_ENCLOSING`, holding the enclosing run's budget and render slots: its budget is the new
budget's parent, and its render slots are shared (renders.py). A variable, not an argument, because the
router starts nested runs on behalf of a step's call and knows nothing of workflows. Each step's task
inherits it from its run (anyio copies the context into the tasks it starts); the run resets it and closes
its budget when it ends, and a closed run is no one's enclosing run.

The executor knows nothing of the router: `call(tool, arguments)` is how a step calls a tool (the
provider passes the router's `call_tool`, tests pass their own; `CALLING_STEP` names the step making it),
`on_step` hears each finished step and `on_item` each for_each item that finished ok (the provider turns both
into progress notifications).

A step's JSON text is parsed only up to `max_values` values (step_results.py, `read_json`: parsing holds the event
loop); past it the output is the text (`UnparsedJson`), which templates may use whole but not read as JSON: that fails
naming the step, its values and the setting (a `KeptText`), as does a for_each over it.

Past ~450 lines: `WorkflowRun` is one run's state read top to bottom (graph, retries, for_each, asks, output);
what a step's call gave, and what a run sends, are read in workflows/step_results.py, templates in templates.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

import anyio
import mcp_types as types

from vmcp_opt.config.workflows import StepConfig, WorkflowConfig
from vmcp_opt.workflows.budget import CallBudget, HeldOutputBytes, fan_out_reason, run_call_limit
from vmcp_opt.workflows.renders import SHARED, RenderSlots, RunRenders
from vmcp_opt.workflows.step_events import STEP_CALLS, RunWatch, StepCalls
from vmcp_opt.workflows.step_results import (
    MAX_JSON_VALUES,
    Called,
    HeldOutputs,
    StepError,
    UnparsedJson,
    answer_problem,
    for_templates,
    read_json,
    read_output,
    result_text,
    sent_result,
)
from vmcp_opt.workflows.templates import TemplateError, render_value, truthy

logger = logging.getLogger(__name__)

# cancelled: it was running when the run ended (another step aborted it, its timeout, the client).
StepStatus = Literal["pending", "running", "ok", "failed", "skipped", "cancelled"]
CallTool = Callable[[str, dict[str, Any]], Awaitable[types.CallToolResult]]
StepDone = Callable[["StepReport"], Awaitable[None]]
# A for_each item finished ok: (its step, items done so far, the step's item count).
ItemDone = Callable[["StepReport", int, int], Awaitable[None]]
# Asks the calling client's user: (message, requested schema) → the answer's `{"action", "content"}`.
Ask = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Sleep = Callable[[float], Awaitable[None]]
# The step whose `call` is being made, read by the provider as the call starts (`call(tool, arguments)` names no
# step): which tools the step names literally decides the workflow-only tools its call may reach.
CALLING_STEP: ContextVar[StepConfig | None] = ContextVar("vmcp_calling_step", default=None)


@dataclass
class StepReport:
    id: str
    status: StepStatus = "pending"
    output: Any = None
    error: str | None = None
    attempts: int = 0
    retries: int = 0  # attempts after a failed one (a for_each's: of all its items)
    duration: float = 0.0  # seconds, from its start (`started`) to its end
    started: float | None = None  # `time.perf_counter()` when its first call had a slot (or it asked); None: not yet
    items: int | None = None  # a for_each's item count, once `over` is read
    items_done: int = 0  # a for_each's items that finished ok
    # Skipped because a step it depends on failed (its own dependants are then skipped too).
    blocked: bool = False
    # A tool step's result content as MCP JSON, when it holds more than text (an image, audio, a resource or a
    # link), which `output` (the texts) cannot carry; None otherwise. A for_each's: one entry per item, its
    # blocks or None (a text-only item), when any item held more than text; None otherwise.
    content: list[Any] | None = None

    def view(self) -> dict[str, Any]:
        """What templates read as `steps.<id>`."""
        output = for_templates(self.output, self.items is not None)  # a text kept unparsed: not read as JSON
        return {"output": output, "status": self.status, "error": self.error, "content": self.content}


@dataclass
class RunReport:
    workflow: str
    steps: dict[str, StepReport]
    output: Any = None
    error: str | None = None  # None: the run succeeded
    failed_step: str | None = None
    duration: float = 0.0
    timed_out: bool = False
    order: list[str] = field(default_factory=list)  # the steps in the order they finished
    calls: int = 0  # the calls its steps made, those of the workflows they ran included
    # The result's content blocks (MCP JSON) when it is the last step's and that held more than text: passed
    # on as they came, images included, rather than as the texts alone.
    content: list[dict[str, Any]] | None = None
    text: str | None = None  # the output as the result's text, once written (off the event loop when large)
    # The elicitation step whose answer (`on_decline`/`on_cancel: skip_remaining`) ended the run early, if one did.
    skipped_from: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class WorkflowRun:
    def __init__(
        self,
        workflow: WorkflowConfig,
        params: dict[str, Any],
        call: CallTool,
        on_step: StepDone | None = None,
        sleep: Sleep = anyio.sleep,
        ask: Ask | None = None,
        ask_timeout: float = 300.0,
        max_output_bytes: int | None = None,
        *,
        caller: str | None = None,
        render_slots: RenderSlots = SHARED,
        on_item: ItemDone | None = None,
        watch: RunWatch | None = None,
        max_values: int = MAX_JSON_VALUES,
        held_outputs: HeldOutputBytes | None = None,
    ) -> None:
        self.workflow = workflow
        # Template renders take worker-thread slots of this run, of `caller` (None: not known) and of the
        # gateway (renders.py), so one client's costly templates cannot keep other runs from rendering.
        self._caller = caller
        self._slots = render_slots
        self._renders: RunRenders = render_slots.run(caller)
        # limits.max_result_bytes: the step outputs a run holds, and its result, stay under it; `held_outputs`: what
        # the runs of its caller, and of every caller, hold together (charged until the run ends).
        self._max_output = max_output_bytes
        self._outputs = HeldOutputs(max_output_bytes, held_outputs, caller)  # and those kept as text although JSON
        self._max_values = max_values  # a step's JSON text of more values is kept as text (read_json)
        self._deadline = time.monotonic() + workflow.timeout
        self._ask = ask
        self._ask_timeout = ask_timeout
        self.params = params
        self._call = call
        self._on_step = on_step
        self._on_item = on_item
        self._watch = watch  # telemetry's per-step events (step_events.py)
        self._sleep = sleep
        self._limiter = anyio.CapacityLimiter(workflow.max_parallel)
        self._steps = {step.id: step for step in workflow.steps}
        self.report = RunReport(workflow.name, {step.id: StepReport(step.id) for step in workflow.steps})
        self._done = {step.id: anyio.Event() for step in workflow.steps}
        # Replaced when the run starts, nested in the run whose step started this one (if any).
        self._budget = CallBudget(workflow.name, run_call_limit(workflow))

    async def run(self) -> RunReport:
        try:
            return await self._run()
        finally:
            self._outputs.release()  # ended, however: its outputs are the report's (or nobody's) now

    async def _run(self) -> RunReport:
        report = self.report
        started = time.perf_counter()
        self._deadline = time.monotonic() + self.workflow.timeout
        outer = _enclosing()
        parent = outer.budget if outer is not None else None
        self._budget = CallBudget(self.workflow.name, run_call_limit(self.workflow), parent=parent)
        self._renders = self._slots.run(self._caller, outer.renders if outer is not None else None)
        token = _ENCLOSING.set(_Enclosing(self._budget, self._renders))
        try:
            await self._steps_of_run()
        finally:
            self._budget.open = False  # a task that outlives the run charges it nothing
            _ENCLOSING.reset(token)
            report.calls = self._budget.used
        report.duration = time.perf_counter() - started
        if report.error is None:
            try:
                report.output = await self._output()
            except TemplateError as exc:
                report.error = f"output.{exc.place.removeprefix('output.')}: {exc.reason}"
            except Exception as exc:  # a defect must fail the run, not escape it as the client's JSON-RPC error
                logger.exception("workflow %s: its output raised", self.workflow.name)
                report.error = f"output: internal error: {type(exc).__name__}"
        if report.error is None:
            last, ended = self.workflow.steps[-1], report.steps[self.workflow.steps[-1].id]
            passed = (last.type, ended.output, ended.content) if self.workflow.output is None else None
            sent = await sent_result(report.output, passed, self._max_output, self.workflow.name, self._renders)
            report.error, report.text, report.content = sent.error, sent.text, sent.content
            if sent.error is not None:
                report.output = None
        return report

    async def _steps_of_run(self) -> None:
        report = self.report
        try:
            with anyio.fail_after(self.workflow.timeout):
                async with anyio.create_task_group() as group:
                    for step in self.workflow.steps:
                        group.start_soon(self._run_step, step, group.cancel_scope, name=f"step {step.id}")
        except TimeoutError:
            cut = [s.id for s in report.steps.values() if s.status == "cancelled"]
            report.timed_out = True
            report.error = f"timed out after {self.workflow.timeout:g}s" + (
                f" (still running: {', '.join(cut)})" if cut else ""
            )

    def context(self) -> dict[str, Any]:
        return {"params": self.params, "steps": {i: s.view() for i, s in self.report.steps.items()}}

    async def _output(self) -> Any:
        if self.workflow.output is None:
            output = self.report.steps[self.workflow.steps[-1].id].output
            return str(output) if isinstance(output, UnparsedJson) else output  # a plain str from here on
        defaults, context = self.workflow.output_defaults, self.context()
        if not defaults:
            return await self._render(self.workflow.output, context, "output", None)
        plain = {key: value for key, value in self.workflow.output.items() if key not in defaults}
        rendered = dict(await self._render(plain, context, "output", None))
        for key in defaults:
            rendered[key] = await self._defaulted(key, self.workflow.output[key], context)
        return {key: rendered[key] for key in self.workflow.output}

    async def _defaulted(self, key: str, template: Any, context: dict[str, Any]) -> Any:
        """An output key with a default: the default when its template gives nothing (null, an empty string: read
        from a step that was skipped or failed) or fails on its data. A limit's failure (deadline, work) still
        fails the run: a default would hide a run cut short. The reason is not logged: it may quote step data."""
        try:
            value = await self._render(template, context, f"output.{key}", None)
        except TemplateError as exc:
            if exc.limit:
                raise
            logger.info("workflow %s: output.%s failed to render: its default stands in", self.workflow.name, key)
            return self.workflow.output_defaults[key]
        return self.workflow.output_defaults[key] if value is None or value == "" else value

    async def _render(self, value: Any, context: dict[str, Any], place: str, deadline: float | None = -1.0) -> Any:
        """`render_value` in a worker thread, so a slow template never holds the event loop; bounded by the
        run's deadline (`None`: by the render's own cap), and stopped when the run is cancelled. The thread
        takes a slot of this run, of its caller and of the gateway (renders.py)."""
        if not _has_template(value):
            return value
        work = partial(render_value, value, context, place, self._deadline if deadline == -1.0 else deadline)
        try:
            return await self._renders.render(work)
        except TemplateError as exc:  # a failure while a step's output is kept as text: say why it is text
            reason = self._outputs.explained(exc.reason)
            if reason is exc.reason:
                raise
            raise TemplateError(exc.place, reason, limit=True) from None

    async def _run_step(self, step: StepConfig, group: anyio.CancelScope) -> None:
        for dependency in step.depends_on:
            await self._done[dependency].wait()
        report = self.report.steps[step.id]
        calls: StepCalls | None = None  # set once the step starts (when watched)
        try:
            if self._skipped_remaining(step, report):
                return
            blocking = [d for d in step.depends_on if self._blocks(d)]
            if blocking:
                report.status, report.blocked, report.output = "skipped", True, step.default_result
                report.error = f"not run: step '{blocking[0]}' failed"
                if self._watch is not None:
                    self._watch.step_skipped(step, report, blocking[0])
                return
            context = self.context()
            if step.condition is not None:
                try:
                    run = truthy(await self._render(step.condition, context, "condition"))
                except TemplateError as exc:
                    self._failed(step, report, StepError(str(exc), retryable=False), group)
                    return
                except Exception as exc:  # a defect: the step's failure, not the run's task group torn down
                    logger.exception("workflow %s: step %s's condition raised", self.workflow.name, step.id)
                    self._failed(
                        step,
                        report,
                        StepError(f"condition: internal error: {type(exc).__name__}", retryable=False),
                        group,
                    )
                    return
                if not run:
                    report.status, report.output = "skipped", step.default_result
                    if self._watch is not None:
                        self._watch.step_skipped(step, report, None)
                    return
            if self._skipped_remaining(step, report):  # asked while its condition rendered
                return
            report.status = "running"
            calls = self._watching(step)
            try:
                output = await self._step(step, report, context)
                if step.type != "for_each":  # a for_each's items were counted as they came
                    output = await self._outputs.count(step.id, output, f"steps.{step.id}.output", self._renders)
                report.output, report.content, report.status = output.output, output.content, "ok"
            except _SkippedRemaining:  # answered while its call (or an item's) waited for a slot
                self._skipped_remaining(step, report)
            except StepError as exc:
                self._failed(step, report, exc, group)
            except Exception as exc:  # a defect must fail its step, not tear down the run's task group
                logger.exception("workflow %s: step %s raised", self.workflow.name, step.id)
                self._failed(step, report, StepError(f"internal error: {type(exc).__name__}", retryable=False), group)
            finally:
                report.duration = 0.0 if report.started is None else time.perf_counter() - report.started
                STEP_CALLS.set(None)  # the step's own task: nothing after it reads the variable
        finally:
            self._done[step.id].set()
            if report.status == "running":  # cancelled: the run's error must not say it still runs
                report.status = "cancelled"
            # Every started step is ended, as is one whose condition could not be read, or that was cancelled while
            # it waited for a slot (never started). One that failed before its first call starts as it ends.
            if self._watch is not None and report.status not in ("pending", "skipped"):
                if calls is not None and report.status != "cancelled":  # it reached its calls
                    self._begun(step, report)
                self._watch.step_finished(step, report, calls or StepCalls())
            if report.status != "cancelled":  # a cancelled step is not reported as finished
                self.report.order.append(step.id)
                if self._on_step is not None:
                    await self._on_step(report)

    def _skipped_remaining(self, step: StepConfig, report: StepReport) -> bool:
        """Skips a step not yet started once an answer said `skip_remaining`. Steps already running finish: their
        calls are under way, and cutting them would leave half-done work behind a run that reports success. A step
        waiting for a slot has not started: its call (each item's, each retry's) checks again once it has one."""
        asker = self.report.skipped_from
        if asker is None:
            return False
        report.status, report.output = "skipped", step.default_result
        report.error = f"not run: the answer to step '{asker}' skipped the remaining steps"
        if self._watch is not None:  # the audit event names the step whose answer stopped it
            self._watch.step_skipped(step, report, asker)
        return True

    def _raise_if_skipped(self) -> None:
        """Stops a call (or a for_each item) that has not started once an answer said `skip_remaining`: the step may
        have passed `_skipped_remaining` long before, then waited for a slot."""
        if self.report.skipped_from is not None:
            raise _SkippedRemaining

    def _watching(self, step: StepConfig) -> StepCalls | None:
        """Gives the step's task (and its for_each items') the `StepCalls` its calls are counted in; None when no
        one watches."""
        calls = StepCalls() if self._watch is not None else None
        STEP_CALLS.set(calls)  # also when None: not the enclosing run's step, whose task this one's copies
        return calls

    def _begun(self, step: StepConfig, report: StepReport) -> None:
        """The step starts (once): its first call has a slot of the run's `max_parallel`, or it asks its question.
        Not when it waits for a slot: 100 steps under `max_parallel: 64` were all "started" at once, and their
        durations held the wait."""
        if report.started is None:
            report.started = time.perf_counter()
            if self._watch is not None:
                self._watch.step_started(step, report)

    def _blocks(self, dependency: str) -> bool:
        """A dependency that failed with no default result, or was skipped for such a failure (an explicit
        `default_result: null` is a result: it stands in)."""
        dep = self.report.steps[dependency]
        return (dep.status == "failed" or dep.blocked) and not self._steps[dependency].has_default_result

    def _failed(self, step: StepConfig, report: StepReport, exc: StepError, group: anyio.CancelScope) -> None:
        report.status, report.error = "failed", exc.reason
        if step.on_error.action == "continue":
            report.output = step.default_result
            return
        if self.report.error is None:
            self.report.failed_step = step.id
            self.report.error = f"step '{step.id}' failed: {exc.reason}"
        group.cancel()

    async def _step(self, step: StepConfig, report: StepReport, context: dict[str, Any]) -> Called:
        if step.type == "elicitation":
            return Called(await self._elicit(step, report, context))
        if step.type != "for_each":
            return await self._with_retries(step, report, context)
        items = await self._items(step, context)
        too_many = fan_out_reason(len(items), self._budget)
        if too_many is not None:  # refused before any item runs: no half-done fan-out
            raise StepError(too_many, retryable=False)
        report.items = len(items)
        called: list[Called] = [Called(None)] * len(items)
        failures: list[str] = []
        per_step = anyio.CapacityLimiter(step.max_parallel)
        done = 0
        skipped = False  # an item did not start: an answer skipped the remaining steps first

        async def one(index: int, item: Any, group: anyio.CancelScope) -> None:
            nonlocal done, skipped
            try:
                self._raise_if_skipped()
                async with per_step:
                    try:
                        scope = {**context, step.item: item, "index": index}
                        item_output = await self._with_retries(step, report, scope)
                        place = f"steps.{step.id}.output[{index}]"
                        called[index] = await self._outputs.count(step.id, item_output, place, self._renders)
                    except StepError as exc:
                        failures.append(f"item {index}: {exc.reason}")
                        group.cancel()  # the other items stop: the step has failed
                        return
            except _SkippedRemaining:  # the items running finish: their calls are under way
                skipped = True
                return
            done += 1
            report.items_done = done
            if self._on_item is not None:  # after the slot is freed: a slow client holds no item back
                await self._on_item(report, done, len(items))

        async with anyio.create_task_group() as group:
            for index, item in enumerate(items):
                group.start_soon(one, index, item, group.cancel_scope)
        if failures:
            raise StepError(failures[0], retryable=False)
        if skipped:
            raise _SkippedRemaining
        contents = [c.content for c in called]
        return Called([c.output for c in called], contents if any(c is not None for c in contents) else None)

    async def _elicit(self, step: StepConfig, report: StepReport, context: dict[str, Any]) -> Any:
        """Ask the user; no call slot is held while a person answers, and no retry (a person said it)."""
        assert step.message is not None and step.requested_schema is not None
        if self._ask is None:
            raise StepError("this run cannot ask its client anything", retryable=False)
        try:
            message = str(await self._render(step.message, context, "message"))
        except TemplateError as exc:
            raise StepError(str(exc), retryable=False) from None
        report.attempts += 1
        self._begun(step, report)
        timeout = step.timeout or self._ask_timeout
        try:
            with anyio.fail_after(timeout):
                answer = await self._ask(message, step.requested_schema)
        except TimeoutError:
            raise StepError(f"the user did not answer within {timeout:g}s", retryable=False) from None
        except StepError:
            raise
        except Exception as exc:
            raise StepError(f"{type(exc).__name__}: {exc}", retryable=False) from None
        action = answer.get("action")
        handling = {"decline": step.on_decline, "cancel": step.on_cancel}.get(str(action))
        if handling == "abort":
            raise StepError(f"the user chose '{action}'", retryable=False)
        if action == "accept":
            answer_problem(answer.get("content"), step.requested_schema)
        if handling == "skip_remaining":
            name, asked = self.workflow.name, step.id
            logger.info("workflow %s: step %s: the user chose '%s': skipping the remaining steps", name, asked, action)
            self.report.skipped_from = self.report.skipped_from or asked
            return {**answer, "skipped": True}
        return answer

    async def _items(self, step: StepConfig, context: dict[str, Any]) -> list[Any]:
        assert step.over is not None
        try:
            items = await self._render(step.over, context, "over")
            if isinstance(items, UnparsedJson):  # a step's output kept as text: not counted again, and named
                raise StepError(f"over: {items.refusal('run a for_each over')}", retryable=False)
            if isinstance(items, str):  # counted before it is parsed: a for_each is refused before it parses
                items = read_json(items, self._max_values)
        except TemplateError as exc:
            raise StepError(str(exc), retryable=False) from None
        except json.JSONDecodeError:
            raise StepError("over: neither a list nor a JSON array", retryable=False) from None
        except ValueError as exc:  # more values than a step reads; an integer of more digits than Python reads
            raise StepError(
                f"over: {exc}; a for_each takes at most max_iterations ({step.max_iterations}) items", retryable=False
            ) from None
        except RecursionError:
            raise StepError("over: a JSON array nested too deeply", retryable=False) from None
        if isinstance(items, dict | str) or not hasattr(items, "__iter__"):
            raise StepError(f"over: a list is needed, got {type(items).__name__}", retryable=False)
        items = list(items)
        if len(items) > step.max_iterations:
            raise StepError(
                f"over: {len(items)} items, more than max_iterations ({step.max_iterations})", retryable=False
            )
        return items

    async def _with_retries(self, step: StepConfig, report: StepReport, context: dict[str, Any]) -> Called:
        policy = step.on_error
        attempts = 1 + (policy.retries if policy.action == "retry" else 0)
        delay = policy.delay
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(step, report, context)
            except StepError as exc:
                if not exc.retryable or attempt == attempts:
                    if attempt > 1:
                        exc.reason += f" (after {attempt} attempts)"
                    raise  # its error result, if any, stays charged: the step's error holds its text
                self._outputs.drop(exc.held)  # retried: this attempt's error text is let go
            self._raise_if_skipped()  # no retry after the answer
            report.retries += 1
            await self._sleep(min(delay, policy.max_delay))
            delay *= policy.multiplier
        raise AssertionError("unreachable")

    async def _attempt(self, step: StepConfig, report: StepReport, context: dict[str, Any]) -> Called:
        assert step.tool is not None
        try:
            arguments = await self._render(step.arguments, context, "arguments")
        except TemplateError as exc:
            raise StepError(str(exc), retryable=False) from None
        async with self._limiter:
            # Checked once the slot is taken: an answer may have come while this call waited for it. Charged
            # after it: a call skipped there is not one the run made.
            self._raise_if_skipped()
            refused = self._budget.take()
            if refused is not None:
                raise StepError(refused, retryable=False)
            report.attempts += 1
            self._begun(step, report)
            try:
                with anyio.fail_after(step.timeout):
                    calling = CALLING_STEP.set(step)
                    try:
                        result = await self._call(step.tool, arguments)
                    finally:
                        CALLING_STEP.reset(calling)
            except TimeoutError:
                raise StepError(f"timed out after {step.timeout:g}s") from None
            except StepError:  # the provider's own refusals (a policy denial, told without hidden names)
                raise
            except Exception as exc:  # the router's refusals (unknown tool) and protocol errors
                raise StepError(f"{type(exc).__name__}: {exc}") from None
        held = self._outputs.hold(result)  # charged as it arrives: until its output is counted, or the run ends
        if result.is_error:
            raise StepError(result_text(result) or "the tool returned an error", held=held)
        try:
            return replace(await read_output(result, self._max_values, self._renders), held=held)
        except BaseException:
            self._outputs.drop(held)
            raise


class _SkippedRemaining(Exception):
    """A step's call or item was about to start after an answer skipped the remaining steps: the step is skipped."""


@dataclass(frozen=True)
class _Enclosing:
    """What a nested run takes of the run it is nested in. Not the `WorkflowRun` itself: a task started during
    a step (a backend session opened for the call) keeps the context, so this, for as long as it lives, and
    the run would keep its parameters and every step's output with it."""

    budget: CallBudget
    renders: RunRenders


_ENCLOSING: ContextVar[_Enclosing | None] = ContextVar("vmcp_workflow_run", default=None)


def _enclosing() -> _Enclosing | None:
    """The run whose step is calling now, if one is and it has not ended."""
    run = _ENCLOSING.get()
    return run if run is not None and run.budget.open else None


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_has_template(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_template(item) for item in value)
    return False
