"""Workflows as tools: a tool provider of the router, like the backends' tools and the meta-tools.

Each step is a call of `router.call_tool` with the caller of the workflow, so the policy is asked for the
workflow and again for every step, and each step takes the same path as a direct call (provider, schema
check, session, health guard, observers). Steps run with the caller's exchange minus its progress token:
the workflow reports progress itself (`RunProgress`: per finished step and per finished for_each item), and
a backend's own progress would interleave with it and break the rule that progress only grows. The steps'
exchange is marked with the workflow's name (`Exchange.step_of`): usage learning counts the workflow the
client called, not the calls its steps make.

A step the policy refuses fails without naming the refused tool unless the caller may see that tool
(`step_denial`): a workflow's author chose its steps' tools, and a caller must not learn of tools hidden
from it by calling a workflow. The router's log and the audit log keep the whole record.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from vmcp_opt.aggregation import Catalog, LiveCatalog
from vmcp_opt.arguments import ArgumentError, ArgumentValidator
from vmcp_opt.auth import Caller
from vmcp_opt.auth.caller import caller_key
from vmcp_opt.config.limits import HeldAnswerBytesConfig
from vmcp_opt.config.workflow_calls import CALL_TOOL
from vmcp_opt.config.workflows import StepConfig, WorkflowConfig, workflow_warnings
from vmcp_opt.routing import Denied, Dispatch, Exchange, ProvidedTool, ToolCall, error_result
from vmcp_opt.routing.budget import Budget
from vmcp_opt.routing.operations import current
from vmcp_opt.routing.round_trips import InputRequired, RoundOwners, WorkflowRound
from vmcp_opt.workflows.budget import HeldOutputBytes
from vmcp_opt.workflows.executor import (
    CALLING_STEP,
    Ask,
    ItemDone,
    RunReport,
    StepDone,
    StepReport,
    WorkflowRun,
)
from vmcp_opt.workflows.renders import SHARED, RenderSlots
from vmcp_opt.workflows.rounds import PendingRun, WorkflowRounds, drain_hold
from vmcp_opt.workflows.step_events import run_watch
from vmcp_opt.workflows.step_results import MAX_JSON_VALUES, StepError, output_text
from vmcp_opt.workflows.validation import derived_annotations

logger = logging.getLogger(__name__)

WORKFLOW_SOURCE = "workflows"  # the source of composite tools, as policies and find_tool see it
SOURCE_DESCRIPTION = "Composite tools of this gateway: several calls across servers as one tool."
# Workflows running inside one another at most (a step calling a workflow, directly or through
# call_tool): each level multiplies the calls and cancel scopes one client request holds.
MAX_WORKFLOW_DEPTH = 4


class WorkflowTools:
    """The configured workflows, served as tools."""

    searchable = True  # find_tool indexes them from their description and parameters

    def __init__(
        self,
        workflows: Sequence[WorkflowConfig],
        catalog: LiveCatalog,
        validator: ArgumentValidator,
        listed: Callable[[str], bool] = lambda name: True,
        *,
        input_timeout: float = 300.0,
        max_pending: int = 64,
        owners: RoundOwners | None = None,
        pending_budget: Budget | None = None,
        max_result_bytes: int | None = None,
        render_slots: RenderSlots = SHARED,
        max_result_values: int = MAX_JSON_VALUES,
        held_outputs: HeldOutputBytes | None = None,
    ) -> None:
        self.workflows = {w.name: w for w in workflows}
        for warning in workflow_warnings(workflows):  # once, at start: `vmcp serve`, `vmcp workflow run`
            logger.warning("%s", warning)
        # Runs of 2026-07-28 clients waiting for their answers (attached to the gateway's task group); they
        # hold slots of `pending_budget`, the backend round trips' own when the gateway passes it.
        self.rounds = WorkflowRounds(
            max_pending=max_pending, input_timeout=input_timeout, owners=owners, budget=pending_budget
        )
        self.max_result_bytes = max_result_bytes  # limits.max_result_bytes, for each run's outputs
        self.max_result_values = max_result_values  # a step's JSON text of more values stays text (read_json)
        self.render_slots = render_slots  # template renders' threads: per run, per caller, in total
        # What running runs hold of their steps' results and outputs, per caller and in total (limits.held_answer_bytes's
        # bounds). `is None`, not `or`: an empty one has length 0, and the configured bounds were replaced by defaults.
        self.held_outputs = held_outputs if held_outputs is not None else HeldOutputBytes.of(HeldAnswerBytesConfig())
        self._catalog = catalog
        self._validator = validator
        self._listed = listed  # with the optimizer on, only pinned ones are listed
        self._view: tuple[object, dict[str, ProvidedTool]] | None = None

    def tools(self) -> Mapping[str, ProvidedTool]:
        catalog = self._catalog.current
        if self._view is None or self._view[0] is not catalog:  # annotations follow the steps' tools
            self._view = (catalog, workflow_tools(list(self.workflows.values()), catalog))
        return self._view[1]

    def listed(self) -> Sequence[ProvidedTool]:
        return [tool for name, tool in self.tools().items() if self._listed(name)]

    def why_unavailable(self, name: str) -> str | None:
        return None

    async def call(self, call: ToolCall) -> types.CallToolResult:
        exchange = call.exchange
        if isinstance(exchange.round, WorkflowRound):  # a 2026-07-28 client's answer to a step's question
            return await self.rounds.resume(exchange.round, exchange.input_responses, exchange.progress_relay())
        workflow = self.workflows[call.tool.name]
        refused = nesting_refused(workflow.name, exchange.workflow_chain)
        if refused is not None:
            return error_result(refused)
        # Defaults first (as ToolHive does): a parameter both required and given a `default` may be left out.
        arguments = with_defaults(workflow.parameters, call.arguments or {})
        try:
            await self._validator.check_async(workflow.name, workflow.parameters, arguments)
        except ArgumentError as exc:
            return error_result(argument_problems(workflow.name, exc))
        if asks_its_client(workflow) and answers_by_round(call.caller, exchange):
            # Its questions go back as InputRequiredResult: the run lives in the background between rounds,
            # and its steps' calls are not tied to the request that started it.
            background = dataclasses.replace(exchange, session=None, request_id=None)

            async def pending_run(pending: PendingRun) -> types.CallToolResult:
                progress = RunProgress(len(workflow.steps), lambda: pending.progress)
                report = await self.run(
                    workflow.name,
                    arguments,
                    call.caller,
                    background,
                    call.router,
                    progress.step_done,
                    ask=pending.ask if client_elicits(call.caller) else None,
                    checked=True,
                    on_item=progress.item_done,
                )
                return run_result(report)

            # Charged as rate limits key the caller: an anonymous 2026-07-28 client's id is new with each request.
            return await self.rounds.start(pending_run, exchange.progress_relay(), caller_key(call.caller))
        relay = exchange.progress_relay()
        progress = RunProgress(len(workflow.steps), lambda: relay)
        report = await self.run(
            workflow.name,
            arguments,
            call.caller,
            exchange,
            call.router,
            progress.step_done,
            ask=front_ask(call.caller, exchange),
            checked=True,
            on_item=progress.item_done,
        )
        return run_result(report)

    async def run(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        caller: Caller,
        exchange: Exchange,
        router: Dispatch,
        on_step: StepDone | None = None,
        ask: Ask | None = None,
        checked: bool = False,
        on_item: ItemDone | None = None,
    ) -> RunReport:
        """One run, each step a call of `router.call_tool` as `caller`; `ArgumentError` for bad arguments."""
        workflow = self.workflows[name]
        params = with_defaults(workflow.parameters, arguments or {})  # before the check: `required` may have one
        if not checked:
            await self._validator.check_async(workflow.name, workflow.parameters, params)
        steps = step_exchange(exchange, caller, workflow.name)

        async def step_call(tool: str, step_arguments: dict[str, Any]) -> types.CallToolResult:
            step = CALLING_STEP.get()
            exchange = steps if step is None else dataclasses.replace(steps, may_reach=literal_tools(step))
            try:
                with drain_hold():
                    return await router.call_tool(caller, tool, step_arguments, exchange)
            except InputRequired as asked:  # a question no step can relay: whatever waits on it goes
                self.rounds.abandon(asked)
                return error_result(f"'{tool}' asked the client for input, which a workflow step cannot relay")
            except Denied as denied:  # not retried: the policy will say the same
                raise StepError(await step_denial(router, caller, denied), retryable=False) from None

        watch = run_watch(current(), workflow)  # the audit log's per-step events, when it is on
        try:
            report = await WorkflowRun(
                workflow,
                params,
                step_call,
                on_step,
                ask=ask,
                ask_timeout=self.rounds.input_timeout,
                max_output_bytes=self.max_result_bytes,
                caller=caller_key(caller),  # as rate limits key it: a new session is not a new caller
                render_slots=self.render_slots,
                on_item=on_item,
                watch=watch,
                max_values=self.max_result_values,
                held_outputs=self.held_outputs,
            ).run()
            if report.ok and workflow.output_schema is not None:
                await self._conform(workflow, workflow.output_schema, report)
        except BaseException as exc:  # cancelled (its client gone, the gateway stopping), or a defect: no report
            if watch is not None:
                watch.run_stopped(exc)
            raise
        if watch is not None:
            watch.run_finished(report)
        if not report.ok:  # names only: the error may hold argument values and backend text
            where = f"at step {report.failed_step}" if report.failed_step else "(timed out)" if report.timed_out else ""
            logger.info("workflow %s failed %s", report.workflow, where or "(its result)")
        return report

    async def _conform(self, workflow: WorkflowConfig, schema: dict[str, Any], report: RunReport) -> None:
        """Fails `report` when its output breaks the workflow's `output_schema`: the tool lists that schema, and
        a server MUST return structured content that fits it (the SDK's client raises on one that does not, and
        the agent gets nothing). Off the event loop and under a deadline, as arguments are checked."""
        if not isinstance(report.output, dict):
            problem: str | None = f"it is {_JSON_KINDS.get(type(report.output), 'not JSON')}, not an object"
        else:
            problem = await self._validator.output_problem_async(workflow.name, schema, report.output)
        if problem is not None:
            report.error = f"its output does not match its output_schema: {problem}"
            report.output = report.content = None


# What a step's output that is not an object is, in JSON's words (a workflow without `output` returns its last
# step's output, which may be any of them).
_JSON_KINDS: dict[type, str] = {
    type(None): "null",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}


def asks_its_client(workflow: WorkflowConfig) -> bool:
    return any(step.type == "elicitation" for step in workflow.steps)


def answers_by_round(caller: Caller, exchange: Exchange) -> bool:
    """Whether a run's questions go back to the client as `InputRequiredResult` rounds: a 2026-07-28 client's own
    request. A step's or a script's call (`Exchange.inner`) has no front session: like a backend tool called
    there, which gets the shared session, a nested workflow cannot ask (its elicitation step fails) rather than
    hold a pending run whose question no one can hand to the client."""
    return caller.protocol_version in MODERN_PROTOCOL_VERSIONS and exchange.session is not None


def client_elicits(caller: Caller) -> bool:
    return caller.capabilities is not None and caller.capabilities.elicitation is not None


def front_ask(caller: Caller, exchange: Exchange) -> Ask | None:
    """A 2025-11-25 client's way to be asked: `elicitation/create` on its session, tied to its request."""
    session = exchange.session
    if session is None or not client_elicits(caller):
        return None

    async def ask(message: str, schema: dict[str, Any]) -> dict[str, Any]:
        result = await session.elicit_form(message, schema, related_request_id=exchange.request_id)  # type: ignore[arg-type]
        return result.model_dump(mode="json", exclude_none=True, include={"action", "content"})

    return ask


async def step_denial(router: Dispatch, caller: Caller, denied: Denied) -> str:
    """A step's policy refusal as its reason: who may not do what and why (`Denied.explanation`) when the caller
    may see the refused tool (it may list and call it), else one that names neither the tool nor the policy's
    reason (which may name it); the run's error names the step, which is the workflow's, not the tool."""
    target = denied.target
    if target.kind == "tool":
        await router.usable_tools_async(caller)  # `may_use` then reads the caller's kept view
        if router.may_use(caller, [target.name]):
            return f"Denied: {denied.explanation}"
    return f"not permitted: caller '{caller.id}' may not make this step's call"


class RunProgress:
    """A run's progress notifications, to whichever request drives the run now; best effort.

    The total is the workflow's step count, known from the start; each finished step counts 1. A running
    for_each counts each item that finished ok as 1/(items + 1) of its step, so its items move the progress
    on and its own end still adds to it (the MCP rule: progress increases with every notification, and it
    may be fractional). Notifications are sent one at a time, and one that would not increase the progress
    (items of parallel steps finishing together) is left out."""

    def __init__(self, steps: int, relay: Callable[[], ProgressFnT | None]) -> None:
        self._total = float(steps)
        self._relay = relay
        self._finished = 0
        self._items: dict[str, Fraction] = {}  # running for_each steps: the part of the step done
        self._sent = 0.0
        self._sending = anyio.Lock()

    async def step_done(self, step: StepReport) -> None:
        self._items.pop(step.id, None)
        self._finished += 1
        await self._send(self._value(), f"step {step.id}: {step.status}")

    async def item_done(self, step: StepReport, done: int, items: int) -> None:
        self._items[step.id] = Fraction(done, items + 1)
        await self._send(self._value(), f"step {step.id}: {done} of {items} items done")

    def _value(self) -> float:
        return float(self._finished + sum(self._items.values()))

    async def _send(self, value: float, message: str) -> None:
        async with self._sending:
            progress = self._relay()
            if progress is None or value <= self._sent:
                return
            self._sent = value
            try:
                await progress(value, self._total, message)
            except Exception as exc:  # a client that went away must not fail the run
                logger.debug("workflow progress not sent: %s", exc)


def workflow_tools(workflows: Sequence[WorkflowConfig], catalog: Catalog) -> dict[str, ProvidedTool]:
    """The workflows as tools beside `catalog`, their annotations derived from its tools: what the gateway
    serves and find_tool indexes, and what `vmcp index` lists without a gateway (probe.py)."""
    annotations = derived_annotations(workflows, {**catalog.workflow_only, **catalog.tools})
    return {
        w.name: ProvidedTool(w.name, tool_of(w, annotations[w.name]), WORKFLOW_SOURCE, w.name, SOURCE_DESCRIPTION)
        for w in workflows
    }


def tool_of(workflow: WorkflowConfig, annotations: types.ToolAnnotations) -> types.Tool:
    return types.Tool(
        name=workflow.name,
        description=workflow.description,
        input_schema=workflow.parameters,
        output_schema=workflow.output_schema,
        annotations=annotations,
    )


def step_exchange(exchange: Exchange, caller: Caller, workflow: str) -> Exchange:
    """The exchange a step's call carries (`Exchange.inner`): marked as `workflow`'s step (the run made the call,
    not the client: usage learning leaves it out); a 2026-07-28 retry's round answers the workflow's own question,
    not a step's."""
    return exchange.inner(modern=caller.protocol_version in MODERN_PROTOCOL_VERSIONS, chain=workflow, step_of=workflow)


def literal_tools(step: StepConfig) -> frozenset[str]:
    """The tools `step` names as written: its `tool`, and a `call_tool` step's `tool_name` unless a template. Only
    these may be workflow-only tools: a rendered name is its client's choice, and through it any client could call
    a tool the operator served to workflows alone."""
    names = {step.tool} if step.tool is not None else set()
    target = step.arguments.get("tool_name") if step.tool == CALL_TOOL else None
    if isinstance(target, str) and "{{" not in target and "{%" not in target:
        names.add(target)
    return frozenset(names)


def nesting_refused(workflow: str, chain: tuple[str, ...]) -> str | None:
    """Why `workflow` may not run under the workflows of `chain` (a step's call, directly or through
    call_tool), or None. Refused at once rather than left to the run's timeout: each level holds its
    caller's slots and cancel scopes, and a workflow calling itself would grow until the timeout."""
    path = " -> ".join((*chain, workflow))
    if workflow in chain:
        return f"workflow '{workflow}' is already running in this call chain ({path}): a workflow may not call itself"
    if len(chain) >= MAX_WORKFLOW_DEPTH:
        return f"workflows nest at most {MAX_WORKFLOW_DEPTH} deep, and this call would be deeper ({path})"
    return None


def with_defaults(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments, with each missing top-level property's `default`."""
    properties = schema.get("properties") or {}
    defaults = {k: p["default"] for k, p in properties.items() if isinstance(p, dict) and "default" in p}
    return {**defaults, **arguments}


def argument_problems(name: str, exc: ArgumentError) -> str:
    """Every problem of the arguments, one a line, not only the first (as `vmcp workflow run` lists them)."""
    if len(exc.problems) <= 1:
        return str(exc)
    return f"invalid arguments for tool '{name}':\n" + "\n".join(f"  {problem}" for problem in exc.problems)


def run_result(report: RunReport) -> types.CallToolResult:
    """Success: the output as JSON text, and as structured content when it is an object. Failure: an error
    result naming the failed step and the reason, with every step's status."""
    if report.ok:
        try:  # written by the run, off the event loop when large (json.dumps holds the GIL until it is done)
            text = report.text if report.text is not None else output_text(report.output)
        except (ValueError, RecursionError):  # a circular or too deeply nested output
            return error_result(f"workflow '{report.workflow}' failed: its output is nested too deeply to send")
        structured = report.output if isinstance(report.output, dict) else None
        if report.content:  # the last step's blocks as they came: its images and links are part of the answer
            return types.CallToolResult.model_validate({"content": report.content, "structuredContent": structured})
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)
    statuses = ", ".join(f"{s.id}: {s.status}" for s in report.steps.values())
    message = f"workflow '{report.workflow}' failed: {report.error}\nsteps: {statuses}"
    return error_result(message)
