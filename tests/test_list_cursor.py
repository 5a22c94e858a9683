"""The gateway answers every list in one page and issues no cursors, so a list request with a cursor it did not
issue is invalid (-32602), not a request for the whole list again: a real gateway over the demo backend, the
SDK's client in both protocol eras, each of the four lists."""

from __future__ import annotations

from collections.abc import Iterator

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

# Each list method → the attribute of its items.
LISTS = {
    "list_tools": "tools",
    "list_prompts": "prompts",
    "list_resources": "resources",
    "list_resource_templates": "resource_templates",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {"backends": [demo_backend("notes")]}
    with running_gateway(write_config(tmp_path_factory.mktemp("list-cursor"), config)) as running:
        yield running


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_made_up_cursor_is_invalid_params(gateway: Gateway, mode: str) -> None:
    async with Client(gateway.url, mode=mode) as client:
        for method, items in LISTS.items():
            whole = await getattr(client, method)()
            assert getattr(whole, items), method  # the demo backend serves some of each
            assert whole.next_cursor is None, method  # one page: the gateway hands out no cursor
            with pytest.raises(MCPError) as refused:
                await getattr(client, method)(cursor="made-up")
            assert refused.value.error.code == types.INVALID_PARAMS, method
            assert "invalid cursor 'made-up'" in refused.value.error.message, method
            assert "issues no cursors" in refused.value.error.message, method
