"""Values no JSON message can carry, in a workflow run through the real gateway, the demo backend and a backend
of big numbers: an integer of more than 4,300 digits (what Python's `json` and pydantic-core write and read) in a
step's arguments failed no step: the backend could not read the request, and the run hung until its timeout; in a
workflow's output it failed as "nested too deeply". A lone surrogate in a workflow's output reached the client as
JSON its parser refuses. Each now fails at once, naming the step and the argument, or the output's field. And
integer products and powers are bounded (`MAX_INT_BITS`): two 100,000-bit integers multiplied held the GIL for a
few ms, two 500,000-bit ones for ~30 ms."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.workflows.step_results import MAX_JSON_INT_DIGITS
from vmcp_opt.workflows.templates import MAX_INT_BITS

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# A backend whose tools return what the demo backend never does: an integer of exactly the most digits JSON carries
# (in structured content), and a text holding a lone surrogate escape (valid JSON, which `json.loads` decodes).
NUMBERS_SERVER = f"""
from mcp.server.mcpserver import MCPServer

server = MCPServer("numbers")


@server.tool()
def widest() -> dict[str, object]:
    \"\"\"The largest integer JSON carries.\"\"\"
    return {{"n": 10 ** {MAX_JSON_INT_DIGITS} - 1}}


@server.tool(structured_output=False)
def surrogate() -> str:
    \"\"\"A JSON text whose string is a lone surrogate.\"\"\"
    return '{{"s": "\\\\ud800"}}'


server.run()
"""

# An integer of 5,001 digits (16,610 bits: well within the arithmetic bound, past JSON's).
PAST_JSON = "(10 ** 1000) ** 5"
# Two integers of 101,101 bits: their product (202,202 bits) is past the arithmetic bound, each is within it.
HALF = "((2 ** 1000) ** 101)"
TIMEOUT = 30  # each run's: a run that hangs fails the test by its text, in this many seconds


def echo(step_id: str, seconds: Any, **step: Any) -> dict[str, Any]:
    return {"id": step_id, "tool": "d_slow_echo", "arguments": {"message": "hi", "seconds": seconds}, **step}


WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "wide_argument",
        "description": "Sends a step an integer of more digits than JSON carries.",
        "steps": [echo("echo", f"{{{{ {PAST_JSON} }}}}")],
    },
    {
        "name": "wide_nested_argument",
        "description": "Sends a step such an integer inside a list.",
        "steps": [
            {"id": "note", "tool": "d_save_note", "arguments": {"title": "t", "text": f"{{{{ [1, {PAST_JSON}] }}}}"}}
        ],
    },
    {
        "name": "wide_output",
        "description": "An output field of more digits than JSON carries.",
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"n": f"{{{{ {PAST_JSON} }}}}"},
    },
    {
        "name": "widest_passed_on",
        "description": "The backend's widest integer, as the output and through a template.",
        "steps": [
            {"id": "num", "tool": "n_widest"},
            {
                "id": "echo",
                "tool": "d_slow_echo",
                "depends_on": ["num"],
                "arguments": {"message": "{{ steps.num.output.n | string | length }} digits", "seconds": 0},
            },
        ],
        "output": {"n": "{{ steps.num.output.n }}", "digits": "{{ steps.echo.output.result }}"},
    },
    {
        "name": "widest_grown_argument",
        "description": "The backend's widest integer, grown by a digit in a later step's arguments.",
        "steps": [{"id": "num", "tool": "n_widest"}, echo("echo", "{{ steps.num.output.n * 10 }}", depends_on=["num"])],
    },
    {
        "name": "widest_grown_output",
        "description": "The backend's widest integer, grown by a digit in the output.",
        "steps": [{"id": "num", "tool": "n_widest"}],
        "output": {"n": "{{ steps.num.output.n * 10 }}"},
    },
    {
        "name": "surrogate_passed_on",
        "description": "A backend's lone surrogate, as the output (no output template).",
        "steps": [{"id": "text", "tool": "n_surrogate"}],
    },
    {
        "name": "surrogate_output",
        "description": "A template's lone surrogate in the output.",
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"deep": {"s": ["ok", "{{ '\\ud800' }}"]}},
    },
    {
        "name": "big_product",
        "description": "Multiplies two integers whose product is past the arithmetic bound.",
        "steps": [echo("echo", f"{{{{ ({HALF} * {HALF}) > 0 }}}}")],
    },
    {
        "name": "big_power",
        "description": "Raises an integer to a power past the arithmetic bound.",
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"big": "{{ ((2 ** 1000) ** 201) > 0 }}"},
    },
    {
        "name": "product_within",
        "description": "A product and a power within the bound.",
        "steps": [{"id": "who", "tool": "d_whoami"}],
        "output": {"ok": "{{ ((2 ** 1000) ** 99) * ((2 ** 1000) ** 99) > (2 ** 1000) ** 5 }}"},
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("wf-bignum26")
    server = directory / "numbers_server.py"
    server.write_text(NUMBERS_SERVER, encoding="utf-8")
    settings = {
        "backends": [demo_backend("d"), {"name": "n", "command": sys.executable, "args": [str(server)]}],
        "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        "workflows": [{**workflow, "timeout": TIMEOUT} for workflow in WORKFLOWS],
    }
    with running_gateway(write_config(directory, settings)) as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(gateway: Gateway, name: str) -> types.CallToolResult:
    with anyio.fail_after(TIMEOUT * 3):
        async with Client(gateway.url) as client:
            return await client.call_tool(name, {})


TOO_WIDE = f"an integer of more than {MAX_JSON_INT_DIGITS:,} digits, which JSON cannot carry"


@pytest.mark.parametrize(
    ("workflow", "failure"),
    [
        ("wide_argument", "step 'echo' failed: arguments.seconds: ValueError: the expression gives "),
        ("wide_nested_argument", "step 'note' failed: arguments.text: ValueError: the expression gives "),
        ("widest_grown_argument", "step 'echo' failed: arguments.seconds: ValueError: the expression gives "),
    ],
)
async def test_an_argument_json_cannot_carry_fails_its_step_at_once_naming_it(
    gateway: Gateway, workflow: str, failure: str
) -> None:
    """Before: the step's request reached the backend, which could not read it and answered nothing, so the
    run ended only at its timeout ("timed out after 30s")."""
    result = await call(gateway, workflow)
    assert result.is_error
    assert text(result).startswith(f"workflow '{workflow}' failed: {failure}{TOO_WIDE}"), text(result)


@pytest.mark.parametrize("workflow", ["wide_output", "widest_grown_output"])
async def test_an_output_integer_json_cannot_carry_fails_the_run_naming_the_field(
    gateway: Gateway, workflow: str
) -> None:
    """Before: "its output is nested too deeply to send", which named neither the field nor the reason."""
    result = await call(gateway, workflow)
    assert result.is_error
    assert text(result).startswith(f"workflow '{workflow}' failed: output.n: ValueError: the expression gives "), text(
        result
    )
    assert TOO_WIDE in text(result)


async def test_the_widest_integer_json_carries_passes_through_steps_and_output(gateway: Gateway) -> None:
    result = await call(gateway, "widest_passed_on")
    assert not result.is_error, text(result)
    assert result.structured_content == {"n": 10**MAX_JSON_INT_DIGITS - 1, "digits": f"{MAX_JSON_INT_DIGITS} digits"}


@pytest.mark.parametrize(
    ("workflow", "field"), [("surrogate_passed_on", "output.s"), ("surrogate_output", "output.deep.s[1]")]
)
async def test_a_lone_surrogate_in_the_output_fails_the_run_naming_the_field(
    gateway: Gateway, workflow: str, field: str
) -> None:
    """Before: the answer's JSON held `\\ud800`, which the client's parser refused (the call raised)."""
    result = await call(gateway, workflow)
    assert result.is_error
    assert text(result).startswith(f"workflow '{workflow}' failed: {field}: holds a lone surrogate"), text(result)


@pytest.mark.parametrize(
    ("workflow", "place", "what"),
    [
        ("big_product", "step 'echo' failed: arguments.seconds", "product"),
        ("big_power", "output.big", "power"),
    ],
)
async def test_integer_products_and_powers_past_the_bound_are_refused_naming_it(
    gateway: Gateway, workflow: str, place: str, what: str
) -> None:
    result = await call(gateway, workflow)
    assert result.is_error
    assert text(result).startswith(f"workflow '{workflow}' failed: {place}: SecurityError: the {what} "), text(result)
    assert f"more than {MAX_INT_BITS:,} bits" in text(result)


async def test_products_and_powers_within_the_bound_are_computed(gateway: Gateway) -> None:
    result = await call(gateway, "product_within")
    assert not result.is_error, text(result)
    assert result.structured_content == {"ok": True}
