"""`code_mode:`: one tool that runs a caller's Starlark script calling other tools (vmcp_opt/code_mode/)."""

from __future__ import annotations

from pydantic import Field

from vmcp_opt.config.base import _PerCallerWithinTotal, _Strict


class ScriptRunsConfig(_PerCallerWithinTotal):
    """Scripts running at once, each a process of its own: for one caller (keyed as rate limits key callers) and
    for the gateway. A script past either is refused at once with an error naming the bound."""

    # One caller's scripts at once (a verified subject, else the client's address; over stdio, the client's).
    per_caller: int = Field(2, ge=1, le=64)
    # Every caller's scripts at once: the interpreter processes the gateway may run (and one spare, started ahead).
    total: int = Field(4, ge=1, le=64)


class CodeModeConfig(_Strict):
    """Code mode: the gateway serves one more tool, which runs a Starlark script (a Python-like language without
    files, network, clock or imports) whose `call_tool` and `call_tools` call other tools through the router, so
    an agent can chain and fan out calls in one request and get back only what it computes. Each call the script
    makes is authorized, rate-limited, audited and checked like the caller's own; the script runs in a child
    process the kernel bounds (CPU seconds, memory) and the gateway kills at its deadline."""

    enabled: bool = Field(False, description="Serve the script tool (off: the tool does not exist).")
    tool_name: str = Field(
        "execute_tool_script",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description=(
            "The script tool's name; a backend tool of the same name is hidden (find_tool leaves it out), reachable "
            "only by another name (`aggregation.tools.<backend>.overrides`): `vmcp validate` and the log warn of one."
        ),
    )
    timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds one script may run, its tool calls included; then it is killed."
    )
    cpu_seconds: int = Field(
        5, ge=1, le=600, description="CPU seconds the script's interpreter may use (its process's RLIMIT_CPU)."
    )
    memory_mb: int = Field(256, ge=64, le=16384, description="Memory the script's process may map, in MiB (RLIMIT_AS).")
    max_calls: int = Field(100, ge=1, le=10000, description="Tool calls one script may make in all.")
    max_parallel: int = Field(
        8, ge=1, le=64, description="Calls of one `call_tools` running at once (the rest wait for a free one)."
    )
    call_timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds one tool call of a script may take; then it fails in the script."
    )
    max_script_bytes: int = Field(
        65536, ge=256, le=4 * 1024 * 1024, description="Longest script (and its `data`, as JSON) accepted."
    )
    runs: ScriptRunsConfig = Field(
        default_factory=ScriptRunsConfig, description="Scripts running at once, per caller and in total."
    )
