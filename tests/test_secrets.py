"""Which backend values count as secrets: headers, secret-looking env keys, anything from `${VAR}`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import write_config
from vmcp_opt.backends.secrets import redact, secret_values
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
