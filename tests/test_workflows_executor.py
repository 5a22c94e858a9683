"""The workflow executor on its own: the graph, parallelism, on_error, timeouts, for_each, templates.

Steps call a fake tool function of the test's own; tests/test_workflows_gateway.py runs them through the
router over real backends.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
import pytest

from vmcp_opt.config.workflows import WorkflowConfig
from vmcp_opt.workflows.executor import RunReport, StepReport, WorkflowRun

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ok(value: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(value))])


def failed(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


class Tools:
    """`echo` returns its arguments; `sleep` waits `seconds`; `flaky` fails its first `fail` calls."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        self.running = 0
        self.most_running = 0
        self.cancelled = 0

    async def __call__(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        self.calls.append((tool, arguments))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if tool == "sleep":
                await anyio.sleep(arguments.get("seconds", 0.05))
            if tool == "flaky" and len([c for c in self.calls if c[0] == "flaky"]) <= self.fail:
                return failed("temporary failure")
            if tool == "broken":
                return failed("broken for good")
            return ok(arguments)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


def workflow(steps: list[dict[str, Any]], **fields: Any) -> WorkflowConfig:
    return WorkflowConfig.model_validate({"name": "wf", "description": "a test workflow", "steps": steps, **fields})


async def run(wf: WorkflowConfig, tools: Tools, params: dict[str, Any] | None = None, **kw: Any) -> RunReport:
    async def no_sleep(seconds: float) -> None:
        kw.setdefault("slept", []).append(seconds)

    return await WorkflowRun(wf, params or {}, tools, sleep=kw.get("sleep", no_sleep)).run()


async def test_a_step_reads_params_and_earlier_steps_with_types_kept() -> None:
    wf = workflow(
        [
            {"id": "a", "tool": "echo", "arguments": {"n": "{{ params.n }}", "label": "n is {{ params.n }}"}},
            {"id": "b", "tool": "echo", "depends_on": ["a"], "arguments": {"twice": "{{ steps.a.output.n * 2 }}"}},
        ]
    )
    report = await run(wf, Tools(), {"n": 21})
    assert report.ok, report.error
    assert report.steps["a"].output == {"n": 21, "label": "n is 21"}
    assert report.output == {"twice": 42}  # no output mapping: the last step's


async def test_independent_steps_run_at_once_and_dependants_wait() -> None:
    tools = Tools()
    steps = [{"id": f"s{i}", "tool": "sleep", "arguments": {"seconds": 0.1}} for i in range(4)]
    steps.append({"id": "last", "tool": "echo", "depends_on": [f"s{i}" for i in range(4)]})
    report = await run(workflow(steps), tools)
    assert report.ok
    assert tools.most_running == 4
    assert report.order[-1] == "last"


async def test_max_parallel_bounds_calls_in_flight() -> None:
    tools = Tools()
    steps = [{"id": f"s{i}", "tool": "sleep", "arguments": {"seconds": 0.02}} for i in range(6)]
    await run(workflow(steps, max_parallel=2), tools)
    assert tools.most_running == 2


async def test_abort_stops_the_run_and_names_the_step() -> None:
    tools = Tools()
    wf = workflow(
        [
            {"id": "bad", "tool": "broken"},
            {"id": "slow", "tool": "sleep", "arguments": {"seconds": 5}},
            {"id": "after", "tool": "echo", "depends_on": ["bad"]},
        ]
    )
    report = await run(wf, tools)
    assert report.failed_step == "bad"
    assert report.error == "step 'bad' failed: broken for good"
    assert tools.cancelled == 1  # the running sibling was cancelled
    assert report.steps["after"].status == "pending"


async def test_continue_skips_dependants_unless_a_default_result_stands_in() -> None:
    wf = workflow(
        [
            {"id": "bad", "tool": "broken", "on_error": "continue"},
            {"id": "child", "tool": "echo", "depends_on": ["bad"]},
            {"id": "grandchild", "tool": "echo", "depends_on": ["child"]},
            {"id": "soft", "tool": "broken", "on_error": "continue", "default_result": {"v": 0}},
            {
                "id": "uses_soft",
                "tool": "echo",
                "depends_on": ["soft"],
                "arguments": {"v": "{{ steps.soft.output.v }}"},
            },
        ]
    )
    report = await run(wf, Tools())
    assert report.ok
    assert report.steps["bad"].status == "failed"
    assert [report.steps[s].status for s in ("child", "grandchild")] == ["skipped", "skipped"]
    assert report.steps["child"].error == "not run: step 'bad' failed"
    assert report.steps["uses_soft"].output == {"v": 0}


async def test_retry_backs_off_exponentially_up_to_the_cap() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    tools = Tools(fail=3)
    retry = {"action": "retry", "retries": 4, "delay": 1, "multiplier": 3, "max_delay": 5}
    wf = workflow([{"id": "f", "tool": "flaky", "on_error": retry}])
    report = await WorkflowRun(wf, {}, tools, sleep=sleep).run()
    assert report.ok
    assert report.steps["f"].attempts == 4
    assert slept == [1, 3, 5]


async def test_retries_exhausted_abort_with_the_count() -> None:
    tools = Tools(fail=10)
    wf = workflow([{"id": "f", "tool": "flaky", "on_error": {"action": "retry", "retries": 2, "delay": 0}}])
    report = await run(wf, tools)
    assert report.error == "step 'f' failed: temporary failure (after 3 attempts)"


async def test_condition_false_skips_with_the_default_result() -> None:
    wf = workflow(
        [
            {"id": "maybe", "tool": "echo", "condition": "{{ params.go }}", "default_result": "nothing"},
            {"id": "then", "tool": "echo", "depends_on": ["maybe"], "arguments": {"s": "{{ steps.maybe.status }}"}},
        ],
        output={"maybe": "{{ steps.maybe.output }}", "status": "{{ steps.then.output.s }}"},
    )
    report = await run(wf, Tools(), {"go": False})
    assert report.output == {"maybe": "nothing", "status": "skipped"}


async def test_step_and_workflow_timeouts() -> None:
    step_timeout = workflow([{"id": "slow", "tool": "sleep", "arguments": {"seconds": 5}, "timeout": 0.05}])
    report = await run(step_timeout, Tools())
    assert report.error == "step 'slow' failed: timed out after 0.05s"
    tools = Tools()
    whole = workflow([{"id": "slow", "tool": "sleep", "arguments": {"seconds": 5}}], timeout=0.05)
    report = await run(whole, tools)
    assert report.timed_out and report.error == "timed out after 0.05s (still running: slow)"
    assert tools.cancelled == 1


async def test_a_template_failing_at_run_time_names_the_step_and_place() -> None:
    wf = workflow([{"id": "a", "tool": "echo", "arguments": {"x": "{{ params.missing.deeper }}"}}])
    report = await run(wf, Tools())
    assert report.failed_step == "a"
    assert report.error is not None and report.error.startswith("step 'a' failed: arguments.x: UndefinedError:")


async def test_for_each_calls_per_item_in_order_bounded_and_fails_on_too_many() -> None:
    tools = Tools()
    wf = workflow(
        [
            {
                "id": "each",
                "type": "for_each",
                "tool": "sleep",
                "over": "{{ params.zones }}",
                "item": "zone",
                "max_parallel": 2,
                "arguments": {"zone": "{{ zone }}", "i": "{{ index }}", "seconds": 0.02},
            }
        ]
    )
    report = await run(wf, tools, {"zones": ["a", "b", "c", "d", "e"]})
    assert report.ok
    assert [o["zone"] for o in report.output] == ["a", "b", "c", "d", "e"]
    assert tools.most_running == 2
    too_many = workflow([{"id": "each", "type": "for_each", "tool": "echo", "over": "[1, 2, 3]", "max_iterations": 2}])
    report = await run(too_many, Tools())
    assert report.error == "step 'each' failed: over: 3 items, more than max_iterations (2)"


async def test_fromjson_and_tojson_filters() -> None:
    wf = workflow(
        [
            {
                "id": "a",
                "tool": "echo",
                "arguments": {"v": "{{ (params.raw | fromjson).k }}", "s": "{{ params | tojson }}"},
            }
        ]
    )
    report = await run(wf, Tools(), {"raw": '{"k": [1]}'})
    assert report.output == {"v": [1], "s": '{"raw": "{\\"k\\": [1]}"}'}


async def test_the_sandbox_refuses_internals() -> None:
    wf = workflow([{"id": "a", "tool": "echo", "arguments": {"x": "{{ params.__class__.__mro__ }}"}}])
    report = await run(wf, Tools(), {})
    assert not report.ok and "step 'a' failed: arguments.x" in (report.error or "")


async def test_templates_cannot_build_huge_values() -> None:
    for source in ("{{ 'x' * 10**8 }}", "{{ 2 ** 100000 }}", "{{ [0] * 2000000 }}"):
        wf = workflow([{"id": "a", "tool": "echo", "arguments": {"x": source}}])
        report = await run(wf, Tools())
        assert report.error is not None and "SecurityError" in report.error, source
    fine = workflow([{"id": "a", "tool": "echo", "arguments": {"x": "{{ 'ab' * 3 }}", "n": "{{ 2 ** 10 }}"}}])
    assert (await run(fine, Tools())).output == {"x": "ababab", "n": 1024}


async def test_each_finished_step_is_reported_once() -> None:
    seen: list[tuple[str, str]] = []

    async def on_step(step: StepReport) -> None:
        seen.append((step.id, step.status))

    wf = workflow([{"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "depends_on": ["a"]}])
    await WorkflowRun(wf, {}, Tools(), on_step).run()
    assert seen == [("a", "ok"), ("b", "ok")]


async def test_cancelling_the_run_reaches_running_calls() -> None:
    tools = Tools()
    wf = workflow([{"id": "slow", "tool": "sleep", "arguments": {"seconds": 5}}])
    with anyio.move_on_after(0.05):
        await WorkflowRun(wf, {}, tools).run()
    assert tools.cancelled == 1


# --- through the router: WorkflowTools as a provider ---------------------------------------------------


async def test_every_step_goes_through_the_router_and_its_policy() -> None:
    from tests.test_router import EchoProvider, RecordingPolicy, bare_router, caller, text
    from vmcp_opt.arguments import ArgumentValidator
    from vmcp_opt.routing import Exchange
    from vmcp_opt.workflows.provider import WorkflowTools

    router = bare_router()
    definitions = [
        workflow([{"id": "a", "tool": "alpha"}, {"id": "b", "tool": "beta", "depends_on": ["a"]}]),
        WorkflowConfig.model_validate(
            {"name": "denied_step", "description": "d", "steps": [{"id": "x", "tool": "secret"}]}
        ),
    ]
    router.add_provider(WorkflowTools(definitions, router.catalog, ArgumentValidator()))
    echo = EchoProvider("echo", ["alpha", "beta", "secret"])
    router.add_provider(echo)
    router.policy = policy = RecordingPolicy({"secret"}, reason="not for workflows")
    result = await router.call_tool(caller("c1"), "wf", {}, Exchange.internal())
    assert not result.is_error, text(result)
    assert [t.name for _, t in policy.asked] == ["wf", "alpha", "beta"]
    assert echo.calls == [("c1", "alpha"), ("c1", "beta")]  # as the workflow's caller
    assert text(result) == "echo:c1"
    refused = await router.call_tool(caller("c1"), "denied_step", {}, Exchange.internal())
    assert refused.is_error
    # The caller may not see `secret`: the refusal names the step, not the tool or the policy's reason.
    assert "step 'x' failed: not permitted: caller 'c1' may not make this step's call" in text(refused)
    assert "secret" not in text(refused) and "not for workflows" not in text(refused)
    assert [t.name for t in router.visible_tools(caller("c1"))][:2] == ["wf", "denied_step"]


# --- elicitation steps ---------------------------------------------------------------------------------

FORM = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}


def asking(action: str, content: dict[str, Any] | None = None) -> Any:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def ask(message: str, schema: dict[str, Any]) -> dict[str, Any]:
        asked.append((message, schema))
        return {"action": action, **({"content": content} if content is not None else {})}

    ask.asked = asked  # type: ignore[attr-defined]
    return ask


def elicit_then_save(**step: Any) -> WorkflowConfig:
    return workflow(
        [
            {
                "id": "ask",
                "type": "elicitation",
                "message": "Title for {{ params.who }}?",
                "requested_schema": FORM,
                **step,
            },
            {"id": "save", "tool": "echo", "depends_on": ["ask"], "arguments": {"answer": "{{ steps.ask.output }}"}},
        ]
    )


async def test_an_accepted_question_feeds_the_next_step() -> None:
    ask = asking("accept", {"title": "Dr"})
    report = await WorkflowRun(elicit_then_save(), {"who": "Ada"}, Tools(), ask=ask).run()
    assert report.ok, report.error
    assert ask.asked == [("Title for Ada?", FORM)]
    assert report.output == {"answer": {"action": "accept", "content": {"title": "Dr"}}}


async def test_decline_and_cancel_abort_or_continue_as_the_step_says() -> None:
    declined = await WorkflowRun(elicit_then_save(), {"who": "A"}, Tools(), ask=asking("decline")).run()
    assert declined.error == "step 'ask' failed: the user chose 'decline'"
    cancelled = await WorkflowRun(
        elicit_then_save(on_cancel="continue"), {"who": "A"}, Tools(), ask=asking("cancel")
    ).run()
    assert cancelled.ok and cancelled.output == {"answer": {"action": "cancel"}}


async def test_a_question_nobody_can_answer_or_nobody_answers_fails_the_step() -> None:
    nobody = await WorkflowRun(elicit_then_save(), {"who": "A"}, Tools()).run()
    assert nobody.error == "step 'ask' failed: this run cannot ask its client anything"

    async def never(message: str, schema: dict[str, Any]) -> dict[str, Any]:
        await anyio.sleep(10)
        raise AssertionError

    late = await WorkflowRun(elicit_then_save(timeout=0.05), {"who": "A"}, Tools(), ask=never).run()
    assert late.error == "step 'ask' failed: the user did not answer within 0.05s"


async def test_a_tool_text_nested_too_deeply_to_parse_is_kept_as_text() -> None:
    deep = "[" * 5000 + "]" * 5000

    async def deep_text(tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=deep)])

    report = await WorkflowRun(workflow([{"id": "a", "tool": "t"}]), {}, deep_text).run()
    assert report.ok and report.output == deep


async def test_nested_runs_share_the_outermost_run_s_call_budget_which_ends_with_it() -> None:
    """As the provider does: a step calling a workflow starts a run inside the step's call. The inner runs'
    calls count against the outer run's 1,000; a run started after it, in the same task, has its own."""
    inner = workflow(
        [{"id": "each", "type": "for_each", "tool": "echo", "over": "{{ range(30)|list }}", "max_iterations": 10_000}]
    )
    tools = Tools()

    async def call(tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        if tool != "inner":
            return await tools(tool, arguments)
        report = await WorkflowRun(inner, {}, tools).run()
        return ok(report.output) if report.ok else failed(report.error or "")

    outer = workflow([{"id": "fan", "type": "for_each", "tool": "inner", "over": "{{ range(40)|list }}"}])
    report = await WorkflowRun(outer, {}, call).run()
    assert not report.ok and report.failed_step == "fan"
    assert "the calls of workflows it runs included (workflows[].max_calls" in (report.error or "")
    assert report.calls <= 1000 and len(tools.calls) < 1000  # not the 40 * 30 asked for

    again = await WorkflowRun(inner, {}, tools).run()
    assert again.ok and again.calls == 30
