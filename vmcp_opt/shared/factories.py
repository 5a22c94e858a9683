"""The Redis-backed parts the config selects, built here so that redis is imported only when one is.

A config that shares nothing through Redis (the bundled demo) never loads redis: the Redis modules of this
package import it at their top and are imported here, inside the factory that the config selected. The
rate limiter's Redis store is chosen the same way in vmcp_opt/shared/rate_limits.py, and the HTTP
transport's shared sessions in vmcp_opt/server/http.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from vmcp_opt.backends.connection import BackendConnection
from vmcp_opt.config import VmcpConfig

if TYPE_CHECKING:
    from vmcp_opt.shared.freshness import ChangeBroadcast
    from vmcp_opt.shared.usage_history import RedisUsageHistory


def change_broadcast(
    config: VmcpConfig,
    connections: Callable[[str], BackendConnection | None],
    check_health: Callable[[BackendConnection], Coroutine[Any, Any, None]],
) -> ChangeBroadcast | None:
    """The broadcast `redis.share_changes` asks for; None: each replica keeps its changes to itself."""
    if not config.redis.share_changes:
        return None
    from vmcp_opt.shared.freshness import ChangeBroadcast
    from vmcp_opt.shared.redis_client import redis_client

    return ChangeBroadcast(redis_client(config), config.redis.key_prefix, connections, check_health)


def usage_history(config: VmcpConfig) -> RedisUsageHistory | None:
    """The Redis history when `optimizer.usage_store` is redis; None: the optimizer keeps its file."""
    if config.optimizer.usage_store != "redis" or not config.optimizer.usage:
        return None
    from vmcp_opt.shared.redis_client import redis_sync_client
    from vmcp_opt.shared.usage_history import RedisUsageHistory

    return RedisUsageHistory(redis_sync_client(config), config.redis.key_prefix)
