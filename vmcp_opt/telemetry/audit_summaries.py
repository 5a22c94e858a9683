"""Refusals summarised per source and interval, so that a client without a credential cannot rotate the audit trail.

Anyone who reaches the port can have a request refused (a bad key: `vmcp_auth_denied`; a 429:
`vmcp_rate_limited`; a session limit: `vmcp_session_refused`; a forged or expired 2026-07-28 `requestState`: the
request's own type marked `round_refused`, run_audit.py) at request rate. One line each let a single address
write ~450 KB a second and rotate every authenticated caller's events out of the kept files. So per source (the
verified caller when there is one; else the client address, an IPv6 one by its /64, which one host holds whole),
reason (`error_type`: a handful of values, or a configured setting) and `SUMMARY_INTERVAL`:

- the first refusal is written at once, as before;
- the rest are counted, with their reasons, and written as one event of the same type when the interval has
  ended (the writer wakes for it) or at shutdown: `metadata.extra` holds `count` (the refusals not written one by
  one), `interval_start`, `interval_end` and `reasons` (`error_type` → count).

At most `MAX_TRACKED` sources are followed at once; a refusal from any other, while they are, is counted in one
summary per event type marked `other_sources` (none of those is written singly), so a sweep of addresses costs
a fixed table and, per interval, at most `MAX_TRACKED` events and their summaries.

A small synchronous table behind a lock (the event loop adds, the audit writer thread takes), with an injectable
clock; the events are formatted by `AuditLog` (audit.py).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from vmcp_opt.auth import Caller, Identification
from vmcp_opt.routing.operations import Operation

SUMMARY_INTERVAL = 60.0  # seconds a source's refusals after its first are counted rather than written
MAX_TRACKED = 256  # sources followed at once; refusals from others meanwhile fold into `other_sources`
MAX_REASONS = 16  # distinct reasons one summary names; more count as "other"
_MAX_FINISHED = 4 * MAX_TRACKED  # ended windows waiting for the writer; past it they fold into `other_sources`


@dataclass
class Window:
    """One source's refusals of one event type and reason within an interval, after the first (which was written);
    or, `other_sources`, all refusals of the type from sources not followed (none written)."""

    kind: str
    op: Operation  # the first refusal (slimmed): who and from where, for the summary's subjects and source
    started: float  # monotonic
    started_at: float  # wall clock, for the record
    other_sources: bool = False
    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ended: float | None = None  # monotonic; set when the window is taken

    def add(self, reason: str, times: int = 1) -> None:
        self.count += times
        if reason not in self.reasons and len(self.reasons) >= MAX_REASONS:
            reason = "other"
        self.reasons[reason] = self.reasons.get(reason, 0) + times

    def absorb(self, other: Window) -> None:
        for reason, times in other.reasons.items():
            self.add(reason, times)

    def fields(self) -> dict[str, object]:
        """What a summary adds to its event's `metadata.extra`; `interval_end` in wall-clock seconds."""
        end = self.ended if self.ended is not None else self.started
        fields: dict[str, object] = {
            "count": self.count,
            "interval_start": self.started_at,
            "interval_end": self.started_at + (end - self.started),
            "reasons": dict(self.reasons),
        }
        if self.other_sources:
            fields["other_sources"] = True
        return fields


class RefusalSummaries:
    """Which refusals to write now; the summaries of the rest once their interval ends."""

    def __init__(
        self,
        interval: float = SUMMARY_INTERVAL,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.max_tracked = max_tracked
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[str, str, str], Window] = OrderedDict()  # by start: the first ends first
        self._other: dict[str, Window] = {}  # by event type
        self._finished: list[Window] = []  # ended with a count, for the writer

    def admit(self, kind: str, source: str, op: Operation, reason: str) -> bool:
        """Whether this refusal is written now (the first of its source and reason in an interval): else it is
        counted."""
        with self._lock:
            now = self._clock()
            self._end_due(now)
            key = (kind, source, reason)
            window = self._open.get(key)
            if window is not None:
                window.add(reason)
                return False
            if len(self._open) < self.max_tracked:
                self._open[key] = Window(kind, op, now, self._wall_clock())
                return True
            other = self._other.get(kind)
            if other is None:
                other = self._other[kind] = Window(kind, op, now, self._wall_clock(), other_sources=True)
            other.add(reason)
            return False

    def wait(self) -> float | None:
        """Seconds until the next interval ends (the writer wakes then), or None when none is open."""
        with self._lock:
            starts = [window.started for window in self._other.values()]
            if self._open:
                starts.append(next(iter(self._open.values())).started)
            if not starts:
                return None
            return max(0.0, min(starts) + self.interval - self._clock())

    def ended(self) -> list[Window]:
        """The windows whose interval has ended with refusals counted, oldest first; taken."""
        with self._lock:
            self._end_due(self._clock())
            finished, self._finished = self._finished, []
            return finished

    def drain(self) -> list[Window]:
        """Every window with refusals counted, ended now (at shutdown: no count is lost)."""
        with self._lock:
            now = self._clock()
            windows = [*self._finished, *self._open.values(), *self._other.values()]
            self._finished, self._open, self._other = [], OrderedDict(), {}
            for window in windows:
                if window.ended is None:
                    window.ended = now
            return [window for window in windows if window.count]

    def _end_due(self, now: float) -> None:
        while self._open:
            key, window = next(iter(self._open.items()))
            if now < window.started + self.interval:
                break
            del self._open[key]
            self._finish(window, window.started + self.interval)
        for kind, window in list(self._other.items()):
            if now >= window.started + self.interval:
                del self._other[kind]
                self._finish(window, window.started + self.interval)

    def _finish(self, window: Window, end: float) -> None:
        if not window.count:
            return
        window.ended = end
        if len(self._finished) < _MAX_FINISHED:
            self._finished.append(window)
            return
        # The writer is behind by thousands of summaries: keep the counts, not who they were from.
        other = self._other.get(window.kind)
        if other is None:
            other = self._other[window.kind] = Window(
                window.kind, window.op, window.started, window.started_at, other_sources=True
            )
        other.absorb(window)


def refusal_source(caller: Caller) -> str:
    """Whose refusals are summarised together: a verified caller's (by its id, `subject:<digest>`), else an
    address's."""
    if caller.identified_by in (Identification.TOKEN, Identification.API_KEY) and caller.subject:
        return f"caller:{caller.id}"
    return f"address:{source_key(caller.address)}"


def source_key(address: str | None) -> str:
    """A client address as a source: an IPv6 one by its /64 (one host's, routinely), any other as it is."""
    if not address:
        return ""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
