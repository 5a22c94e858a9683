"""Tools used together: a co-usage graph learned from the calls the gateway routes, and what it adds to
`find_tool`'s ranking.

An agent needs every tool of a multi-step task, and its request rarely names them all ("I am attending
summit meetings" needs a news filter, a flight search and a currency converter). Which tools serve one
task together is something only the gateway sees: the calls one client makes within `usage_window`
seconds of each other form a task. For each tool the graph keeps the number of tasks it was used in and,
per other tool, how many of those used both; P(b | a) = together(a, b) / (tasks(a) + 2), the 2 keeping a
single sighting from reading as certainty.

`find_tool` then adds to each tool b: `usage_weight` * (sum over its top `usage_seeds` results a of
score(a) * P(b | a) / rank(a)); a companion the request never mentions can so enter the list. This is the
collaborative signal COLT (Qu et al., CIKM 2024) learns on ToolLens; `eval/README.md` measures it.

One caller, one vote a day: what a caller teaches passes its `CallerLedger` first (optimizer/usage_ledger.py),
so one caller scripting thousands of tasks cannot steer every other caller's ranking.

Only tool names and counts are kept: no arguments, no request text, no client identity. The file is bounded:
the `MAX_TOOLS` tools used in most tasks, each with its `MAX_COMPANIONS` most frequent companions (a catalogue
whose tool names churn, or one tool used with thousands of others, cannot grow it without end). A file that
cannot be read is kept aside under a name of its own (the last `KEPT_ASIDE` of them), never overwritten.

Where the graph is kept: optimizer/usage_files.py (a snapshot file and a journal of what each sync added, so a
sync costs what changed; `UsageHistory` is what the gateway needs of any store), shared/usage_history.py (Redis).
Whatever the store, the graph's lock is held only for what changed (`new_counts`, `absorb`, `replace`'s swap) or
a few hundred tools at a time (`to_json`): the event loop takes it for every call it learns from.

Why the kept counts are plain dicts of str to int (`Kept`), not Counters: the garbage collector leaves such a dict
untracked (an exact dict holding only strings and ints), while a Counter, a dict subclass, is always tracked. At a
million pairs the Counters were ~40,000 tracked containers holding ~2 million references; building them at each
compaction set off a full collection, which walked them (and the graph they replaced) with the GIL held: ~55-150 ms
of the event loop's time, and every later full collection paid for them again. Plain dicts made as `_plain` makes
them are never tracked; `tests/test_usage_compaction32.py` checks that a compaction's graph holds none that are.

Just past ~450 lines on purpose: the graph, the form of its counts and the recorder that feeds it change together.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmcp_opt.auth import Caller, Identification
from vmcp_opt.optimizer.file_lock import exclusive, remove_dead_writes
from vmcp_opt.optimizer.usage_ledger import CALLER_PERIOD, CallerLedger, voter

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Added to a tool's task count in P(b | a): one task seen with a and b is evidence, not certainty.
_SMOOTHING = 2.0
# Distinct tools one task holds before a new task starts: a client that runs for hours and touches
# everything would otherwise tie every tool to every other.
MAX_TASK_TOOLS = 16
# Clients whose task is still open, at most (the least recently active is forgotten first).
MAX_LIVE_CLIENTS = 10_000
# What a saved history keeps at most: tools (those in most tasks) and companions per tool (the most frequent).
# Far above ToolLens' history (eval's), so ranking as measured is unchanged; a ceiling, not a tuning.
MAX_TOOLS = 50_000
MAX_COMPANIONS = 256
# Unreadable history files kept aside (`usage.json.corrupt-<time>`), the oldest removed past this.
KEPT_ASIDE = 3
# Seconds the start waits for the history's lock to remove what killed saves left (its holders keep it for one
# merge; usage_files.LOCK_WAIT).
SWEEP_LOCK_WAIT = 5.0
# Tools whose companions `to_json` copies per hold of the graph's lock.
_COPY_CHUNK = 500
# The largest count read from a file: the ranking divides counts as floats, and a larger one (a hand-edited or
# damaged file) failed every find_tool that ranked its tool with OverflowError, and was written back.
MAX_COUNT = 2**53
# Counts as `new_counts` hands them (one sync interval's learning): tasks per tool, and per tool its companions.
Counts = tuple[Counter[str], dict[str, Counter[str]]]
# The counts the graph ranks with, the same two as plain dicts the garbage collector does not track (module note).
Kept = tuple[dict[str, int], dict[str, dict[str, int]]]


class UsageGraph:
    """Tasks per tool and co-usage per pair of tools; thread-safe, cheap to read."""

    def __init__(self) -> None:
        self._tasks: dict[str, int] = {}
        self._together: dict[str, dict[str, int]] = {}
        # What was learned since the last save: `save` merges only this into the file, so gateways
        # sharing an index_dir add to each other's history instead of overwriting it.
        self._new_tasks: Counter[str] = Counter()
        self._new_together: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()
        # Bumped on every change, so a saver knows whether there is anything to write.
        self.version = 0
        # Bumped by `forget`: a client's task open since before a clear starts anew (no pair across it).
        self.clears = 0

    def __len__(self) -> int:
        """Tools seen in at least one task."""
        return len(self._tasks)

    def record_task(self, tools: Iterable[str]) -> None:
        """A finished task: the distinct tools it used (a history imported in one go)."""
        distinct = list(dict.fromkeys(tools))[:MAX_TASK_TOOLS]
        for position, tool in enumerate(distinct):
            self.add_to_task(tool, distinct[:position])

    def add_to_task(self, tool: str, already_used: Iterable[str]) -> None:
        """`tool` joins a live task in which `already_used` (distinct, without `tool`) were called."""
        self.add_use(tool, True, [other for other in already_used if other != tool])

    def add_use(self, tool: str, count_task: bool, companions: Iterable[str]) -> None:
        """A use of `tool` as its caller may still teach it (`CallerLedger`): one more task of `tool` when
        `count_task`, one more task together with each of `companions` (distinct, without `tool`)."""
        others = list(companions)
        if not count_task and not others:
            return
        with self._lock:
            if count_task:
                self._tasks[tool] = self._tasks.get(tool, 0) + 1
                self._new_tasks[tool] += 1
            for other in others:
                for one, two in ((tool, other), (other, tool)):
                    kept = self._together.setdefault(one, {})
                    kept[two] = kept.get(two, 0) + 1
                    self._new_together.setdefault(one, Counter())[two] += 1
            self.version += 1

    def companions(self, tool: str) -> dict[str, float]:
        """P(other | tool) for every tool seen in a task with `tool`."""
        with self._lock:
            together = self._together.get(tool)
            if not together:
                return {}
            tasks = self._tasks.get(tool, 0)
            # Never above tasks(tool): a ledger's false "already taught" may skip a tool's count, not its pair's.
            return {other: min(count, tasks) / (tasks + _SMOOTHING) for other, count in together.items()}

    def stats(self) -> dict[str, int]:
        with self._lock:
            pairs = sum(len(c) for c in self._together.values()) // 2
            return {"tools": len(self._tasks), "pairs": pairs, "tool_uses": sum(self._tasks.values())}

    @property
    def has_new(self) -> bool:
        """Whether something was learned since the last merge."""
        with self._lock:
            # A pair alone can be new: its caller taught both tools' tasks earlier in its period.
            return bool(self._new_tasks) or bool(self._new_together)

    def forget(self) -> int:
        """Drop every count, kept or new (the history was cleared); the tool uses not yet merged, dropped."""
        with self._lock:
            dropped = sum(self._new_tasks.values())
            self._tasks, self._together = {}, {}
            self._new_tasks, self._new_together = Counter(), {}
            self.version += 1
            self.clears += 1
        return dropped

    # -- persistence -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Every count, as the file keeps them. Copied a few hundred tools at a time, the lock released between:
        at a million pairs one copy held it ~50 ms, and the event loop takes it for every call it learns from.
        A count learned meanwhile may or may not be in it, as if it came just before or after."""
        with self._lock:
            tasks = _plain(self._tasks)
            tools = list(self._together)
        together: dict[str, dict[str, int]] = {}
        for start in range(0, len(tools), _COPY_CHUNK):
            with self._lock:
                for tool in tools[start : start + _COPY_CHUNK]:
                    counts = self._together.get(tool)
                    if counts:
                        together[tool] = _plain(counts)
        return {"version": FORMAT_VERSION, "tasks": tasks, "together": together}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageGraph:
        """The graph `to_json` wrote (copied: `data` stays the caller's); ValueError naming the field when the data
        is not that."""
        return cls.of_counts(*saved_counts(data))

    @classmethod
    def holding(cls, counts: Kept) -> UsageGraph:
        """A graph of these counts, taken as they are (not copied: the caller hands them over)."""
        graph = cls()
        graph._tasks, graph._together = counts
        return graph

    def save(self, path: Path) -> None:
        """Add what was learned since the last save to the history at `path` (optimizer/usage_files.py: a
        snapshot and a journal of changes), then rank with the result. Under the history's file lock, so
        gateways sharing an index_dir each add their own counts and none overwrites another's."""
        from vmcp_opt.optimizer.usage_files import FileUsageHistory  # it builds on this module

        path.parent.mkdir(parents=True, exist_ok=True)
        FileUsageHistory(path).save(self)

    def new_counts(self) -> Counts:
        """A copy of what was learned since the last merge (small: one sync interval's learning)."""
        with self._lock:
            return Counter(self._new_tasks), {tool: Counter(c) for tool, c in self._new_together.items()}

    def merge(self, add: Callable[[Counter[str], dict[str, Counter[str]]], UsageGraph]) -> None:
        """Hand what was learned since the last merge to `add`, which adds it to the kept history (Redis) and
        returns the whole of it; then rank with that plus what arrived meanwhile. When `add` raises, nothing is
        lost: the counts stay new for the next merge."""
        new = self.new_counts()
        self.replace(add(*new), new)

    def replace(self, kept: UsageGraph, saved: Counts) -> None:
        """Rank with `kept` (the whole history, `saved` in it) plus what was learned since `saved` was taken.
        Under the lock only a swap and the counts learned meanwhile."""
        with self._lock:
            self._forget_saved(saved)
            replaced = self._together if self._together is not kept._together else {}
            self._tasks, self._together = kept._tasks, kept._together
            add_counts(self._tasks, self._together, self._new_tasks, self._new_together)
        # Freed a tool at a time, outside the lock: freed in one go, a million pairs held the GIL ~100 ms.
        while replaced:
            replaced.popitem()

    def absorb(self, others: Kept, saved: Counts) -> None:
        """`saved` (taken by `new_counts`, already ranked with) is kept now; `others` (what other gateways
        added to the history since the last merge) joins the ranking. Costs what changed, not the graph."""
        with self._lock:
            self._forget_saved(saved)
            add_counts(self._tasks, self._together, *others)

    def _forget_saved(self, saved: Counts) -> None:
        """No longer new: what `saved` holds (the lock is held). Counts that arrived since stay new."""
        new_tasks, new_together = saved
        self._new_tasks.subtract(new_tasks)
        self._new_tasks = +self._new_tasks
        for tool, counts in new_together.items():
            self._new_together.get(tool, Counter()).subtract(counts)
        self._new_together = {tool: +c for tool, c in self._new_together.items() if +c}

    @classmethod
    def of_counts(cls, tasks: Mapping[str, int], together: Mapping[str, Mapping[str, int]]) -> UsageGraph:
        graph = cls()
        graph._tasks = _plain(tasks)
        graph._together = {tool: _plain(counts) for tool, counts in together.items()}
        return graph

    @classmethod
    def read(cls, path: Path) -> UsageGraph:
        """The graph saved at `path` (with its journal), touching nothing: OSError or ValueError when it cannot
        be read."""
        from vmcp_opt.optimizer.usage_files import read_history  # it builds on this module

        return read_history(path)[0]

    @classmethod
    def load(cls, path: Path) -> UsageGraph:
        """The graph saved at `path`; empty when there is none. An unreadable file is kept aside as
        `<name>.corrupt` (never overwritten by the next save) and the gateway starts with no history; a newer
        release's is left where it is (`NewerFormat`)."""
        from vmcp_opt.optimizer.usage_files import load_history  # it builds on this module

        try:
            return load_history(path)[0]
        except NewerFormat as exc:
            logger.warning("optimizer: usage history %s %s: left as it is, not loaded", path, exc)
            return cls()


def bounded(data: dict[str, Any]) -> dict[str, Any]:
    """`to_json`'s data within `MAX_TOOLS` tools and `MAX_COMPANIONS` companions a tool: the tools in most
    tasks, each tool's most frequent companions among them (ties by name, so every gateway keeps the same)."""
    tasks: dict[str, int] = data["tasks"]
    together: dict[str, dict[str, int]] = data["together"]
    if len(tasks) <= MAX_TOOLS and all(len(c) <= MAX_COMPANIONS for c in together.values()):
        return data
    kept = set(sorted(tasks, key=lambda tool: (-tasks[tool], tool))[:MAX_TOOLS])
    trimmed = {}
    for tool, counts in together.items():
        if tool in kept:
            companions = sorted((o for o in counts if o in kept), key=lambda o: (-counts[o], o))[:MAX_COMPANIONS]
            if companions:
                trimmed[tool] = {other: counts[other] for other in companions}
    return {**data, "tasks": {tool: tasks[tool] for tool in kept}, "together": trimmed}


class NewerFormat(ValueError):
    """A history a newer release wrote: not damage. Left as it is (a roll forward finds it), never overwritten."""


def saved_counts(data: Any) -> Kept:
    """The counts of a saved history (`to_json`'s data, its dicts handed over: `parse_counts`); ValueError naming the
    field when the data is not that."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if type(version) is int and version > FORMAT_VERSION:  # after a rollback: not damage, and the operator should know
        raise NewerFormat(f"written by a newer vmcp-opt (format {version}; this release reads {FORMAT_VERSION})")
    if version != FORMAT_VERSION:
        raise ValueError(f"field 'version': expected {FORMAT_VERSION}, got {version!r}")
    return parse_counts(data)


def parse_counts(data: Mapping[str, Any]) -> Kept:
    """The `tasks` and `together` counts of a saved history (or of one journal line), sharing `data`'s dicts where
    they hold counts only (the caller hands them over); ValueError naming the field."""
    tasks = _counts(data.get("tasks"), "tasks")
    together = data.get("together")
    if not isinstance(together, Mapping):
        raise ValueError("field 'together': expected an object")
    return tasks, {str(tool): _counts(c, "together", tool) for tool, c in together.items()}


def add_counts(
    tasks: dict[str, int],
    together: dict[str, dict[str, int]],
    more_tasks: Mapping[str, int],
    more: Mapping[str, Mapping[str, int]],
) -> None:
    """`more_tasks` and `more` added into `tasks` and `together`, kept plain (a tool new to them: a `_plain` copy)."""
    _add(tasks, more_tasks)
    for tool, counts in more.items():
        kept = together.get(tool)
        if kept is None:
            together[tool] = _plain(counts)
        else:
            _add(kept, counts)


def _add(counts: dict[str, int], more: Mapping[str, int]) -> None:
    for key, count in more.items():
        counts[key] = counts.get(key, 0) + count


def _plain(counts: Mapping[str, int]) -> dict[str, int]:
    """A copy the garbage collector does not track (module note). `dict(a_counter)` would be tracked: copied whole
    from a tracked dict, a dict takes over its tracking; built item by item from strings and ints, it never is."""
    if type(counts) is dict and not gc.is_tracked(counts):
        return counts.copy()  # the fast copy, untracked as its source is
    return dict(counts.items())


def _counts(value: Any, field: str, tool: str | None = None) -> dict[str, int]:
    """The counts as the graph keeps them (`Kept`). A million pairs are read at load and compaction, so what JSON gave
    (string keys, int counts, an untracked dict) is checked in one pass and taken as it is: a copy would cost its CPU
    again, and freeing the parse in one go held the GIL ~10-15 ms more. Anything else is checked count by count."""
    where = field if tool is None else f"{field}.{tool}"
    if not isinstance(value, Mapping):
        raise ValueError(f"field '{where}': expected an object of counts")
    if type(value) is dict and all(
        type(key) is str and type(count) is int and 0 <= count <= MAX_COUNT for key, count in value.items()
    ):
        return value if not gc.is_tracked(value) else _plain(value)
    counts: dict[str, int] = {}
    for key, count in value.items():
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            shown = (
                repr(count)
                if not isinstance(count, int) or count <= MAX_COUNT
                else f"a {count.bit_length()}-bit integer"
            )
            raise ValueError(f"field '{where}.{key}': expected an integer from 0 to 2**53, got {shown}")
        counts[str(key)] = count
    return counts


def companion_scores(
    ranked: list[tuple[str, float]], graph: UsageGraph, seeds: int, weight: float
) -> dict[str, tuple[float, str]]:
    """What co-usage adds per tool name, given the ranking so far (best first, with scores), and the
    result that added the most (what the tool is "used with")."""
    boost: dict[str, float] = {}
    strongest: dict[str, tuple[float, str]] = {}
    for rank, (name, score) in enumerate(ranked[:seeds], start=1):
        if score <= 0:
            continue
        for other, probability in graph.companions(name).items():
            extra = weight * score * probability / rank
            boost[other] = boost.get(other, 0.0) + extra
            if extra > strongest.get(other, (0.0, ""))[0]:
                strongest[other] = (extra, name)
    return {other: (total, strongest[other][1]) for other, total in boost.items()}


@dataclass
class _LiveTask:
    tools: list[str] = field(default_factory=list)
    last_call: float = 0.0
    clears: int = 0  # the graph's `clears` when the task began


class UsageRecorder:
    """Turns each client's successful calls into tasks of the graph.

    Keyed by the client (`usage_client`: who calls, not which session) as the ledger counts it (an IPv6 /64 is
    one client: one host rotating through its addresses would otherwise evict everyone's open task): at most
    `MAX_LIVE_CLIENTS` open tasks, the least recently active client's forgotten first. A call more than `window`
    seconds after the client's previous one starts a new task, and so does the first call after the history was
    cleared (`UsageGraph.forget`). What a task teaches passes the `CallerLedger` first: per client, each tool and
    pair once per `period`.
    """

    def __init__(
        self,
        graph: UsageGraph,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        period: float = CALLER_PERIOD,
    ) -> None:
        self.graph = graph
        self.window = window
        self._clock = clock
        self._live: OrderedDict[Hashable, _LiveTask] = OrderedDict()
        self.ledger = CallerLedger(period, max_callers=MAX_LIVE_CLIENTS)
        self._lock = threading.Lock()

    def tool_used(self, client: Hashable, tool: str) -> None:
        now = self._clock()
        key = voter(client)
        with self._lock:
            task = self._live.pop(key, None)
            if (
                task is None
                or now - task.last_call > self.window
                or len(task.tools) >= MAX_TASK_TOOLS
                or task.clears != self.graph.clears
            ):
                task = _LiveTask(clears=self.graph.clears)
            self._live[key] = task
            while len(self._live) > MAX_LIVE_CLIENTS:
                self._live.popitem(last=False)
            task.last_call = now
            if tool in task.tools:
                return
            already_used = list(task.tools)
            task.tools.append(tool)
            count_task, companions = self.ledger.teach(client, now, task.clears, tool, already_used)
        self.graph.add_use(tool, count_task, companions)


def remove_dead_saves(path: Path) -> None:
    """The temporary files of the history's writes (and of its clear marker's) whose writer died mid-write, removed
    under the history's lock, which every writer of both holds: `usage.json` is a few MB at 50,000 tools, and each
    killed save left one for good. Best effort: a lock held past `SWEEP_LOCK_WAIT` (a stuck gateway) or a
    directory that cannot be written leaves them for the next start."""
    leftovers = [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f"..{path.name}.cleared.*.tmp")]
    if not leftovers:
        return  # the usual start: no lock file made where no history is kept yet
    removed: list[Path] = []
    try:
        with exclusive(lock_path(path), timeout=SWEEP_LOCK_WAIT):
            removed += remove_dead_writes(path)
            removed += remove_dead_writes(path.with_name(f".{path.name}.cleared"))
    except OSError as exc:
        logger.debug("optimizer: leftovers of usage history saves not removed (%s)", exc)
    for tmp in removed:
        logger.info("optimizer: removed %s, left by a usage history save that did not finish", tmp)


def lock_path(path: Path) -> Path:
    """The lock every writer of the history at `path` holds (never removed: that would race with a saver)."""
    return path.with_name(f".{path.name}.lock")


def usage_client(caller: Caller) -> Hashable:
    """Whose tasks a call belongs to, for learning: the verified subject when authenticated, else the client's
    address over HTTP, else the one stdio client. Not the session or an unverified credential, which a client
    makes as many of as it likes: each would weigh as another client in everyone's ranking."""
    if caller.subject is not None and caller.identified_by in (Identification.TOKEN, Identification.API_KEY):
        return ("subject", caller.subject)
    if caller.address is not None:
        return ("address", caller.address)
    return ("stdio",)
