"""Which backend values count as secrets (headers, secret-looking env keys, anything from `${VAR}`, URL
credentials), and how a backend's stderr is shown."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from tests.support import Gateway, http_demo_backend, running_gateway, write_config
from vmcp_opt.backends.secrets import SecretFilter, mask_url, redact, secret_values
from vmcp_opt.backends.transports import STDERR_LINE_LIMIT, STDERR_LINES_PER_SECOND, _StderrLines
from vmcp_opt.config import load_config
from vmcp_opt.logs import handler_for


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


def filtered_log(secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    """A logger writing through the gateway's plain handler with a `SecretFilter`, as `mask_secrets` sets them up."""
    stream = io.StringIO()
    handler = handler_for("plain", stream)
    handler.addFilter(SecretFilter(secrets))
    log = logging.getLogger(f"vmcp_opt.test_secrets.{len(secrets)}.{id(stream)}")
    log.propagate, log.handlers = False, [handler]
    return log, stream


class CountedStr:
    """An argument that counts how often it is made text."""

    def __init__(self) -> None:
        self.times = 0

    def __str__(self) -> str:
        self.times += 1
        return "tool-7"


def test_the_secret_filter_formats_a_record_once_for_its_handler() -> None:
    log, stream = filtered_log(["sekrit-value"])
    argument = CountedStr()
    log.warning("call of %s failed", argument)
    assert stream.getvalue().endswith("call of tool-7 failed\n")
    assert argument.times == 1  # not again by the handler's formatter: the filter's text is the message


def test_a_masked_exception_text_with_a_percent_sign_keeps_the_line_whole() -> None:
    log, stream = filtered_log(["sekrit-value"])
    try:
        raise ValueError("100% of sekrit-value used")
    except ValueError:
        log.warning("call of %s failed", "tool-7", exc_info=True)
    assert stream.getvalue().endswith("call of tool-7 failed (ValueError: 100% of *** used)\n")


# A secret with a line break: h11 refuses it in a header and prints it as `repr(bytes)`, past an exact-string search.
LINE_BROKEN = "nl-secret-0123456789\nX-Evil:\t1"
SHOWN_FORMS = (
    LINE_BROKEN,
    repr(LINE_BROKEN.encode())[2:-1],
    repr(LINE_BROKEN)[1:-1],
    LINE_BROKEN.encode("unicode_escape").decode(),
    json.dumps(LINE_BROKEN)[1:-1],
)


def test_a_secret_is_masked_in_its_escaped_forms_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCP_TEST_LINE_BROKEN", LINE_BROKEN)
    backend = {
        "name": "web",
        "transport": "streamable-http",
        "url": "http://127.0.0.1:1/mcp",
        "headers": {"X-Api-Key": "${VMCP_TEST_LINE_BROKEN}"},
    }
    secrets = secret_values(load_config(write_config(tmp_path, {"backends": [backend]})).backends[0])
    log_filter = SecretFilter([LINE_BROKEN])
    accented = "café-secret\n"  # bytes above 0x7f are escaped too: `caf\xc3\xa9-secret\n`
    assert redact(repr(accented.encode()), SecretFilter([accented]).secrets) == "b'***'"
    for form in SHOWN_FORMS[:4]:
        assert redact(f"Illegal header value b'{form}'", secrets) == "Illegal header value b'***'"
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "failed: %s", (f"b'{form}'",), None)
        log_filter.filter(record)
        assert record.getMessage() == "failed: b'***'"


def readyz_error(gateway: Gateway, name: str) -> str | None:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=5.0).json()
    error: str | None = next(b for b in body["backends"] if b["name"] == name)["last_error"]
    return error


@pytest.mark.slow
def test_a_line_broken_header_secret_never_shows_in_readyz_the_log_or_vmcp_backends(tmp_path: Path) -> None:
    with http_demo_backend() as url:
        backend = {
            "name": "crm",
            "transport": "streamable-http",
            "url": url,
            "headers": {"X-Api-Key": "${VMCP_TEST_LINE_BROKEN}"},
        }
        config = write_config(tmp_path, {"backends": [backend]})
        env = {"VMCP_TEST_LINE_BROKEN": LINE_BROKEN}
        with running_gateway(config, env=env) as gateway:
            deadline = time.monotonic() + 30
            while (error := readyz_error(gateway, "crm")) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            readyz = httpx2.get(f"{gateway.base}/readyz", timeout=5.0).text
        listed = subprocess.run(
            [sys.executable, "-m", "vmcp_opt", "backends", "-c", str(config)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
    assert error is not None and "Illegal header value" in error and "***" in error  # the reason, masked
    for shown in (readyz, gateway.output(), listed.stdout + listed.stderr):
        assert "Illegal header value" in shown
        assert "nl-secret" not in shown and "X-Evil" not in shown
