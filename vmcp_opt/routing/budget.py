"""Bounds on what callers can make the gateway hold for them: slots per caller and in total (`Budget`), and
how often they may spend something (`TokenBuckets`: the rate limits' memory store, shared/rate_limits.py, and
the dedicated sessions' start rate, routing/dedicated.py: here, as `routing/` may not import `shared/`).

A refusal is `LimitReached`, an MCP error that says which bound, and when to try again; it is logged
once per interval per bound, not once per request (a flood must not become a flood of log lines).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mcp_types as types
from mcp.shared.exceptions import MCPError

from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)


class LimitReached(MCPError):
    def __init__(self, what: str, setting: str, retry_after: float) -> None:
        super().__init__(
            types.INTERNAL_ERROR,
            f"{what} ({setting}); try again in {retry_after:g}s",
            {"limit": setting, "retry_after": retry_after},
        )
        self.setting = setting


class Budget:
    """Counted slots: at most `per_caller` for one caller and `total` for all."""

    def __init__(
        self, name: str, *, total: int, per_caller: int, retry_after: float, total_setting: str, caller_setting: str
    ) -> None:
        self.name = name
        self.total = total
        self.per_caller = per_caller
        self.retry_after = retry_after
        self._settings = (total_setting, caller_setting)
        self._held: dict[str, int] = {}
        # The sum of `_held`, kept: every request asks it (server/in_flight.py), with up to `total` callers held.
        self._count = 0
        self._log = ThrottledLog(logger)

    def __len__(self) -> int:
        return self._count

    def held(self, caller: str) -> int:
        """The slots `caller` holds: a registry at the cap may end one of its own rounds first (round_trips/)."""
        return self._held.get(caller, 0)

    def acquire(self, caller: str) -> None:
        """Take a slot for `caller`, or raise `LimitReached` naming the bound it would pass."""
        held = self._held.get(caller, 0)
        if held >= self.per_caller:
            self._refuse(f"this caller already holds {self.per_caller} {self.name}", self._settings[1], caller)
        if self._count >= self.total:
            self._refuse(f"the gateway already holds {self.total} {self.name}", self._settings[0], caller)
        self._held[caller] = held + 1
        self._count += 1

    def release(self, caller: str) -> None:
        held = self._held.get(caller, 0)
        if not held:
            return
        if held == 1:
            del self._held[caller]
        else:
            self._held[caller] = held - 1
        self._count -= 1

    def _refuse(self, what: str, setting: str, caller: str) -> None:
        self._log.warning(setting, "refused: %s (%s), caller %s", what, setting, caller)
        raise LimitReached(what, setting, self.retry_after)


@dataclass(frozen=True)
class Bucket:
    """A token bucket's shape: `burst` tokens at most, refilled at `rate` a second."""

    key: str
    rate: float
    burst: int
    setting: str  # the config path that set it, for the refusal


class TokenBuckets:
    """Token buckets of this process, by key. Synchronous, so atomic on the event loop. At most `max_buckets` are
    kept: past it the least recently used is forgotten (one left alone refills, so that costs at most a burst)."""

    def __init__(self, clock: Callable[[], float], max_buckets: int) -> None:
        self.clock = clock
        self.max_buckets = max_buckets
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take_now(self, buckets: Sequence[Bucket]) -> tuple[int, float] | None:
        """One token from each bucket, or none: None when taken, else (index of the refusing bucket that waits
        longest, seconds until it holds a token)."""
        now = self.clock()
        for bucket in buckets:
            # Moved to the end, refused or not: the dict's order is then least recently used first, so the
            # buckets in use (the shared one, a tool's) are the last forgotten, not the first ones ever made.
            if (state := self._state.pop(bucket.key, None)) is not None:
                self._state[bucket.key] = state
        levels = []
        refused: tuple[int, float] | None = None
        for i, bucket in enumerate(buckets):
            tokens, at = self._state.get(bucket.key, (float(bucket.burst), now))
            tokens = min(float(bucket.burst), tokens + max(0.0, now - at) * bucket.rate)
            levels.append(tokens)
            if tokens < 1 and (refused is None or (1 - tokens) / bucket.rate > refused[1]):
                refused = (i, (1 - tokens) / bucket.rate)
        if refused is not None:
            return refused
        new = sum(1 for bucket in buckets if bucket.key not in self._state)
        while self._state and len(self._state) + new > self.max_buckets:
            self._state.pop(next(iter(self._state)))
        for bucket, tokens in zip(buckets, levels, strict=True):
            self._state[bucket.key] = (tokens - 1, now)
        return None
