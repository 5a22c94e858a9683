"""`${VAR:-default}` and `${VAR-default}` in a backend's url, headers, env and args, as Docker Compose and the
shell read them: expanded at load (they reached backends as written: "InvalidURL: Invalid port"), a `${` that
starts no reference refused by its field and form, a bare `$VAR` warned of, and a transport's other names
(`http`, `websocket`) answered with the value meant. Through real `vmcp validate` and `vmcp serve` processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import demo_backend, free_port, running_gateway, serving_mcp, write_config
from tests.test_config_hints import problems, validate

# A streamable HTTP backend whose one tool returns the `X-Demo` header its request came with.
HEADER_ECHO = """
import sys
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("echo")


@server.tool()
def seen(ctx: Context) -> str:
    return ctx.request_context.request.headers.get("x-demo", "<none>")


uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

UNSET = "T33_NEVER_SET"


async def _texts(url: str, *tools: str) -> list[str]:
    async with Client(streamable_http_client(url, http_client=httpx2.AsyncClient(timeout=60))) as client:  # type: ignore[arg-type]
        results = [await client.call_tool(tool, {}) for tool in tools]
    return [result.content[0].text for result in results]  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.anyio
async def test_defaults_reach_an_http_backend_in_its_url_and_header_and_a_stdio_backend_in_its_env(
    tmp_path: Path,
) -> None:
    script = tmp_path / "header_echo.py"
    script.write_text(HEADER_ECHO, encoding="utf-8")
    port = free_port()
    names = f"${{T33_EMPTY:-colon}}/${{T33_EMPTY-dash}}/${{{UNSET}-unset}}/${{T33_SET:-unused}}"
    backends = [
        {
            "name": "web",
            "transport": "streamable-http",
            "url": f"http://${{{UNSET}:-127.0.0.1}}:{port}/mcp",
            "headers": {"X-Demo": f"Bearer ${{{UNSET}:-dev-token}}"},
        },
        demo_backend("notes", env={"DEMO_NAME": names}),
    ]
    config = write_config(tmp_path, {"backends": backends})
    env = {"T33_EMPTY": "", "T33_SET": "given"}
    assert validate(config, env).returncode == 0
    with (
        serving_mcp([sys.executable, str(script), str(port)], port),
        running_gateway(config, env=env) as gateway,
    ):
        header, whoami = await _texts(gateway.url, "web_seen", "notes_whoami")
    assert header == "Bearer dev-token"
    assert json.loads(whoami)["name"] == "colon//unset/given"


def test_a_reference_form_that_is_not_supported_is_refused_by_field_and_form_without_its_text(
    tmp_path: Path,
) -> None:
    backend = {
        "name": "t",
        "transport": "streamable-http",
        "url": "http://127.0.0.1:9/${1abc}",
        "headers": {"Authorization": "Bearer ${T33_TOKEN:?s3cret-message}"},
    }
    stdio = demo_backend("s", env={"A": "${T33_A:+alt-s3cret}", "B": "${T33_A:-${T33_B}}", "C": "${T33_C"})
    result = validate(write_config(tmp_path, {"backends": [backend, stdio]}))
    ways = "write ${NAME}, ${NAME:-default} (unset or empty) or ${NAME-default} (unset)"
    nested = (
        "a default holding `$`, `{` or `}` (a default is used as written: nothing nested or run in it) or longer "
        "than 1,024 characters, which is not supported"
    )
    assert problems(result) == [
        f"  backends[0].headers.Authorization: `${{T33_TOKEN:?…}}`, the shell's error-if-unset form, which is not "
        f"supported; {ways}",
        "  backends[0].url: `${1abc}`, which names no variable (a name is letters, digits and _, not starting with a "
        f"digit); {ways}",
        f"  backends[1].env.A: `${{T33_A:+…}}`, the shell's alternative-value form, which is not supported; {ways}",
        f"  backends[1].env.B: `${{T33_A:-…}}`, {nested}; {ways}",
        f"  backends[1].env.C: `${{` without its closing `}}`; {ways}",
    ]
    assert "s3cret" not in result.stderr + result.stdout


def test_the_raw_pass_beside_another_fields_error_reads_defaults_and_refuses_unsupported_forms(tmp_path: Path) -> None:
    """When another field fails validation the references are read from the raw file, in the same pass: a default
    stands for an unset variable there too, and an unsupported form is refused there too."""
    env = {"A": f"${{{UNSET}:-x}}", "B": f"${{{UNSET}}}", "C": "${T33_C:?say}"}
    lines = problems(validate(write_config(tmp_path, {"backends": [demo_backend("s", env=env, timeout=-1)]})))
    assert f"  backends[0].env.B: references ${{{UNSET}}}, which is not set in the environment" in lines
    assert any(line.startswith("  backends[0].timeout: ") for line in lines)
    assert any(line.startswith("  backends[0].env.C: `${T33_C:?…}`, the shell's error-if-unset form") for line in lines)
    assert not [line for line in lines if "env.A" in line]


def test_a_bare_dollar_variable_is_a_warning_naming_the_field_and_hiding_a_secret_fields_text(
    tmp_path: Path,
) -> None:
    env = {"TZ_NAME": "$T33_ZONE", "API_TOKEN": "$Abc9xyz", "PLAIN": "pa$word and ${T33_SET}"}
    result = validate(write_config(tmp_path, {"backends": [demo_backend("s", env=env)]}), {"T33_SET": "x"})
    assert result.returncode == 0, result.stderr
    assert (
        "backends[0].env.TZ_NAME: $T33_ZONE is used as written: only ${NAME} is expanded (did you mean ${T33_ZONE}?)"
        in result.stderr
    )
    assert (
        "backends[0].env.API_TOKEN: a `$` before a name is used as written: only ${NAME} is expanded (if it names a "
        "variable, write ${NAME})" in result.stderr
    )
    assert "Abc9xyz" not in result.stderr + result.stdout
    assert "env.PLAIN" not in result.stderr


def test_a_transports_other_names_get_the_value_meant(tmp_path: Path) -> None:
    written = ["http", "HTTPS", "streamable", "sse-http", "websocket", "ws"]
    backends = [{"name": f"b{i}", "transport": t, "url": "http://127.0.0.1:9/mcp"} for i, t in enumerate(written)]
    config = write_config(tmp_path, {"backends": backends, "server": {"transport": "http"}})
    lines = problems(validate(config))
    allowed = "Input should be 'stdio', 'streamable-http' or 'sse'"
    meant = ["'streamable-http'"] * 3 + ["'sse'"]
    expected = [f"  backends[{i}].transport: {allowed} (did you mean {m}?)" for i, m in enumerate(meant)]
    expected += [
        f"  backends[{i}].transport: {allowed} (WebSocket is not a supported transport: use 'streamable-http' or 'sse')"
        for i in (4, 5)
    ]
    server = "  server.transport: Input should be 'streamable-http' or 'stdio' (did you mean 'streamable-http'?)"
    assert sorted(lines) == sorted([server, *expected])


def test_an_empty_variable_with_a_default_is_not_warned_of_as_empty(tmp_path: Path) -> None:
    env = {"ZONE": "${T33_EMPTY:-UTC}", "DASHED": "${T33_EMPTY-none}", "PLAIN": "${T33_EMPTY}"}
    result = validate(write_config(tmp_path, {"backends": [demo_backend("s", env=env)]}), {"T33_EMPTY": ""})
    assert result.returncode == 0, result.stderr
    empty = [line for line in result.stderr.splitlines() if "is set but empty" in line]
    # `:-` takes its default for an empty variable; `-` and a plain reference expand to nothing.
    assert [line.removeprefix("warning: ").split(":")[0] for line in empty] == [
        "backends[0].env.DASHED",
        "backends[0].env.PLAIN",
    ], empty
