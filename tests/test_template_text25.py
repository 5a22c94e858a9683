"""A resource template's own text, read as it is listed, is judged as that template: a template with `{?…}`
expressions does not match its own text, so such a read got past a policy keyed on `resource.template`.

A real `vmcp serve` with API keys and a Cedar policy, a real stdio backend (tests/agg_backend.py) listing a
resource and two templates, and the SDK client in both protocol eras.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, bearer_client, policed_config, running_gateway
from tests.test_agg_live_catalogue import agg_backend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

QUERIED = "search://items{?q}"
PLAIN = "search://item/{id}"
# Guests may read what the backend lists, but nothing through a template.
POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guest", action == Action::"read_resource", resource) when { resource.template };
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory: Path = tmp_path_factory.mktemp("template-text25")
    backend = agg_backend(directory, "search", resources=["search://all"], templates=[QUERIED, PLAIN])
    path, keys = policed_config(directory, {"guest": ["guest"], "staff": ["staff"]}, POLICY, {"backends": [backend]})
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("uri", [QUERIED, "search://items?q=lamps", PLAIN, "search://item/7"])
async def test_a_read_through_a_template_is_refused_whether_its_text_or_a_uri_it_serves(
    gateway: tuple[Gateway, dict[str, str]], uri: str, mode: str
) -> None:
    running, keys = gateway
    async with bearer_client(running.url, keys["staff"], mode) as staff:
        served = await staff.read_resource(uri)
        assert served.contents[0].text == f"search:{uri}"  # type: ignore[union-attr]
    async with bearer_client(running.url, keys["guest"], mode) as guest:
        assert (await guest.read_resource("search://all")).contents
        with pytest.raises(MCPError) as refused:
            await guest.read_resource(uri)
        # Answered as a URI nothing serves (no oracle).
        assert refused.value.error.message == f"Resource not found: '{uri}'", refused.value.error
