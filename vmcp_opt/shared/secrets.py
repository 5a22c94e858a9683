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


def redis_users(config: VmcpConfig) -> list[str]:
    """The settings that make the gateway use Redis (and so read its password)."""
    limits = config.rate_limits
    users = {
        "sessions.store": config.sessions.store == "redis",
        "rate_limits.store": limits.store == "redis" and bool(limits.per_caller or limits.shared or limits.per_tool),
        "optimizer.usage_store": config.optimizer.usage_store == "redis" and config.optimizer.usage,
        "redis.share_changes": config.redis.share_changes,
    }
    return [setting for setting, used in users.items() if used]


def secret_problems(config: VmcpConfig) -> list[str]:
    """The secrets the config names that are missing or unusable (`vmcp validate`); never their values."""
    from vmcp_opt.shared.state_keys import state_keys  # it reads its keys through this module

    problems = []
    users = redis_users(config)
    if users:
        redis = config.redis
        try:
            read_secret(config, "redis.password", redis.password_env, redis.password_file)
        except SecretMissing as exc:
            problems.append(f"{exc} (Redis is used by {', '.join(users)})")
    try:
        state_keys(config)
    except SecretMissing as exc:
        problems.append(str(exc))
    return problems
