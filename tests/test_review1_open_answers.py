"""A POST answering the backend's own request (roots, sampling, elicitation) carries the backend's id, which may be
the id of one of the gateway's requests in flight: it must not take that request's place in `OpenAnswers`."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from vmcp_opt.backends.open_answers import AnswerClient, OpenAnswers, request_id

pytestmark = pytest.mark.anyio
URL = "http://backend.test/mcp"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sdk_body(message: types.JSONRPCMessage) -> dict[str, Any]:
    """What the SDK's streamable HTTP client posts for `message` (mcp/client/streamable_http.py)."""
    return message.model_dump(by_alias=True, mode="json", exclude_unset=True)


def test_only_a_request_post_has_a_request_id() -> None:
    ours = types.JSONRPCRequest(jsonrpc="2.0", id=5, method="tools/call", params={"name": "slow"})
    theirs = types.JSONRPCResponse(jsonrpc="2.0", id=5, result={"roots": []})
    refused = types.JSONRPCError(jsonrpc="2.0", id="x", error=types.ErrorData(code=-1, message="no"))
    assert request_id(httpx2.Request("POST", URL, json=sdk_body(ours))) == 5
    assert request_id(httpx2.Request("POST", URL, json=sdk_body(theirs))) is None
    assert request_id(httpx2.Request("POST", URL, json=sdk_body(refused))) is None


async def test_answering_the_backends_request_of_the_same_id_leaves_our_call_abandonable() -> None:
    answers = OpenAnswers()
    started = anyio.Event()

    async def backend(request: httpx2.Request) -> httpx2.Response:
        if b'"method"' in request.content:  # our request: a tool that never answers
            started.set()
            await anyio.sleep_forever()
        return httpx2.Response(202)  # the backend took our answer to its roots/list

    ours = types.JSONRPCRequest(jsonrpc="2.0", id=5, method="tools/call", params={"name": "slow"})
    theirs = types.JSONRPCResponse(jsonrpc="2.0", id=5, result={"roots": []})
    bodies: list[bytes] = []
    async with AnswerClient(transport=httpx2.MockTransport(backend), backend="b", answers=answers) as client:

        async def call() -> None:
            async with client.stream("POST", URL, json=sdk_body(ours)) as response:
                bodies.append(await response.aread())

        with anyio.fail_after(30):  # a guard: without the fix the call below would wait for ever
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                await started.wait()
                async with client.stream("POST", URL, json=sdk_body(theirs)) as response:
                    assert response.status_code == 202
                # Our request is still the one a cancellation of id 5 reaches (it was overwritten, then removed).
                assert len(answers) == 1
                answers.abandon(5)
    answer = json.loads(bodies[0])
    assert answer["id"] == 5 and "stopped waiting" in answer["error"]["message"]
    assert len(answers) == 0


async def test_a_request_whose_body_was_read_in_full_leaves_no_entry() -> None:
    answers = OpenAnswers()

    async def backend(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": {}})

    async with AnswerClient(transport=httpx2.MockTransport(backend), backend="b", answers=answers) as client:
        for n in range(3):
            ours = types.JSONRPCRequest(jsonrpc="2.0", id=n, method="ping")
            response = await client.post(URL, json=sdk_body(ours))  # not streamed: read and closed within `send`
            assert response.json()["id"] == n
    assert len(answers) == 0
