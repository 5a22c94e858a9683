"""Secrets named by the config (an environment variable or a file), never written in it."""

from __future__ import annotations

import os

from vmcp_opt.config import VmcpConfig


class SecretMissing(Exception):
    """A secret the config names is not there; the message names the setting."""


def read_secret(config: VmcpConfig, setting: str, env: str | None, file: str | None) -> bytes | None:
    """The secret's bytes (a file's trailing newline dropped), None when neither source is set."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise SecretMissing(f"{setting}_env: the environment variable {env} is not set")
        return value.encode()
    if file:
        path = config.resolve_path(file)
        try:
            return path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise SecretMissing(f"{setting}_file: cannot read {path}: {exc.strerror}") from None
    return None
