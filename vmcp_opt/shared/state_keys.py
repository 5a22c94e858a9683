"""The keys that seal 2026-07-28 `request_state` (`request_state:` in the config).

Every replica behind one load balancer must seal with the same key, or a client's retry that lands on
another replica is refused as forged. The first key seals, every key unseals (the SDK's
`RequestStateSecurity` ring): rotation is `key=new, previous_key=old` on every replica, then, once
`timeouts.input` has passed, the old key dropped.
"""

from __future__ import annotations

from vmcp_opt.config import VmcpConfig
from vmcp_opt.shared.secrets import SecretMissing, read_secret

MIN_KEY_BYTES = 32


def unshared_key_warning(config: VmcpConfig) -> str | None:
    """Replicas sharing sessions (`sessions.store: redis`) without a shared key: each seals with its own, and a
    2026-07-28 client's retry landing on another replica is refused as "Invalid or expired requestState", which
    names nothing the operator can act on."""
    settings = config.request_state
    if config.sessions.store != "redis" or settings.key_env or settings.key_file:
        return None
    return (
        "request_state: no key set (request_state.key_env or key_file) while sessions.store is redis: each replica "
        "seals 2026-07-28 request_state with a key of its own, so a client's retry landing on another replica is "
        "refused; give every replica the same key"
    )


def state_keys(config: VmcpConfig) -> list[bytes] | None:
    """[current, previous?]; None when no key is configured (a key of this process then seals)."""
    settings = config.request_state
    keys = []
    for setting, env, file in (
        ("request_state.key", settings.key_env, settings.key_file),
        ("request_state.previous_key", settings.previous_key_env, settings.previous_key_file),
    ):
        key = read_secret(config, setting, env, file)
        if key is None:
            continue
        if len(key) < MIN_KEY_BYTES:
            raise SecretMissing(
                f"{setting}: {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} bytes of secret randomness "
                '(python -c "import secrets; print(secrets.token_hex(32))")'
            )
        keys.append(key)
    if len(keys) == 2 and keys[0] == keys[1]:
        return keys[:1]  # the rotation's last step may leave both the same for a while
    return keys or None
