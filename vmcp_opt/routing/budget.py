"""Bounds on what callers can make the gateway hold for them: slots per caller and in total (`Budget`), and
how often they may spend something (`TokenBuckets`: the rate limits' memory store, shared/rate_limits.py, and
the dedicated sessions' start rate, routing/dedicated.py: here, as `routing/` may not import `shared/`).

A refusal is `LimitReached`, an MCP error that says which bound, and when to try again; it is logged
once per interval per bound, not once per request (a flood must not become a flood of log lines).

The rounds of 2026-07-28 clients waiting for their input (a backend call's, routing/round_trips/pending.py; a
workflow run's, workflows/rounds.py) share one `Budget` and take their slots through `admit`: at a caller's cap
its round that has waited longest for a retry, of either kind, is ended instead of the new one being refused. A
client cannot say it gave up on a round (the user closed the dialog), so a refusal locked its asking tools and
workflows for `timeouts.input` after a few such rounds. Never another caller's round: past the total a new round
is still refused, as ending another caller's would let one client erase everyone's.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)

# Ids of rounds ended to make room that are remembered, so their retries hear why (a bounded memory: an older one
# gets its registry's plain "no pending ..." answer).
EVICTED_REMEMBERED = 1024
# Seconds a new round waits for the round it ended to stop (a backend call's session to close: a stdio backend's
# stop is bounded well within it), so the caller's processes stay at its cap instead of growing while old ones stop.
EVICTION_WAIT = 15.0


class LimitReached(MCPError):
    def __init__(self, what: str, setting: str, retry_after: float) -> None:
        super().__init__(
            types.INTERNAL_ERROR,
            f"{what} ({setting}); try again in {retry_after:g}s",
            {"limit": setting, "retry_after": retry_after},
        )
        self.setting = setting


class Waiting(Protocol):
    """A round waiting for its client's input that holds a slot (`Budget.admit`), which a newer round of the same
    caller may end."""

    id: str
    caller: str
    what: str  # for the log and its retry's answer: "call", "workflow run"
    driven: bool  # a request of its client is waiting on it now: not abandoned
    idle_since: float  # when a request last stopped waiting on it
    ended: anyio.Event  # set once its work has stopped

    def end(self) -> None:
        """Cancel its work and leave its registry (which releases its slot), at once."""


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
        self._rounds: dict[str, dict[str, Waiting]] = {}  # caller -> the rounds `admit` took slots for, by id
        self._evicted: OrderedDict[str, str] = OrderedDict()  # round id -> what it was

    def __len__(self) -> int:
        return self._count

    def held(self, caller: str) -> int:
        return self._held.get(caller, 0)

    async def admit(self, round_: Waiting) -> None:
        """Take a slot for `round_`, ending its caller's longest-idle round first at the caller's cap (then wait,
        bounded, for that one to stop); `LimitReached` when every slot of the caller is a round in progress, or
        the total is reached."""
        ended = self._end_oldest(round_.caller)
        self.acquire(round_.caller)
        if ended is not None:
            try:
                with anyio.move_on_after(EVICTION_WAIT):
                    await ended.ended.wait()
            except BaseException:  # cancelled while waiting: the new round never reaches its registry
                self.release(round_.caller)
                raise
        # Only now one that may be ended: while it waited, its registry did not know it, and could not have let go.
        self._rounds.setdefault(round_.caller, {})[round_.id] = round_

    def expired(self, round_id: str) -> MCPError | None:
        """The answer to a retry of a round `admit` ended to make room, if `round_id` names one it remembers."""
        what = self._evicted.get(round_id)
        if what is None:
            return None
        return MCPError(
            types.INVALID_PARAMS,
            f"requestState names a {what} that expired: it was ended to make room for a newer call of the same "
            f"caller ({self._settings[1]}, {self.per_caller}); call again without requestState",
        )

    def _end_oldest(self, caller: str) -> Waiting | None:
        if self.held(caller) < self.per_caller:
            return None
        waiting = [round_ for round_ in self._rounds.get(caller, {}).values() if not round_.driven]
        if not waiting:
            return None  # every slot is a round in progress: `acquire` refuses
        oldest = min(waiting, key=lambda round_: round_.idle_since)
        logger.info(
            "a 2026-07-28 caller's %s that waited longest for its input ended to make room for its new one (%s, %d)",
            oldest.what,
            self._settings[1],
            self.per_caller,
        )
        self._evicted[oldest.id] = oldest.what
        while len(self._evicted) > EVICTED_REMEMBERED:
            self._evicted.popitem(last=False)
        oldest.end()
        return oldest

    def acquire(self, caller: str) -> None:
        """Take a slot for `caller`, or raise `LimitReached` naming the bound it would pass."""
        held = self._held.get(caller, 0)
        if held >= self.per_caller:
            self._refuse(f"this caller already holds {self.per_caller} {self.name}", self._settings[1], caller)
        if self._count >= self.total:
            self._refuse(f"the gateway already holds {self.total} {self.name}", self._settings[0], caller)
        self._held[caller] = held + 1
        self._count += 1

    def release(self, caller: str, round_id: str | None = None) -> None:
        """Free a slot of `caller`; `round_id` names the round `admit` took it for."""
        if round_id is not None and (rounds := self._rounds.get(caller)) is not None:
            rounds.pop(round_id, None)
            if not rounds:
                del self._rounds[caller]
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
