"""A backend listing prompts and resource templates whose names no client list or log should carry (empty, a
megabyte long, with control or format characters), through a real gateway process and SDK client: those are
dropped with a bounded number of warnings naming the backend and what was wrong, the rest of it is served."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp import Client

from tests.support import running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BAD_PROMPTS = 30  # more than the 20 warnings a backend gets in one catalogue build

# A backend on the SDK listing two prompts and a template a client can use, and the hostile rest.
NAMES_SERVER = """
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

GOOD = ["summary", "Code review"]
BAD = ["", "n" * 1_000_000, "red\\x1b[31m\\nline", "rtl\\u202eevil"] + [f"bell{i}\\x07" for i in range(BAD_PROMPTS)]
TEMPLATES = [
    types.ResourceTemplate(name="file", uri_template="file:///{path}"),
    types.ResourceTemplate(name="t" * 200_000, uri_template="long:///{x}"),
    types.ResourceTemplate(name="nul\\x00", uri_template="nul:///{x}"),
]


async def list_prompts(ctx, params):
    return types.ListPromptsResult(prompts=[types.Prompt(name=name) for name in GOOD + BAD])


async def get_prompt(ctx, params):
    content = types.TextContent(type="text", text=f"prompt {params.name}")
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=content)])


async def list_resources(ctx, params):
    return types.ListResourcesResult(resources=[])


async def list_templates(ctx, params):
    return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)


async def main():
    server = Server(
        "names",
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
    )
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
""".replace("BAD_PROMPTS", str(BAD_PROMPTS))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_prompts_and_templates_with_unservable_names_are_dropped_with_bounded_warnings(tmp_path: Path) -> None:
    script = tmp_path / "names_server.py"
    script.write_text(NAMES_SERVER, encoding="utf-8")
    config = {"backends": [{"name": "pn", "command": sys.executable, "args": [str(script)]}]}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
            assert prompts == ["pn_summary", "pn_Code review"], [name[:100] for name in prompts]
            templates = (await client.list_resource_templates()).resource_templates
            assert [t.name for t in templates] == ["file"], [t.name[:100] for t in templates]
            served = await client.get_prompt("pn_Code review")
            assert served.messages[0].content.text == "prompt Code review"  # type: ignore[union-attr]
    log = gateway.output().splitlines()
    named = [line for line in log if "backend pn: prompt '" in line or "backend pn: resource template '" in line]
    assert len(named) == 20, named
    assert any("its name is empty" in line for line in named), named
    assert any("its name is 1,000,000 characters long (at most 128)" in line for line in named), named
    assert any("its name has control or other unprintable characters" in line for line in named), named
    # 30 + 4 prompts and 2 templates dropped, less the 20 named.
    assert sum("backend pn: 16 more dropped" in line for line in log) == 1, log
    assert max(len(line) for line in log) < 2000 and not any("\x1b" in line or "\u202e" in line for line in log)
