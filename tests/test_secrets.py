"""Which backend values count as secrets (headers, secret-looking env keys, anything from `${VAR}`, URL
credentials), and how a backend's stderr is shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support import write_config
from vmcp_opt.backends.secrets import mask_url, redact, secret_values
from vmcp_opt.backends.transports import STDERR_LINE_LIMIT, STDERR_LINES_PER_SECOND, _StderrLines
from vmcp_opt.config import load_config


def test_headers_secret_keys_and_references_are_secrets_plain_env_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_PASSWORD_VAR", "from-the-environment")
    backend = {
        "name": "svc",
        "command": "python",
        "env": {
            "GITHUB_TOKEN": "ghp_literal_token",
            "DB": "${UPSTREAM_PASSWORD_VAR}",
            "TZ": "Europe/Paris",
            "NAME": "svc",
        },
    }
    config = load_config(write_config(tmp_path, {"backends": [backend]}))
    secrets = secret_values(config.backends[0])
    assert "ghp_literal_token" in secrets
    assert "from-the-environment" in secrets
    assert "Europe/Paris" not in secrets and "svc" not in secrets
    assert redact("token ghp_literal_token for svc", secrets) == "token *** for svc"


def test_bearer_tokens_are_masked_alone_too(tmp_path: Path) -> None:
    backend = {
        "name": "web",
        "transport": "streamable-http",
        "url": "http://127.0.0.1:1/mcp",
        "headers": {"Authorization": "Bearer abcdefgh12345"},
    }
    secrets = secret_values(load_config(write_config(tmp_path, {"backends": [backend]})).backends[0])
    assert redact("sent abcdefgh12345", secrets) == "sent ***"


def test_credentials_written_in_a_url_are_secrets_and_masked_where_the_url_is_shown(tmp_path: Path) -> None:
    url = "https://alice:pa%40ss-word-1@mcp.example:8443/mcp?api_key=key-123456&region=eu&sig=sig-abcdef"
    backend = {"name": "web", "transport": "streamable-http", "url": url}
    secrets = secret_values(load_config(write_config(tmp_path, {"backends": [backend]})).backends[0])
    shown = redact(f"Client error '401 Unauthorized' for url '{url}' (pa@ss-word-1)", secrets)
    assert not any(part in shown for part in ("alice", "pa%40ss-word-1", "pa@ss-word-1", "key-123456", "sig-abcdef"))
    assert mask_url(url) == "https://***@mcp.example:8443/mcp?api_key=***&region=eu&sig=***"
    assert mask_url("http://127.0.0.1:9001/mcp") == "http://127.0.0.1:9001/mcp"


def test_backend_stderr_lines_are_masked_escaped_cut_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmcp_opt.backends.stderr")
    lines = _StderrLines("svc", ["sekrit-value"])
    lines.feed(b"starting with sekrit-value\n\x1b[31mred\x1b[0m\npartial ")
    lines.feed(b"line\n" + b"y" * 100_000 + b"sekrit-value-tail\nnext\n")
    for _ in range(STDERR_LINES_PER_SECOND * 3):
        lines.feed(b"spam\n")
    lines.flush()
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "backend svc stderr: starting with ***"
    assert messages[1] == "backend svc stderr: \\x1b[31mred\\x1b[0m"
    assert messages[2] == "backend svc stderr: partial line"
    assert all("sekrit" not in m and len(m) < STDERR_LINE_LIMIT + 100 for m in messages)
    assert len(messages) <= 2 * STDERR_LINES_PER_SECOND + 2 and "stderr lines not logged" in messages[-1]
