"""Audit redaction cuts before it redacts, and blanks what it used to miss: credentials after an auth scheme
(`Authorization: Basic …`, `Digest …`, `Token …`) and the list or object values of secret keys written in
free text. A real gateway audits a several-megabyte argument cut and redacted; the writer's pattern work is
measured by what its patterns are handed, not by a clock."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from vmcp_opt.auth import Caller, Identification
from vmcp_opt.config import AuditConfig
from vmcp_opt.routing.operations import Operation
from vmcp_opt.telemetry import redact
from vmcp_opt.telemetry.audit import AuditLog
from vmcp_opt.telemetry.redact import EDGE_CHARS, REDACTED, redacted, redacted_within

BASIC = "dXNlcjpwYXNzd29yZA"  # base64 of `user:password`, its padding left off as some clients do
DIGEST_RESPONSE = "6629fae49393a05397450978507c4ef1"
# A long secret whose value starts inside the kept prefix and ends far past the cut: no part of it may show.
STRADDLING = "".join(f"pk{i:05d}" for i in range(2_000))
SECRET_PIECES = (BASIC, DIGEST_RESPONSE, "tok9f8e7d6c5b4a", "hunter2", "tv-7788", "pk00")


def note_text(filler: int) -> str:
    head = (
        "the note starts here\n"
        f'curl -H "Authorization: Basic {BASIC}==" https://example.test\n'
        f'Proxy-Authorization: Digest username="bob", realm="r", response="{DIGEST_RESPONSE}"\n'
        "Authorization: Token tok9f8e7d6c5b4a\n"
        'login({"password": ["hunter2"], "token": {"value": "tv-7788"}})\n'
    )
    return head + "x" * 3_000 + f'\nconfig = {{"private_key": "{STRADDLING}"}}\n' + "y" * filler


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_several_megabyte_argument_is_audited_cut_and_without_its_secrets(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    config = {
        "backends": [demo_backend("demo")],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "include_data": True, "flush_interval": 0}},
    }
    text = note_text(3_000_000)
    title = f"Authorization: Basic {BASIC}"  # the backend's answer repeats the title
    with running_gateway(write_config(tmp_path, config), "--log-level", "warning") as gateway:
        async with Client(gateway.url) as client:
            result = await client.call_tool("demo_save_note", {"title": title, "text": text})
            assert not result.is_error, result
        deadline = time.monotonic() + 60
        while not (audit.exists() and '"demo_save_note"' in audit.read_text()):
            assert time.monotonic() < deadline, "the call's event was not written"
            await anyio.sleep(0.05)
    written = audit.read_text()
    event = next(json.loads(line) for line in written.splitlines() if '"demo_save_note"' in line)
    request = event["data"]["request"]
    assert request["truncated"] is True and request["bytes"] > 3_000_000
    # `max_data_bytes`; shorter, as here, when the kept text ends in a secret blanked to its end
    assert 3_000 < len(request["prefix"]) <= 4096
    assert "the note starts here" in request["prefix"] and "private_key" in request["prefix"]
    assert REDACTED in json.dumps(event["data"]["response"])
    leaked = [piece for piece in SECRET_PIECES if piece in written]
    assert not leaked, leaked


class _Spy:
    """A compiled pattern that notes the length of every text it is handed, then does its work."""

    def __init__(self, pattern: re.Pattern[str], seen: list[int]) -> None:
        self._pattern, self._seen = pattern, seen

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._pattern, name)

        def noted(*args: Any, **kwargs: Any) -> Any:
            texts = [a for a in args if isinstance(a, str)]
            self._seen.append(len(texts[-1]) if texts else 0)
            return method(*args, **kwargs)

        return noted


@pytest.mark.parametrize(
    "arguments",
    [
        {"text": note_text(4_000_000)},
        {"lines": ["password: hunter2 and Bearer abc"] * 200_000},
        {"script": json.dumps({"pad": "z" * 4_000_000, "password": ["hunter2"]})},
    ],
    ids=["one 4 MB string", "200,000 strings", "a 4 MB JSON string"],
)
def test_the_audit_writer_redacts_no_more_than_it_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: dict[str, Any]
) -> None:
    seen: list[int] = []
    for name, value in vars(redact).items():
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(redact, name, _Spy(value, seen))
    cap = 4096
    log = AuditLog(AuditConfig(enabled=True, output=str(tmp_path / "a.log"), include_data=True, max_data_bytes=cap))
    try:
        caller = Caller("session:x", Identification.SESSION, "2025-11-25")
        event = log.event("mcp_tool_call", 0.0, Operation("tools/call", caller, target="t", arguments=arguments))
    finally:
        log.close()
    request = event["data"]["request"]
    assert request["truncated"] is True and cap / 2 < len(request["prefix"]) <= cap
    assert "hunter2" not in request["prefix"] and "abc" not in request["prefix"]
    assert seen and max(seen) <= cap + EDGE_CHARS  # no pattern ran over the megabytes the log throws away
    assert len(seen) < 5_000  # nor over each of the 200,000 strings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Basic {BASIC}==", f"Authorization: {REDACTED}"),
        ("Authorization: Basic YTpi", f"Authorization: {REDACTED}"),  # `a:b`: short, still a credential
        ("authorization: basic instructions", f"authorization: {REDACTED}"),  # after the header, any credential
        (f'-H "Authorization: Basic {BASIC}==" x', f'-H "Authorization: {REDACTED}" x'),
        (f"got Basic {BASIC}== from the proxy", f"got {REDACTED} from the proxy"),
        ("basic YTpi", REDACTED),  # decodes to `user:password`'s shape
        (
            f'Digest username="bob", realm="r", nonce="n1", response="{DIGEST_RESPONSE}"\nnext',
            f"{REDACTED}\nnext",
        ),
        ("Authorization: Token tok9f8e7d6c5b4a", f"Authorization: {REDACTED}"),
        ("use Token tok9f8e7d6c5b4a here", f"use {REDACTED} here"),
        ("X-Auth-Token: Token abc", f"X-Auth-Token: {REDACTED}"),  # a scheme under a secret key: its credential too
        ('f({"password": ["hunter2"], "n": 1})', f'f({{"password": "{REDACTED}", "n": 1}})'),
        ('f({"token": {"value": "x", "l": [1, "]"]}}, 2)', f'f({{"token": "{REDACTED}"}}, 2)'),
        ("password = ['a', \"b]\"] # note", f"password = {REDACTED} # note"),
        ('s = "{\\"secret\\": [\\"x]\\"]}"', f's = "{{\\"secret\\": \\"{REDACTED}\\"}}"'),
        ('"api_key": {"unclosed": "x", ', f'"api_key": "{REDACTED}"'),  # never closed: blanked to the end
        ("Basic instructions for the token budget: 5", "Basic instructions for the token budget: 5"),
        ("a digest of the news, token by token", "a digest of the news, token by token"),
        ('"list": ["a", "b"], "n": {"m": 1}', '"list": ["a", "b"], "n": {"m": 1}'),
    ],
)
def test_credentials_and_secret_valued_lists_in_free_text_are_blanked(text: str, expected: str) -> None:
    assert redacted(text) == expected


@pytest.mark.parametrize(
    "secret_start",
    [
        'password: "',
        "password: '",
        "password = ",
        'password: ["s3", "',
        '\\"api_key\\": \\"',
        "Authorization: Basic ",
        "Authorization: Bearer ",
        "here is Bearer ",
        "Token ",
        "eyJhbGciOiJIUzI1NiJ9.",
    ],
)
def test_a_secret_cut_at_the_edge_leaks_no_part_of_itself(secret_start: str) -> None:
    cap = 512
    secret = "s3" * 5_000  # starts inside the kept prefix, ends far past the cut
    for lead in range(cap - 40, cap, 7):  # the secret's start at several places just before the cut
        value = {"note": "x" * lead + " " + secret_start + secret + '" and more'}
        kept = redacted_within(value, cap)
        assert not kept.whole
        shown = json.dumps(kept.value)[:cap]
        assert "s3s3" not in shown, (secret_start, lead, shown[-80:])


def test_a_small_value_is_redacted_whole_and_keeps_its_shape() -> None:
    value = {"title": "t", "headers": {"Authorization": "Basic YTpi"}, "items": [1, 2.5, None, True, "Token abc"]}
    kept = redacted_within(value, 4096)
    assert kept.whole
    assert kept.value == {
        "title": "t",
        "headers": {"Authorization": REDACTED},
        "items": [1, 2.5, None, True, "Token abc"],
    }
