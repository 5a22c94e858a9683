"""A 2026-07-28 client's rounds in the gateway's telemetry: a request answered with an `InputRequiredResult` is
`input_required` in the metrics and its span, as in the audit log; a retry refused before its round goes on (the
run it names is gone, its `requestState` does not verify) is audited; a gateway stopped while a workflow run waits
for its client writes the run's `cancelled` end. A real `vmcp serve` in front of the conformance backend, with the
audit log in a file, metrics and traces on (an OTLP/HTTP receiver started here), a real SDK client on 2026-07-28."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client.parser import text_string_to_metric_families

from tests.support import EXAMPLES, Gateway, running_gateway, stop_process, write_config
from tests.test_telemetry_export import attributes, otlp_receiver, spans_of
from tests.test_workflow_audit27 import asking_workflow, events_since, lines

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
WORKFLOW = "ask_then_succeed"
Served = tuple[Gateway, Path, list[ExportTraceServiceRequest]]
SAMPLED = types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="x"), model="m")
ELICITED = types.ElicitResult(action="accept", content={"word": "yes"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway_config(directory: Path, telemetry: dict[str, Any]) -> Path:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "workflows": [asking_workflow(WORKFLOW, "test_simple_text")],
        "telemetry": telemetry,
        "health": {"interval": 600},
    }
    return write_config(directory, config)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("telemetry28")
    # With data: `events_since` waits for a marker call's arguments in the log.
    telemetry = {
        "audit": {"enabled": True, "output": "audit.log", "include_data": True},
        "metrics": {"enabled": True},
        "tracing": {"enabled": True},
    }
    with otlp_receiver() as (endpoint, received, _):
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with running_gateway(gateway_config(directory, telemetry), env=env) as gateway:
            yield gateway, directory / "audit.log", received


async def _sample(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return SAMPLED


async def _elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return ELICITED


def client(gateway: Gateway) -> Client:
    """A 2026-07-28 client that can be asked for sampling and elicitation (the tests answer by hand)."""
    transport = streamable_http_client(gateway.url, http_client=httpx2.AsyncClient(timeout=60))
    return Client(transport, mode="2026-07-28", sampling_callback=_sample, elicitation_callback=_elicit)  # type: ignore[arg-type]


def requests_counted(gateway: Gateway) -> dict[str, float]:
    """`mcp_server_operation_duration_seconds_count` of tools/call, by outcome, from the gateway's /metrics."""
    text = httpx2.get(f"{gateway.base}/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mcp_server_operation_duration_seconds_count" and sample.labels["method"] == "tools/call":
                counts[sample.labels["outcome"]] = sample.value
    return counts


async def server_spans(received: list[ExportTraceServiceRequest], name: str, count: int) -> list[Span]:
    """The SERVER spans called `name` once `count` of them were exported (the batch leaves every 100 ms)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = [s for s in spans_of(received) if s.kind == Span.SPAN_KIND_SERVER and s.name == name]
        if len(spans) >= count:
            return spans
        await anyio.sleep(0.05)
    raise AssertionError(f"fewer than {count} SERVER spans {name!r} exported within 30 s")


def answers(asked: types.InputRequiredResult, answer: types.InputResponse = ELICITED) -> types.InputResponses:
    assert asked.input_requests
    return {key: answer for key in asked.input_requests}


async def test_a_request_answered_with_a_question_is_input_required_in_metrics_and_its_span(served: Served) -> None:
    gateway, _, received = served
    before = requests_counted(gateway)
    async with client(gateway) as alice:
        asked = await alice.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
        assert isinstance(asked, types.InputRequiredResult)
        counted = requests_counted(gateway)
        done = await alice.session.call_tool(
            "test_sampling",
            {"prompt": "q"},
            input_responses=answers(asked, SAMPLED),
            request_state=asked.request_state,
            allow_input_required=True,
        )
    assert isinstance(done, types.CallToolResult) and not done.is_error

    # The question is no request served yet: it is not counted a success.
    grown = {outcome: counted.get(outcome, 0) - before.get(outcome, 0) for outcome in counted}
    assert {outcome: n for outcome, n in grown.items() if n} == {"input_required": 1}

    spans = await server_spans(received, "tools/call test_sampling", 2)
    outcomes = {attributes(s)["vmcp.outcome"]: s for s in spans}
    assert sorted(outcomes) == ["input_required", "success"]
    question = outcomes["input_required"]
    assert question.status.code == Status.STATUS_CODE_UNSET  # not an error of anyone's
    assert "error.type" not in attributes(question)


async def test_a_retry_naming_a_run_that_has_ended_is_audited_as_refused(served: Served) -> None:
    gateway, log, _ = served
    start = len(lines(log))
    async with client(gateway) as alice:
        asked = await alice.session.call_tool(WORKFLOW, {}, allow_input_required=True)
        assert isinstance(asked, types.InputRequiredResult) and asked.request_state
        state = asked.request_state
        done = await alice.session.call_tool(
            WORKFLOW, {}, input_responses=answers(asked), request_state=state, allow_input_required=True
        )
        assert isinstance(done, types.CallToolResult) and not done.is_error
        with pytest.raises(MCPError) as refused:  # the same retry again: its run has ended
            await alice.session.call_tool(
                WORKFLOW, {}, input_responses=answers(asked), request_state=state, allow_input_required=True
            )
        assert "names no pending workflow run" in refused.value.error.message
        events = await events_since(alice, log, start)

    flagged = [e for e in events if e["metadata"]["extra"].get("round_refused")]
    assert [(e["type"], e["outcome"], e["metadata"]["extra"]["error_type"]) for e in flagged] == [
        ("mcp_tool_call", "failure", str(types.INVALID_PARAMS))
    ]
    assert flagged[0]["target"]["name"] == WORKFLOW
    ends = [e for e in events if e["type"] in {"workflow_completed", "workflow_failed", "workflow_timed_out"}]
    assert [e["outcome"] for e in ends] == ["success"]  # the refused retry is no second end of the run
    assert state not in log.read_text(encoding="utf-8")


async def test_a_retry_whose_request_state_does_not_verify_is_audited_as_denied(served: Served) -> None:
    gateway, log, _ = served
    start = len(lines(log))
    async with client(gateway) as alice:
        asked = await alice.session.call_tool(WORKFLOW, {}, allow_input_required=True)
        assert isinstance(asked, types.InputRequiredResult) and asked.request_state
        forged = asked.request_state[:-6] + ("AAAAAA" if not asked.request_state.endswith("AAAAAA") else "BBBBBB")
        with pytest.raises(MCPError) as refused:
            await alice.session.call_tool(
                WORKFLOW, {}, input_responses=answers(asked), request_state=forged, allow_input_required=True
            )
        assert refused.value.error.message == "Invalid or expired requestState"
        events = await events_since(alice, log, start)

    flagged = [e for e in events if e["metadata"]["extra"].get("round_refused")]
    assert [(e["type"], e["outcome"], e["metadata"]["extra"]["error_type"]) for e in flagged] == [
        ("mcp_tool_call", "denied", "invalid_request_state")
    ]
    assert flagged[0]["target"]["name"] == WORKFLOW
    written = log.read_text(encoding="utf-8")
    assert forged not in written and asked.request_state not in written


async def test_a_gateway_stopped_while_a_run_waits_for_its_client_writes_the_runs_cancelled_end(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.log"
    config = gateway_config(tmp_path, {"audit": {"enabled": True, "output": "audit.log"}})
    with running_gateway(config) as gateway:
        async with client(gateway) as alice:
            asked = await alice.session.call_tool(WORKFLOW, {}, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult)
        stop_process(gateway.proc)  # SIGTERM: the run still waits for the answer
        assert gateway.proc.returncode == 0, gateway.output()

    run = [e for e in lines(log) if e["target"].get("workflow_name") == WORKFLOW]
    assert [e["type"] for e in run].count("workflow_started") == 1
    ends = [e for e in run if e["type"] in {"workflow_completed", "workflow_failed", "workflow_timed_out"}]
    assert [(e["type"], e["outcome"]) for e in ends] == [("workflow_failed", "cancelled")]
    assert {e["target"]["workflow_id"] for e in run} == {run[0]["target"]["workflow_id"]}


async def test_a_run_still_going_when_the_audit_log_closes_ends_cancelled_in_it(tmp_path: Path) -> None:
    """A run stuck past the stop's wait for the runs it cancelled (`RUNS_END_WAIT`): the log's close writes its end,
    and what the run reports later is not written. The real log and run events; the run itself never ends here."""
    from vmcp_opt.auth import Caller, Identification
    from vmcp_opt.config import AuditConfig
    from vmcp_opt.config.workflows import WorkflowConfig
    from vmcp_opt.routing.operations import Operation
    from vmcp_opt.telemetry.audit import AuditLog
    from vmcp_opt.workflows.provider import WORKFLOW_SOURCE

    log = AuditLog(AuditConfig(enabled=True, output=str(tmp_path / "audit.log")))
    workflow = WorkflowConfig.model_validate(asking_workflow(WORKFLOW, "test_simple_text"))
    call = Operation("tools/call", Caller("c", Identification.ANONYMOUS, "2026-07-28"), target=WORKFLOW)
    call.backend = WORKFLOW_SOURCE
    log.operation_started(call)
    run = log.workflow_run(call, workflow)
    call.error = "input_required"  # its call answered with the run's question (routing/operations.py `watched`)
    log.operation_finished(call)
    log.close()
    run.run_stopped(anyio.get_cancelled_exc_class()())  # too late: the log is closed, nothing more is written

    events = lines(tmp_path / "audit.log")
    assert [(e["type"], e["outcome"]) for e in events] == [
        ("workflow_started", "success"),
        ("workflow_failed", "cancelled"),
    ]
    assert {e["target"]["workflow_id"] for e in events} == {events[0]["target"]["workflow_id"]}
