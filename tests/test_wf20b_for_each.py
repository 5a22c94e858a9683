"""for_each steps over a real gateway and server-everything, driven by the SDK client: an item's image reaches
templates (`steps.<id>.content`, one entry per item) and the client (a last for_each's blocks, item after
item), counts against `limits.max_result_bytes`, and every finished item is a progress notification whose
progress only grows, against the workflow's step count."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import NODE_BIN, Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# get-annotated-message: one text, and the tiny image (about 5,400 bytes) when `includeImage`.
SHOTS = {
    "id": "shots",
    "type": "for_each",
    "tool": "ev_get-annotated-message",
    "over": "{{ params.images }}",
    "item": "image",
    "arguments": {"messageType": "success", "includeImage": "{{ image }}"},
}
IMAGES = {"type": "object", "properties": {"images": {"type": "array", "items": {"type": "boolean"}}}}
KINDS = (
    "{% if steps.shots.content is none %}none{% else %}{% for blocks in steps.shots.content %}"
    "{{ blocks | map(attribute='type') | join('+') if blocks is not none else 'text only' }};{% endfor %}{% endif %}"
)
WORKFLOWS: list[dict[str, Any]] = [
    {"name": "shots", "description": "Messages, with images.", "parameters": IMAGES, "steps": [SHOTS]},
    {
        "name": "shot_kinds",
        "description": "What each message held.",
        "parameters": IMAGES,
        "steps": [SHOTS],
        "output": {"kinds": KINDS},
    },
    {
        "name": "echo_four",
        "description": "Echo four numbers one by one, then once more.",
        "steps": [
            {
                "id": "each",
                "type": "for_each",
                "tool": "ev_echo",
                "over": "{{ [1, 2, 3, 4] }}",
                "item": "n",
                "max_parallel": 1,  # one item at a time: the notifications' order is the items'
                "arguments": {"message": "n={{ n }}"},
            },
            {"id": "last", "tool": "ev_echo", "depends_on": ["each"], "arguments": {"message": "done"}},
        ],
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("wf20b-for-each")
    config = {
        "backends": [{"name": "ev", "command": str(NODE_BIN / "mcp-server-everything")}],
        "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        "limits": {"max_result_bytes": 8000},  # one image item's result fits, two do not
        "workflows": WORKFLOWS,
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_last_for_each_passes_on_each_item_s_blocks_in_order(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("shots", {"images": [True, False]})
    assert not result.is_error, text(result)
    assert [block.type for block in result.content] == ["text", "image", "text"]
    image = result.content[1]
    assert isinstance(image, types.ImageContent) and image.mime_type == "image/png" and len(image.data) > 100
    assert image.annotations is not None and image.annotations.priority == 0.5  # as the backend sent it
    assert text(result) == "Operation completed successfully" * 2  # the text-only item as its output


async def test_only_text_items_pass_on_their_outputs_as_json(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("shots", {"images": [False, False]})
    assert not result.is_error, text(result)
    assert [block.type for block in result.content] == ["text"]
    assert text(result) == '["Operation completed successfully", "Operation completed successfully"]'


@pytest.mark.parametrize(
    ("images", "kinds"),
    [([False, True], "text only;text+image;"), ([False, False], "none")],
)
async def test_templates_read_each_item_s_content(gateway: Gateway, images: list[bool], kinds: str) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("shot_kinds", {"images": images})
    assert not result.is_error, text(result)
    assert result.structured_content == {"kinds": kinds}


async def test_items_images_count_against_max_result_bytes(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("shots", {"images": [True, True]})
    assert result.is_error
    assert "step 'shots' failed: item " in text(result)  # the second to finish, either one
    assert "the workflow's step outputs come to more than 8,000 bytes (limits.max_result_bytes)" in text(result)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_reports_each_finished_item_and_only_grows(gateway: Gateway, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(gateway.url, mode=mode) as client:  # type: ignore[arg-type]
        result = await client.call_tool("echo_four", {}, progress_callback=on_progress)
    assert not result.is_error, text(result)
    assert [p for p, _, _ in seen] == [0.2, 0.4, 0.6, 0.8, 1.0, 2.0]  # each item 1/5 of its step, then its end
    assert {t for _, t, _ in seen} == {2.0}  # the workflow's two steps, from the first notification
    assert [m for _, _, m in seen] == [
        "step each: 1 of 4 items done",
        "step each: 2 of 4 items done",
        "step each: 3 of 4 items done",
        "step each: 4 of 4 items done",
        "step each: ok",
        "step last: ok",
    ]
