"""The template-match budget keeps its promise (aggregation/template_index.py): a 64 KB URI still gets a full scan
of one template of up to 8 variables.

Before, each candidate's literal check (`str.find`, a 64th of the URI's length) was charged to the same budget
as the scans: the check plus one 8-variable scan of a 64 KB URI came to just over it, so a read the SDK's own
matcher serves was refused with `TemplateMatchTooCostly`. The checks now have a budget of their own, and stay
bounded by it. A real `vmcp serve`, a real stdio backend (tests/agg_backend.py, which answers a read with
"<its name>:<the URI>") and the SDK client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.uri_template import UriTemplate

from tests.support import running_gateway, write_config
from tests.test_agg_live_catalogue import agg_backend
from vmcp_opt.aggregation.template_index import (
    LITERAL_CHECK_BUDGET,
    MATCH_WORK_BUDGET,
    TemplateIndex,
    TemplateMatchTooCostly,
)

pytestmark = pytest.mark.anyio

EIGHT = "db://{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}"
LONGEST_FULL_SCAN = MATCH_WORK_BUDGET // 8  # characters of a URI one 8-variable scan may take: 64 KB


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _long_uri() -> str:
    base = "db://1/2/3/4/5/6/7/"
    return base + "x" * (LONGEST_FULL_SCAN - len(base))


def test_a_64_kb_uri_gets_its_full_scan_of_an_8_variable_template() -> None:
    template, uri = UriTemplate.parse(EIGHT), _long_uri()
    assert len(uri) == 65_536 and template.match(uri) is not None  # the SDK serves it
    assert TemplateIndex([template]).first_match(uri) == 0


def test_literal_checks_stay_bounded_on_their_own() -> None:
    """Candidates whose literal text the URI lacks cost only checks; past their budget the URI is refused."""
    uri = "db://" + "x" * 10_000  # each check of it: 1 + 1 literal + 10,000 // 64 steps
    templates = [UriTemplate.parse(f"db://{{a}}/absent{i}/{{b}}") for i in range(LITERAL_CHECK_BUDGET // 100)]
    with pytest.raises(TemplateMatchTooCostly) as refused:
        TemplateIndex(templates).first_match(uri)
    assert refused.value.error.data == {
        "max_template_match_steps": MATCH_WORK_BUDGET,
        "max_literal_check_steps": LITERAL_CHECK_BUDGET,
        "templates_tried": 0,
    }


async def test_a_gateway_serves_a_64_kb_uri_an_8_variable_template_matches(tmp_path: Path) -> None:
    backend = agg_backend(tmp_path, "wide", templates=[EIGHT])
    uri = _long_uri()
    limits = {"max_header_bytes": 4 * LONGEST_FULL_SCAN}  # a 2026-07-28 client names the URI in a header too
    with running_gateway(write_config(tmp_path, {"backends": [backend], "limits": limits})) as gateway:
        async with Client(gateway.url) as client:
            text = (await client.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
    assert text == f"wide:{uri}"
