"""A backend that cannot be reached is reported with the URL the gateway tried, its credentials masked."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from tests.support import free_port, running_gateway, write_config

pytestmark = [pytest.mark.slow]


def test_a_connection_error_names_the_url_with_its_credentials_masked(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"http://alice:pw-s3cret-pw@127.0.0.1:{port}/mcp?token=tok-s3cret-tok&region=eu"
    config = write_config(tmp_path, {"backends": [{"name": "docs", "transport": "streamable-http", "url": url}]})
    with running_gateway(config) as gateway:
        body = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()
    (docs,) = body["backends"]
    assert docs["state"] == "failed"
    assert docs["last_error"].startswith(f"http://***@127.0.0.1:{port}/mcp?token=***&region=eu: ")
    shown = json.dumps(body) + gateway.output()
    assert "s3cret" not in shown
    assert f"http://***@127.0.0.1:{port}/mcp" in gateway.output()
