"""Completions under a Cedar policy: a `ref/resource` is judged as the template it names, whether the client
sends the URI template or a URI the template serves, and only for a template the caller is shown.

A real `vmcp serve` with API keys, the demo backend (template `notes://note/{title}`, resource `notes://all`)
and server-everything (whose template `demo://resource/dynamic/text/{resourceId}` completes `resourceId`),
and the SDK client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.support import (
    NODE_BIN,
    Gateway,
    bearer_client,
    demo_backend,
    policed_config,
    running_gateway,
    unavailable,
)

pytestmark = pytest.mark.anyio

EVERYTHING = NODE_BIN / "mcp-server-everything"
NOTE = "notes://note/{title}"
DYNAMIC = "demo://resource/dynamic/text/{resourceId}"
POLICY = f"""\
permit(principal, action, resource);
// guests may read notes but not have their titles completed
forbid(principal in Group::"guest", action == Action::"complete", resource == Resource::"{NOTE}");
// nor may they read (so they are not shown) the dynamic texts: the blanket permit still allows `complete`
forbid(principal in Group::"guest", action == Action::"read_resource", resource == Resource::"{DYNAMIC}");
// and a prompt they may not get
forbid(principal in Group::"guest", action == Action::"get_prompt", resource == Prompt::"notes_summarize_notes");
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    if not EVERYTHING.exists():
        unavailable("server-everything is not installed (npm ci)")
    directory: Path = tmp_path_factory.mktemp("pol20-completions")
    config = {"backends": [demo_backend("notes"), {"name": "everything", "command": str(EVERYTHING)}]}
    path, keys = policed_config(directory, {"guest": ["guest"], "dev": ["dev"]}, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


def resource_ref(uri: str) -> types.ResourceTemplateReference:
    return types.ResourceTemplateReference(type="ref/resource", uri=uri)


async def refused(gateway: Gateway, key: str, uri: str, argument: str) -> str:
    async with bearer_client(gateway.url, key) as client:
        with pytest.raises(MCPError) as caught:
            await client.complete(resource_ref(uri), {"name": argument, "value": "1"})
        return caught.value.error.message


async def completed(
    gateway: Gateway, key: str, ref: types.ResourceTemplateReference | types.PromptReference, argument: str
) -> None:
    """A caller the policy lets complete `ref` is answered: the refusals below are the policy's, not the item's
    absence, though the refused caller is told what an absent item gets (no oracle)."""
    async with bearer_client(gateway.url, key) as client:
        await client.complete(ref, {"name": argument, "value": "1"})


@pytest.mark.parametrize("uri", [NOTE, "notes://note/anything"])
async def test_a_uri_the_template_serves_is_refused_completion_as_the_template_is(
    gateway: tuple[Gateway, dict[str, str]], uri: str
) -> None:
    running, keys = gateway
    message = await refused(running, keys["guest"], uri, "title")
    # The guest may list and read the template (it hides nothing from it), so the refusal says why, of the template.
    assert message.startswith("not permitted: caller ") and f"may not complete template '{NOTE}'" in message, message
    await completed(running, keys["dev"], resource_ref(uri), "title")


@pytest.mark.parametrize("uri", [DYNAMIC, "demo://resource/dynamic/text/7"])
async def test_a_template_the_caller_may_not_read_gets_no_completions_under_a_broad_complete_permit(
    gateway: tuple[Gateway, dict[str, str]], uri: str
) -> None:
    running, keys = gateway
    message = await refused(running, keys["guest"], uri, "resourceId")
    assert message == f"Unknown resource template: '{uri}'"  # as for a template nothing serves
    await completed(running, keys["dev"], resource_ref(uri), "resourceId")


async def test_a_listed_resource_is_no_template_to_complete(gateway: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = gateway
    message = await refused(running, keys["dev"], "notes://all", "title")
    assert message == "Unknown resource template: 'notes://all'"


async def test_a_uri_the_template_serves_gets_the_templates_completions(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    async with bearer_client(running.url, keys["dev"]) as client:
        by_template = await client.complete(resource_ref(DYNAMIC), {"name": "resourceId", "value": "1"})
        by_uri = await client.complete(
            resource_ref("demo://resource/dynamic/text/7"), {"name": "resourceId", "value": "1"}
        )
    assert by_template.completion.values == ["1"]
    assert by_uri.completion.values == by_template.completion.values  # asked of the backend as the template


async def test_a_prompt_the_caller_may_not_get_gets_no_completions_under_a_broad_complete_permit(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    prompt = types.PromptReference(type="ref/prompt", name="notes_summarize_notes")
    async with bearer_client(running.url, keys["guest"]) as client:
        with pytest.raises(MCPError) as caught:
            await client.complete(prompt, {"name": "style", "value": "s"})
    assert caught.value.error.message == "Unknown prompt: 'notes_summarize_notes'"  # as for a prompt nothing serves
    await completed(running, keys["dev"], prompt, "style")
