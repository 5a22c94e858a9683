"""What one caller may still teach the co-usage graph (optimizer/usage.py): each tool and pair once a period.

One caller, one vote a day. The graph is one for every caller, so what one caller does moves everyone's
ranking: a caller scripting thousands of two-call tasks (a, then b) would make b a companion of a popular a
in every other tenant's answers, and the saved history would keep it. So `UsageRecorder` counts, per caller
(`usage_client`), each tool and each pair of tools at most once per `optimizer.usage_caller_period` (a day
from the caller's first call, `CALLER_PERIOD`) and at most `CALLER_BUDGET` tools and pairs in all per period; what is past that is not learned.
Counts then read "callers (per day) that used a", "... that used a and b in one task": 200 scripted tasks
weigh what one honest task does, five callers doing a task once weigh five, as before, and a history
imported task by task (`record_task`: eval's ToolLens replay, where every task is another user's) is counted
as it always was. The price: a gateway with one client (stdio) learns a pair at most once a day, so among
its companions more days of use rank higher, not more tasks in one day (a gateway with one user may set the
period to minutes).

Why this bound and not another: counting distinct callers per pair for ever would keep caller digests per
pair in the file and in Redis (history growing with callers times pairs, and identities, if hashed, at
rest); a per-caller budget of tasks alone would still let one caller spend its whole budget on one pair. What a
caller taught in its period is kept in memory only, as a Bloom filter of tool names and pairs per caller
(`_LEDGER_BITS`, 2 KiB: a false "already taught", which only skips a count, under 0.3 % at a full budget),
under a keyed digest of the caller (a key drawn at start, never written): at most `MAX_CALLERS` callers,
the least recently active dropped first, so memory stays under 25 MiB however callers behave. Saved counts
keep their format. What this does not bound: a caller spread over R replicas (each keeps its own ledger)
teaches up to R times a day, a restart starts every caller's period anew, and many identities are many
votes (API keys are the operator's to issue; IPv6 addresses count by their /64, the block one host holds).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

# A caller teaches each tool and each pair of tools at most once per this many seconds ("one caller, one vote").
CALLER_PERIOD = 86_400.0
# Tools and pairs one caller may teach per period, at most: a caller touching everything cannot tie it all together.
# Far above an honest day's (a task of 5 tools is 15), a ceiling for the Bloom filter's error, not a tuning.
CALLER_BUDGET = 1_024
# A caller's ledger: bits and positions set per tool or pair (false positives under 0.3 % at CALLER_BUDGET).
_LEDGER_BITS = 16_384
_LEDGER_HASHES = 4
# Callers whose period is kept, at most (the least recently active dropped first).
MAX_CALLERS = 10_000


@dataclass
class _Taught:
    """What one caller taught in its current period: tools and pairs, as a Bloom filter (a bounded set that may
    answer "taught" for a few it was never given, never the reverse)."""

    started: float
    clears: int  # the graph's `clears` when the period began: a clear starts a new one
    bits: bytearray = field(default_factory=lambda: bytearray(_LEDGER_BITS // 8))
    entries: int = 0

    def has(self, positions: Iterable[int]) -> bool:
        return all(self.bits[p >> 3] & (1 << (p & 7)) for p in positions)

    def add(self, positions: Iterable[int]) -> None:
        for p in positions:
            self.bits[p >> 3] |= 1 << (p & 7)
        self.entries += 1


class CallerLedger:
    """Per caller, what it may still teach the graph in its period: each tool and each pair once, at most
    `budget` in all (the module's "one caller, one vote a day"). Not thread-safe: `UsageRecorder` holds its
    lock around it.

    Callers are known by a keyed digest (`blake2b` under a key drawn here, never written), the tools and pairs
    by positions from the same key; at most `max_callers` are kept, the least recently active dropped first
    (and, as soon as it is the least recently active, one whose period ended)."""

    def __init__(
        self, period: float = CALLER_PERIOD, budget: int = CALLER_BUDGET, max_callers: int | None = None
    ) -> None:
        self.period = period
        self.budget = budget
        self.max_callers = max_callers if max_callers is not None else MAX_CALLERS
        self._key = secrets.token_bytes(16)
        self._callers: OrderedDict[bytes, _Taught] = OrderedDict()

    def __len__(self) -> int:
        return len(self._callers)

    def teach(
        self, client: Hashable, now: float, clears: int, tool: str, companions: Iterable[str]
    ) -> tuple[bool, list[str]]:
        """Of `client`'s use of `tool` in a task with `companions`: whether it adds a task of `tool`, and the
        companions it adds a task together with. A pair counts only once both its tools counted in the period,
        so no caller makes together(a, b) exceed tasks(a)."""
        taught = self._period_of(self._digest(client), now, clears)
        own = self._positions("tool", tool)
        count_task = not taught.has(own)
        if count_task:
            if taught.entries >= self.budget:
                return False, []
            taught.add(own)
        paired = []
        for other in companions:
            pair = self._positions("pair", *sorted((tool, other)))
            if taught.entries >= self.budget:
                break
            if taught.has(self._positions("tool", other)) and not taught.has(pair):
                taught.add(pair)
                paired.append(other)
        return count_task, paired

    def _period_of(self, caller: bytes, now: float, clears: int) -> _Taught:
        taught = self._callers.pop(caller, None)
        if taught is None or now - taught.started >= self.period or taught.clears != clears:
            taught = _Taught(started=now, clears=clears)
        self._callers[caller] = taught
        # Least recently active first: a period that ended there is dropped before any live one.
        while self._callers:
            oldest = next(iter(self._callers.values()))
            if len(self._callers) <= self.max_callers and now - oldest.started < self.period:
                break
            self._callers.popitem(last=False)
        return taught

    def _digest(self, client: Hashable) -> bytes:
        return hashlib.blake2b(repr(voter(client)).encode(), key=self._key, digest_size=16).digest()

    def _positions(self, kind: str, *names: str) -> list[int]:
        text = "\x00".join((kind, *names)).encode()
        digest = int.from_bytes(hashlib.blake2b(text, key=self._key, digest_size=8).digest(), "big")
        return [(digest >> (16 * i)) % _LEDGER_BITS for i in range(_LEDGER_HASHES)]


def voter(client: Hashable) -> Hashable:
    """Who votes for `client` (`usage_client`): itself, except an IPv6 address, which votes as its /64, the
    block one host or site is given (one client rotating through it would otherwise vote 2**64 times)."""
    if isinstance(client, tuple) and len(client) == 2 and client[0] == "address" and isinstance(client[1], str):
        try:
            address = ipaddress.ip_address(client[1])
        except ValueError:
            return client
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
            return ("address", str(ipaddress.ip_network(f"{address}/64", strict=False)))
    return client
