"""Bounds on what callers can make the gateway hold for them: slots per caller and in total.

A refusal is `LimitReached`, an MCP error that says which bound, and when to try again; it is logged
once per interval per bound, not once per request (a flood must not become a flood of log lines).
"""

from __future__ import annotations

import logging

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
