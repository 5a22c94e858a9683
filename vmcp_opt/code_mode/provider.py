"""The script tool: a provider of the router, like the meta-tools and the workflows.

A call starts a child process (`code_mode/runner.py`) that interprets the script and asks for tool calls over
its pipes; each is `router.call_tool` with the script's caller, so the policy, rate limits, argument checks,
audit and usage learning see every call as the caller's own (unlike ToolHive's code mode, the script tool is
itself a tool the policy judges: a Cedar policy can refuse it to a principal). Nothing the script does runs on
the event loop: the gateway reads bounded JSON lines and makes the calls. The process runs without the
gateway's environment (no secrets to read, were the interpreter to escape) and its script never reaches `ps`.

At ~450 lines: the tool's listing, its run slots and the relay of a script's calls to the router are one
run's life; the child process's side is code_mode/runner.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from vmcp_opt.auth.caller import caller_key
from vmcp_opt.config.code_mode import CodeModeConfig
from vmcp_opt.routing import ProvidedTool, ToolCall, error_result
from vmcp_opt.routing.budget import Budget, LimitReached
from vmcp_opt.routing.providers import GATEWAY_SOURCE
from vmcp_opt.routing.round_trips import InputRequired

logger = logging.getLogger(__name__)

# What the child's answers and errors may add to a result's bytes (its JSON framing).
LINE_SLACK = 64 * 1024
# The pipe carries JSON lines in UTF-8 (`ensure_ascii=False` both ways): sizes are a client's bytes and the router's
# characters, not 6- or 12-byte escapes. JSON escapes a string's newlines, and `surrogatepass` writes a lone
# surrogate as three bytes none of which is one (`json.loads` of bytes reads them back): a line stays a line.
ENCODING = ("utf-8", "surrogatepass")
# A script's result (JSON) up to this size is also its structured content; a larger one is text only: parsed
# on the event loop, a megabyte of `[]`s is a million objects (0.9 s and 185 MB, measured).
STRUCTURED_MOST = 64 * 1024
# The child's error output kept to explain a death (Rust's allocation failure, a Python traceback).
STDERR_TAIL = 4096
# What the interpreter writes when an allocation fails under RLIMIT_AS (Rust, pyo3, Python).
OUT_OF_MEMORY = (b"memory allocation", b"out of memory", b"MemoryError")

EXAMPLE = """\
weather = call_tool("get_weather", {"city": city})
forecasts = call_tools([["get_forecast", {"city": c}] for c in neighbours])
return {"here": weather, "around": [f["summary"] for f in forecasts]}"""

DESCRIPTION = f"""\
Run a Starlark script (a small Python: def, for, if, comprehensions, lambda; no while, imports, \
files or clock) that calls this server's tools, and get back only what it returns. Use it to chain calls or \
fan them out in one request instead of one request per call.
- `call_tool(name, arguments)` calls a tool and returns its value: its structured content, else its text \
(parsed when it is JSON). A failed call stops the script with the tool's error.
- `call_tools([[name, arguments], ...])` makes the calls at once and returns their values in order.
- The keys of `data` are variables of the script.
- The script's result is its `return` value, or its last expression's; it must be JSON (dicts, lists, \
strings, numbers, booleans, None).
Find tool names with find_tool when it is offered. Example:
{EXAMPLE}"""


def input_schema(max_script_bytes: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "script": {"type": "string", "minLength": 1, "maxLength": max_script_bytes, "examples": [EXAMPLE]},
            "data": {
                "type": "object",
                "description": "Values the script reads as variables, by name (e.g. the cities to look up).",
            },
        },
        "required": ["script"],
        "additionalProperties": False,
    }


class ScriptFailed(Exception):
    """The run ended without a result: the message is the caller's to read."""


class ScriptTools:
    """The one script tool (`code_mode.tool_name`), listed in `tools/list` whether or not the optimizer is on."""

    searchable = False  # a way of calling tools, not one find_tool should offer for a task

    def __init__(self, config: CodeModeConfig, max_result_bytes: int, max_call_bytes: int) -> None:
        self.config = config
        self.max_result_bytes = max_result_bytes
        self.max_call_bytes = max_call_bytes  # a call's arguments from a script, as a client's request body
        tool = types.Tool(
            name=config.tool_name,
            description=DESCRIPTION,
            input_schema=input_schema(config.max_script_bytes),
            annotations=types.ToolAnnotations(title="Run a script of tool calls", open_world_hint=True),
        )
        self._provided = ProvidedTool(config.tool_name, tool, GATEWAY_SOURCE, config.tool_name)
        command = [
            sys.executable,
            "-I",
            "-m",
            "vmcp_opt.code_mode.runner",
            str(config.cpu_seconds),
            str(config.memory_mb),
        ]
        self.spare = Spare(command)
        # The gateway's long-lived task group (`attach`): spares start there, off every call's path.
        self._task_group: TaskGroup | None = None
        self.runs = Budget(
            "scripts running",
            total=config.runs.total,
            per_caller=config.runs.per_caller,
            retry_after=1.0,
            total_setting="code_mode.runs.total",
            caller_setting="code_mode.runs.per_caller",
        )

    def attach(self, task_group: TaskGroup) -> None:
        """Start spares in `task_group` from now on, the first at once: no call waits for one to start."""
        self._task_group = task_group
        task_group.start_soon(self.spare.refill, name="code-mode-spare")

    def tools(self) -> Mapping[str, ProvidedTool]:
        return {self._provided.name: self._provided}

    def listed(self) -> Sequence[ProvidedTool]:
        return [self._provided]

    def why_unavailable(self, name: str) -> str | None:
        return None

    async def call(self, call: ToolCall) -> types.CallToolResult:
        problem = self._argument_problem(call.arguments)
        if problem is not None:
            return error_result(problem)
        if self.config.tool_name in call.exchange.workflow_chain:
            return error_result("a script cannot run another script")
        key = caller_key(call.caller)
        try:
            self.runs.acquire(key)
        except LimitReached as refused:
            return error_result(refused.error.message)
        try:
            return await self._run(call)
        except ScriptFailed as failed:
            return error_result(f"the script failed: {failed}")
        finally:
            self.runs.release(key)

    def _argument_problem(self, arguments: Mapping[str, Any] | None) -> str | None:
        arguments = arguments or {}
        script, data = arguments.get("script"), arguments.get("data")
        if unknown := sorted(set(arguments) - {"script", "data"}):
            return f"unknown argument(s): {', '.join(map(repr, unknown))}; pass `script` and `data`"
        if not isinstance(script, str) or not script.strip():
            return "`script` is required: the Starlark source to run"
        if data is not None and not isinstance(data, dict):
            return f"`data` is an object of named values, not {type(data).__name__}"
        try:
            encoded_data = json.dumps(data, ensure_ascii=False, allow_nan=False) if data else ""
        except ValueError as error:  # 1e400 or NaN in the request: read as inf and nan, which Starlark cannot take
            return f"`data` has no JSON form: {_non_finite(data) or error} (JSON's numbers are finite)"
        size = len(script.encode(*ENCODING)) + len(encoded_data.encode(*ENCODING))
        if size > self.config.max_script_bytes:
            return f"the script and its data are {size} bytes; at most {self.config.max_script_bytes} (code_mode.max_script_bytes)"
        return None

    async def _run(self, call: ToolCall) -> types.CallToolResult:
        """The script's value as the call's result, once its process has ended; `ScriptFailed` for anything else."""
        arguments = call.arguments or {}
        request = {"script": arguments["script"], "data": arguments.get("data") or {}}
        try:
            process = await self.spare.take()
        except OSError as error:  # out of processes, descriptors or memory
            raise ScriptFailed(f"its interpreter could not start: {error.strerror or error}") from None
        run = _Run(self, call, process)
        try:
            if self._task_group is not None:  # attached by the gateway's start; unattached, `take` starts its own
                self._task_group.start_soon(self.spare.refill, name="code-mode-spare")  # the next script's
            with anyio.fail_after(self.config.timeout):
                return await run.converse(request)
        except TimeoutError:
            raise ScriptFailed(f"it ran past its deadline ({self.config.timeout:g} s, code_mode.timeout)") from None
        finally:
            await _reap(process)


class Spare:
    """One interpreter started ahead of the next script: loading Python and starlark takes ~35 ms, most of a
    one-call script's time (bench/code_mode.py). A process runs one script only: a spare has run none, so no
    script's state reaches another's. Idle, it waits on its stdin (its CPU allowance is not spent waiting) and
    ends when the gateway does (its stdin closes), or at `stop`."""

    def __init__(self, command: list[str]) -> None:
        self._command = command
        self._process: Process | None = None
        self._starting = False
        self._stopped = False

    async def take(self) -> Process:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            return process
        if process is not None:
            await _reap(process)  # it died idle: killed from outside, or the machine ran out of memory
        return await _start(self._command)

    async def refill(self) -> None:
        if self._process is not None or self._starting or self._stopped:
            return
        self._starting = True
        try:
            with anyio.CancelScope(shield=True):  # started, it must be kept (or it would be reaped by no one)
                self._process = await _start(self._command)
        except OSError as error:  # out of processes or descriptors: the next script starts its own (and says why)
            logger.warning("code mode: no spare interpreter: %s", error)
        finally:
            self._starting = False

    def stop(self) -> None:
        self._stopped = True
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)


async def _start(command: list[str]) -> Process:
    return await anyio.open_process(
        command,
        env=_child_environment(),
        start_new_session=True,  # a signal to the gateway's group is not the script's; killed as a group
    )


class _Run:
    """One script's process, and the calls it asks for."""

    def __init__(self, tools: ScriptTools, call: ToolCall, process: Process) -> None:
        self.config = tools.config
        self.call = call
        self.process = process
        # Marked as inside the script (so it cannot start another), not a workflow's step: usage learning counts
        # the tools a script calls, which the caller chose.
        modern = call.caller.protocol_version in MODERN_PROTOCOL_VERSIONS
        self.exchange = call.exchange.inner(modern=modern, chain=tools.config.tool_name, step_of=None)
        self.calls_made = 0
        # The client's progress token, if it sent one: told of each batch of calls answered (best effort).
        self.progress = call.exchange.progress_relay()
        self.result_most = tools.max_result_bytes  # characters of JSON, as the router counts a result
        self.call_most = tools.max_call_bytes  # bytes of UTF-8, as a client's request body
        # The result comes as JSON inside a JSON string, in UTF-8: twice its characters leave room for its quotes
        # escaped, or for characters past ASCII (a result of only 4-byte characters at the cap is refused here, as
        # a stdio backend's line past `backends/stdio.line_cap` is).
        self.line_most = max(self.call_most, 2 * self.result_most) + LINE_SLACK

    async def converse(self, request: dict[str, Any]) -> types.CallToolResult:
        assert self.process.stdin is not None and self.process.stdout is not None
        lines = BufferedByteReceiveStream(self.process.stdout)
        await self._send(request)
        while True:
            message = await self._receive(lines)
            if "calls" in message:
                await self._send_line(await self._make(message["calls"]))
                await self._report()
            elif isinstance(message.get("result"), str):
                return self._result(message["result"])
            else:
                raise ScriptFailed(str(message.get("error", "no result")))

    async def _report(self) -> None:
        """Progress: the calls answered so far (only grows; no total, the script decides how many it makes)."""
        if self.progress is None:
            return
        try:
            await self.progress(float(self.calls_made), None, f"{self.calls_made} tool calls answered")
        except Exception as error:  # a client that went away must not fail the script
            logger.debug("code mode: progress not sent: %s", error)

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_line(json.dumps(message, ensure_ascii=False) + "\n")

    async def _send_line(self, line: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # died: its end is read next
            await self.process.stdin.send(line.encode(*ENCODING))

    def _result(self, encoded: str) -> types.CallToolResult:
        if len(encoded) > self.result_most:
            raise ScriptFailed(f"its result is more than {self.result_most} bytes (limits.max_result_bytes)")
        return _script_result(encoded)

    async def _receive(self, lines: BufferedByteReceiveStream) -> dict[str, Any]:
        try:
            line = await lines.receive_until(b"\n", self.line_most)
        except anyio.DelimiterNotFound:
            raise ScriptFailed(self._too_long(lines.buffer)) from None
        except (anyio.EndOfStream, anyio.IncompleteRead):
            raise ScriptFailed(await self._death()) from None
        if line.startswith(b'{"calls"') and len(line) > self.call_most:
            raise ScriptFailed(self._too_long(line))
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            raise ScriptFailed("the interpreter sent something unreadable")
        return message

    def _too_long(self, start: bytes) -> str:
        """Why a line (`start` of it) is refused: calls' arguments past a client's body, or a result past its cap."""
        if start.startswith(b'{"calls"'):
            return (
                f"its calls' arguments came to more than {self.call_most} bytes at once (server.max_body_bytes, as "
                "for a client's request)"
            )
        return (
            f"its result came to more than {self.line_most} bytes of UTF-8 at once (limits.max_result_bytes: "
            f"{self.result_most} characters of JSON)"
        )

    async def _death(self) -> str:
        """Why the process ended without a result: the kernel's bounds, or what it wrote before dying."""
        stderr = self.process.stderr
        tail = b""
        if stderr is not None:  # read before waiting: a child blocked writing it would never end
            with anyio.move_on_after(1):
                async for chunk in stderr:
                    tail = (tail + chunk)[-STDERR_TAIL:]
        code = await self.process.wait()
        if code == -signal.SIGXCPU:
            return f"it used all its CPU time ({self.config.cpu_seconds} s, code_mode.cpu_seconds)"
        if code == -signal.SIGKILL:  # not the gateway's doing (it kills only after the end or the deadline)
            return "its interpreter was killed (by the kernel's out-of-memory killer, or an operator)"
        if code == -signal.SIGSEGV:
            return "its interpreter crashed (a value nested too deep?)"
        if any(sign in tail for sign in OUT_OF_MEMORY) or code == -signal.SIGABRT:
            return f"it ran out of memory ({self.config.memory_mb} MiB, code_mode.memory_mb)"
        logger.warning("script process ended with %s: %s", code, tail.decode(errors="replace")[-500:])
        return f"its interpreter ended unexpectedly (exit {code})"

    async def _make(self, calls: Any) -> str:
        """The answer line to a request: each call's value or error, in order, JSON-encoded one by one as it comes;
        at most `max_parallel` at once, each within `call_timeout`, all together within `limits.max_result_bytes`
        (what the gateway holds for the script at once: past it the script fails, its other calls cut off)."""
        if not isinstance(calls, list) or not calls:
            raise ScriptFailed("the interpreter sent something unreadable")
        self.calls_made += len(calls)
        if self.calls_made > self.config.max_calls:
            raise ScriptFailed(f"it made more than {self.config.max_calls} tool calls (code_mode.max_calls)")
        encoded: list[str] = [""] * len(calls)
        held = 0
        slots = anyio.CapacityLimiter(self.config.max_parallel)

        async def make(index: int, tool: str, arguments: dict[str, Any], batch: anyio.CancelScope) -> None:
            nonlocal held
            async with slots:
                encoded[index] = json.dumps(await self._one(tool, arguments), ensure_ascii=False)
            held += len(encoded[index])  # characters, as the router counted each result
            if held > self.result_most:
                batch.cancel()

        async with anyio.create_task_group() as group:
            for index, (tool, arguments) in enumerate(calls):
                arguments = arguments if isinstance(arguments, dict) else {}
                group.start_soon(make, index, str(tool), arguments, group.cancel_scope)
        if held > self.result_most:
            raise ScriptFailed(
                f"its calls' results at once came to more than {self.result_most} bytes (limits.max_result_bytes)"
            )
        return '{"results": [' + ", ".join(encoded) + "]}\n"

    async def _one(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if tool == self.config.tool_name:
            return {"error": "a script cannot run another script"}
        try:
            with anyio.fail_after(self.config.call_timeout):
                result = await self.call.router.call_tool(self.call.caller, tool, arguments, self.exchange)
        except TimeoutError:
            return {"error": f"no answer within {self.config.call_timeout:g} s (code_mode.call_timeout)"}
        except InputRequired:
            # An `@approval` tool or a backend asking: uncaught, the script's client got -32603.
            return {"error": f"'{tool}' asked the client for input, which a script's call cannot relay"}
        except MCPError as refused:  # unknown, not permitted, rate-limited, over a bound
            return {"error": refused.error.message}
        return tool_value(result)


def tool_value(result: types.CallToolResult) -> dict[str, Any]:
    """A tool's answer as the script sees it: `{"value": v}`, `{"text": t}` or `{"error": t}`. The value is the
    structured content (unwrapped when it is only `{"result": v}`), else the first text, which the interpreter
    parses when it is JSON."""
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    if result.is_error:
        return {"error": texts[0] if texts else "the tool failed"}
    structured = result.structured_content
    if structured is not None:
        if set(structured) == {"result"}:
            return {"value": structured["result"]}
        return {"value": structured}
    if not texts:
        return {"value": None}
    return {"text": texts[0]}  # parsed by the interpreter when it is JSON: its CPU, not the event loop's


def _script_result(encoded: str) -> types.CallToolResult:
    """The script's value (JSON, as its interpreter encoded it) as a tool result: a string as itself, anything else
    as its JSON; an object small enough also as structured content (parsed here: see `STRUCTURED_MOST`)."""
    structured = None
    if encoded.startswith("{") and len(encoded) <= STRUCTURED_MOST:
        structured = json.loads(encoded)
    text = json.loads(encoded) if encoded.startswith('"') else encoded  # one string: no objects to make
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)


def _non_finite(value: Any, path: str = "data") -> str:
    """`data["x"][0] is inf`: where the first float JSON cannot hold is in `value` (which has one)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value!r}"
    if isinstance(value, dict | list):
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in pairs:
            found = _non_finite(item, f"{path}[{json.dumps(key, ensure_ascii=False)}]")
            if found:
                return found
    return ""


def _child_environment() -> dict[str, str]:
    """The interpreter needs no setting of the gateway's (and must not see its secrets): locale only."""
    kept = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL") if name in os.environ}
    return {**kept, "RUST_BACKTRACE": "0"}  # a Rust panic's report stays a line, not a pipe's worth


async def _reap(process: Process) -> None:
    """Kill the process if it still runs, and wait for it (shielded: a cancelled call must not leave it)."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with anyio.move_on_after(5):
            await process.wait()
        await process.aclose()
