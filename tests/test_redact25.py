"""Secrets typed into free text are redacted for the audit log: a code-mode script's literal arguments in a real
gateway's audit file, and the patterns one by one (JSON-ish, Python/Starlark, `key = "v"`, a bearer token that
ends at its quote), each in time linear in the text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from vmcp_opt.telemetry.redact import REDACTED, redacted

SCRIPT = 'call_tool("demo_save_note", {"title": "t", "text": "x", "password": "hunter2", "api_key": "k-123"})'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_code_mode_scripts_literal_secrets_never_reach_the_audit_file(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    config = {
        "backends": [demo_backend("demo")],
        "code_mode": {"enabled": True},
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "include_data": True, "flush_interval": 0}},
    }
    with running_gateway(write_config(tmp_path, config), "--log-level", "warning") as gateway:
        async with Client(gateway.url) as client:
            result = await client.call_tool("execute_tool_script", {"script": SCRIPT})
            assert not result.is_error, result
        deadline = time.monotonic() + 30
        while not (audit.exists() and '"execute_tool_script"' in audit.read_text()):
            assert time.monotonic() < deadline, "the script's event was not written"
            await anyio.sleep(0.05)
    text = audit.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    script = next(e for e in events if e["target"].get("name") == "execute_tool_script")
    assert script["data"]["request"]["script"] == SCRIPT.replace('"hunter2"', f'"{REDACTED}"').replace(
        '"k-123"', f'"{REDACTED}"'
    )
    assert "hunter2" not in text and "k-123" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('f({"password": "hunter2", "n": 1})', f'f({{"password": "{REDACTED}", "n": 1}})'),
        ("f({'api_key': 'k-123', 'n': 1})", f"f({{'api_key': '{REDACTED}', 'n': 1}})"),
        ('f(token="t-1", n=1)', f'f(token="{REDACTED}", n=1)'),
        ("client_secret = 'abc' # set", f"client_secret = '{REDACTED}' # set"),
        ("password: hunter2 then more", f"password: {REDACTED} then more"),
        ("https://x/?access_token=abc&page=2", f"https://x/?access_token={REDACTED}&page=2"),
        ('{"pin_token": 1234, "x" : "y"} trailing', f'{{"pin_token": "{REDACTED}", "x" : "y"}} trailing'),
        ('"A \\"quoted\\" note", "secret": "s\\"1"', f'"A \\"quoted\\" note", "secret": "{REDACTED}"'),
        ('s = "{\\"password\\": \\"hunter2\\"}"', f's = "{{\\"password\\": \\"{REDACTED}\\"}}"'),
        ('"text": "Bearer a.b.c", "api_key": "k-123"', f'"text": "{REDACTED}", "api_key": "{REDACTED}"'),
        ("Authorization: Bearer abc.def", f"Authorization: {REDACTED}"),
        ("the title: nothing secret here", "the title: nothing secret here"),
    ],
)
def test_secret_members_in_free_text_are_blanked(text: str, expected: str) -> None:
    assert redacted(text) == expected


def test_a_json_string_holding_a_script_is_redacted_inside() -> None:
    arguments = json.dumps({"script": SCRIPT})  # `call_tool`'s arguments as a JSON string
    assert "hunter2" not in redacted(arguments) and "k-123" not in redacted(arguments)
    assert "hunter2" not in json.dumps(redacted({"script": SCRIPT}))
