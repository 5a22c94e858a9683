"""Log lines of the gateway and the `vmcp` command, on stderr (stdout is the MCP stream under `--stdio`).

- `auto` (the default): rich's handler on a terminal (colours, columns, wrapped to the window); anywhere
  else (a file, journald, a pipe, a test's captured output) the `plain` format.
- `plain`: `time level logger: message`, one line per record, never wrapped whatever the width; control
  characters in a message (a line break in a name a client or backend chose) are escaped (`\\n`).
- `json`: one JSON object per line: `time`, `level`, `logger`, `message`, the fields a call passes as
  `extra={...}`, and `exception` when there is one.

Libraries that chat at info or debug (httpx, the MCP SDK, uvicorn's access log, the model loaders, bm25s,
which sets its own logger to DEBUG when imported) are kept at WARNING whatever level is asked for: their
lines are about their internals, not about the gateway (so is asyncio's "Using selector" line, dropped
alone). The handler filters them, so a library imported later cannot lower its own level past it.
Download-style progress bars of the model loaders are turned off when stderr is not a terminal.

The config names the format, so it is read before logging is configured; what reading it warns about
(discovered mode's skipped entries) is logged with `log_once_configured`, held until `configure` and then
written in the format the config chose, not in Python's bare last-resort one.

What others can make the gateway log is bounded over time: `LineBudget` (lines per source and in total, the
drops counted for one summary line per interval) and `ThrottledLog` (one line per key and interval). So is what
a library logs on every attempt at something that stays down: the OTLP exporter warns at each retry of each
batch while the trace collector is unreachable (about a line a second, for as long as the outage lasts), and
`ThrottledLibraries` lets one record a minute through per logger and message, the values of secret-named query
parameters in a URL it names masked (a collector's `?api_key=`); the MCP SDK's records too, which a client or a
backend can make once per message it sends, over stdio as over HTTP; the counts no later line told of are logged
at exit.

Just past ~450 lines on purpose: the handlers, the throttles and the masking every record passes through are one
path a log line takes; splitting them would have each half import the other's record rules.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, TypeVar

from vmcp_opt.display import shorten

LogFormat = Literal["auto", "plain", "json"]
logger = logging.getLogger(__name__)

NOISY_LIBRARIES = (
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "sse_starlette",
    "redis",
    "mcp",
    "uvicorn.access",
    "sentence_transformers",
    "transformers",
    "huggingface_hub",
    "filelock",
    "urllib3",
    "faiss",
    "bm25s",
    "client",  # the MCP SDK's client session logs under this bare name, not under `mcp`
)
# Libraries whose repeated records are cut to one per message and `ThrottledLibraries.interval` (their warnings
# included): their messages are templates, so the keys are few. The SDK's client warns of a backend's redirect
# twice per reconnect attempt, for as long as the backend stays down (ReconnectLog says it once); its server warns
# once per malformed notification a client sends (`mcp.server.runner`), its client session once per malformed
# notification a backend sends (`client`, with a traceback). On the handler `configure` sets up, so stdio and HTTP
# alike (over HTTP server/sessions.py throttles the server's refusals on their loggers too).
THROTTLED_LIBRARIES = ("opentelemetry", "mcp", "client")
PLAIN_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
PLAIN_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Attributes every LogRecord has: what is left on a record besides them came from `extra={...}`.
_RECORD_FIELDS = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", "taskName"}
)


# Records logged before `configure` chose the handler, in order (`log_once_configured`).
_held: list[logging.LogRecord] = []


def log_once_configured(logger: logging.Logger, level: int, message: str, *args: object) -> None:
    """Log now when logging is configured (a handler on the root logger), else hold the record for `configure`.

    A command that never configures logging (`vmcp validate`) still shows held records: at exit, as Python's
    last-resort handler would have shown them at once."""
    if logging.getLogger().handlers or not logger.isEnabledFor(level):
        logger.log(level, message, *args)
        return
    if not _held:
        atexit.register(release_held)
    _held.append(logger.makeRecord(logger.name, level, "(held)", 0, message, args, None))


def release_held() -> None:
    """Write the held records now, through the root handler or, with none, as Python's last-resort handler
    does: a command that never configures logging (`vmcp validate`) shows them before its own output, not at
    exit after it."""
    held, _held[:] = list(_held), []
    for record in held:
        if logging.getLogger().handlers:
            logging.getLogger(record.name).handle(record)
        elif logging.lastResort is not None:
            logging.lastResort.handle(record)


# asyncio's debug line at every event loop's creation, the first line of every `--log-level debug` run: it says
# nothing about the gateway. Only this line goes; asyncio's other records (its debug mode's slow callbacks,
# "Task exception was never retrieved") still show.
_SELECTOR_LINE = "Using selector: %s"
# A record's own template, kept when `QuietLibraries` folds its error into the message (a JSON log leaves `_` out).
_TEMPLATE = "_vmcp_template"


class QuietLibraries(logging.Filter):
    """Drops records below WARNING from the libraries in NOISY_LIBRARIES (and their child loggers), and below
    debug turns their tracebacks into one line: the SDK's client logs a ~15-line traceback for every answer a
    backend garbles, at every reconnection, while the gateway reports the backend's failure itself."""

    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio" and record.msg == _SELECTOR_LINE:
            return False
        if not any(record.name == name or record.name.startswith(f"{name}.") for name in NOISY_LIBRARIES):
            return True
        if record.levelno < logging.WARNING:
            return False
        if record.exc_info and record.exc_info[1] is not None and not self.tracebacks:
            error = record.exc_info[1]
            setattr(record, _TEMPLATE, record.msg)  # what `ThrottledLibraries` keys on, not the error's text
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {shorten(str(error), 300)})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


# Keys (logger and message template, or a `ThrottledLog` key) a throttle remembers; past it the oldest goes.
_THROTTLED_KEYS = 1024
_Key = TypeVar("_Key", str, tuple[str, str])


_THROTTLE_LOCK = threading.Lock()


def _let_through(last: dict[_Key, float], held_back: Counter[_Key], key: _Key, now: float) -> int:
    """Records `key` let through at `now`; how many like it were held back since. A library may format text it
    was sent into its message template (so may a key of ours): the oldest key is forgotten, with its count,
    past `_THROTTLED_KEYS`, rather than kept for the life of the process."""
    with _THROTTLE_LOCK:  # filters and throttled logs run on several threads (the exporter's, the checks')
        last.pop(key, None)  # re-inserted last: the dict's order is then oldest first
        last[key] = now
        while len(last) > _THROTTLED_KEYS:
            oldest = next(iter(last))
            del last[oldest]
            held_back.pop(oldest, None)
        return held_back.pop(key, 0)


class ThrottledLibraries(logging.Filter):
    """At most one record per logger and message template in `interval` from the libraries in THROTTLED_LIBRARIES;
    the next one let through says how many were held back, and `take_held_back` hands out those no later record
    told of (at exit: a flood in the last minute of a run is counted, not lost)."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held_back: Counter[tuple[str, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not any(record.name == name or record.name.startswith(f"{name}.") for name in THROTTLED_LIBRARIES):
            return True
        key = (record.name, str(getattr(record, _TEMPLATE, record.msg)))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held_back[key] += 1
            return False
        held = _let_through(self._last, self._held_back, key, now)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last {self.interval:g}s)"
            record.args = None
        _mask_query_secrets(record)
        return True

    def take_held_back(self) -> dict[tuple[str, str], int]:
        """The records held back since the last one let through, per logger and template; counted once."""
        with _THROTTLE_LOCK:
            held = {key: count for key, count in self._held_back.items() if count}
            self._held_back.clear()
        return held


# The throttle on the handler `configure` set up last, whose held-back counts are logged at exit.
_library_throttle: list[tuple[logging.Handler, ThrottledLibraries]] = []


def report_held_back() -> None:
    """Log how many records of each library template the throttle held back and no later line counted: a client
    flooding a short-lived gateway (a stdio one, ended with its client) would otherwise leave no trace of it. Only
    through the handler the throttle is on, while it is still the root logger's."""
    if not _library_throttle:
        return
    handler, throttle = _library_throttle[0]
    stream = getattr(handler, "stream", None)
    if handler not in logging.getLogger().handlers or getattr(stream, "closed", False):
        return  # replaced, or its stream gone (a test's captured output): nowhere to say it
    for (name, template), count in sorted(throttle.take_held_back().items()):
        shown = shorten(masked_query_secrets(template), 200)
        logger.warning("%s: %d more like %r were not logged (one a %gs is)", name, count, shown, throttle.interval)


# A URL's query in a library's message (the OTLP exporter's "url: /v1/traces?api_key=…"). A value may hold any of
# RFC 3986's sub-delimiters (`,` `;` `(` `)` `'`...): the query runs from its `?` to a space, to what no URL holds
# unencoded and text sets around one (`"` `<` `>`, RFC 3986 appendix C), or to its fragment's `#`. A match starts at
# a `?` and takes every later one: one pass over the line, no backtracking (as `://` anchors the other).
_QUERY = re.compile(r"\?([^\s\"<>#]+)")
_USERINFO = re.compile(r"(?<=://)[^\s/?#\"<>]*@")  # a URL's credentials, `user:password@`, masked as `mask_url` does
_TRAILING = ".,;:!?)]}'"  # ending a query: the prose's, as linkifiers read it (a secret's own would show, alone)


def masked_userinfo(text: str) -> str:
    """`text` with the credentials before the host of any URL in it masked (`postgres://***@db`): a backend's
    stderr or error quoting its DSN, whatever the password is."""
    return _USERINFO.sub("***@", text) if "://" in text and "@" in text else text


def masked_query_secrets(text: str) -> str:
    """`text` with the values of secret-named query parameters (`mask_url`'s names) of any URL in it masked whole,
    and the credentials before a URL's host; the text around them as it was."""
    if "?" not in text and "@" not in text:
        return text
    return _QUERY.sub(_masked_query, _USERINFO.sub("***@", text))


def _masked_query(match: re.Match[str]) -> str:
    query = match.group(1)
    core = query.rstrip(_TRAILING)
    pairs = [pair.partition("=") for pair in core.split("&")]
    secret = _secret_names([name for name, sep, value in pairs if sep and value])
    masked = (f"{name}=***" if name in secret and value else f"{name}{sep}{value}" for name, sep, value in pairs)
    return "?" + "&".join(masked) + query[len(core) :]


def _secret_names(names: list[str]) -> set[str]:
    """Which of `names` are secrets' as `mask_url` reads a query (one list of names for both), asked once for all:
    `name=v` each, the others' back as they went (none is dropped: each has its `=`); when not, all of them."""
    if not names:
        return set()
    from vmcp_opt.backends.secrets import mask_url  # here: vmcp_opt.backends imports this module

    answers = mask_url("?" + "&".join(f"{name}=v" for name in names)).removeprefix("?").split("&")
    if len(answers) != len(names):
        return set(names)
    return {name for name, answer in zip(names, answers, strict=True) if answer != f"{name}=v"}


def _mask_query_secrets(record: logging.LogRecord) -> None:
    """The record's message, and its exception's (folded into the message, as `SecretFilter` does), masked."""
    message = record.getMessage()
    masked = masked_query_secrets(message)
    if masked != message:
        record.msg, record.args = masked, None
    error = record.exc_info[1] if record.exc_info else None
    if error is not None:
        text = str(error)
        masked = masked_query_secrets(text)
        if masked != text:  # a traceback would print the exception's own text
            record.msg = f"{record.msg} ({type(error).__name__}: {masked})"
            record.args, record.exc_info, record.exc_text = None, None, None


# Control characters in a message, escaped in the plain format: a line break in text a client or a backend
# chose (a tool name, a token's subject) would otherwise start a line that reads as a record of its own.
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != ord("\t")} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}


class PlainFormatter(logging.Formatter):
    """`PLAIN_FORMAT`, the message on one line whatever it holds; a traceback follows on lines of its own, each
    indented, so that only a record's first line starts at the margin."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT, PLAIN_DATE_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_CONTROL_ESCAPES)

    def formatException(self, ei: Any) -> str:
        # Indented, every line: an exception's message may hold a line break from text a client chose, and a
        # line at the margin is a record's first.
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, with the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def handler_for(log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """The handler for a format; `auto` picks rich only when `stream` (default stderr) is a terminal."""
    stream = stream or sys.stderr
    if log_format == "json":
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        return handler
    if log_format == "auto" and stream.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        rich = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False, markup=False)
        # Rich prints the level itself; without a formatter of its own, basicConfig's "LEVEL:name:" repeats it.
        rich.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return rich
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PlainFormatter())
    return handler


def log_fatal(logger: logging.Logger, message: str, *args: object, **fields: Any) -> None:
    """Log a start-up error that ends the command, under `--log-format json`, as one JSON record on stderr,
    configuring the json handler first when nothing has configured logging yet (the error came before the
    config chose a level): a log shipper reading the output gets JSON, the held records included."""
    if not logging.getLogger().handlers:
        configure("warning", "json")
    logger.error(message, *args, extra=fields)


def configure(level: str = "info", log_format: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Route every log record through one handler on the root logger, at `level`."""
    handler = handler_for(log_format, stream)
    handler.addFilter(QuietLibraries(tracebacks=level.lower() == "debug"))
    throttle = ThrottledLibraries()
    handler.addFilter(throttle)
    if not _library_throttle:
        atexit.register(report_held_back)
    _library_throttle[:] = [(handler, throttle)]
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    release_held()
    if not (stream or sys.stderr).isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported


@dataclass
class _Bucket:
    """A token bucket: `burst` tokens at most, refilled at `rate` a second."""

    burst: float
    rate: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class LineBudget:
    """Which lines from untrusted sources (backends) are logged: each source may log `burst` lines at once, then
    `rate` a second, and all sources together `total_burst`, then `total_rate` a second. A source that writes
    without pause costs `rate` lines a second, not its own pace; a short burst (a crash's traceback) shows whole.

    Refused lines are counted per source; `summary` hands the counts out at most once per `interval` (the first
    `delay` after the first refusal: a count, not a line per refusal), `take_dropped` one source's at its end.
    Its state lives as long as the budget, across a source's restarts: a crash loop does not renew the burst."""

    def __init__(
        self,
        *,
        burst: float,
        rate: float,
        total_burst: float,
        total_rate: float,
        interval: float = 60.0,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.rate, self.interval, self.delay, self.clock = burst, rate, interval, delay, clock
        self._total = _Bucket(total_burst, total_rate, total_burst, clock())
        self._sources: dict[str, _Bucket] = {}
        self._dropped: Counter[str] = Counter()
        self._first_drop: float | None = None
        self._last_summary = -math.inf

    def allow(self, source: str) -> bool:
        """Whether a line from `source` may be logged now; if not, it is counted as dropped."""
        now = self.clock()
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._sources[source] = _Bucket(self.burst, self.rate, self.burst, now)
        if bucket.take(now):
            if self._total.take(now):
                return True
            bucket.tokens += 1  # refused by the total: the source's own budget is not spent
        self.drop(source)
        return False

    def drop(self, source: str) -> None:
        """Count a line from `source` that was not logged (refused here, or by the caller's own limit)."""
        self._dropped[source] += 1
        if self._first_drop is None:
            self._first_drop = self.clock()

    def pending(self, source: str) -> bool:
        return self._dropped[source] > 0

    def summary(self) -> dict[str, int] | None:
        """The dropped lines per source since the last summary, when one is due; None otherwise."""
        now = self.clock()
        if self._first_drop is None or now - self._first_drop < self.delay or now - self._last_summary < self.interval:
            return None
        counts = {source: count for source, count in self._dropped.items() if count}
        self._dropped.clear()
        self._first_drop, self._last_summary = None, now
        return counts or None

    def take_dropped(self, source: str) -> int:
        """`source`'s uncounted drops, now (it ended: its count must not wait for the next summary)."""
        count = self._dropped.pop(source, 0)
        if not any(self._dropped.values()):
            self._first_drop = None
        return count


class ThrottledLog:
    """At most one warning per key and interval; the next one says how many were held back."""

    def __init__(
        self,
        target: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self.target = target
        self.interval = interval
        self.clock = clock
        self.level = level  # what `warning` logs at: a routine refusal is INFO, bounded all the same
        self._last: dict[str, float] = {}
        self._held_back: Counter[str] = Counter()

    def warning(
        self,
        key: str,
        message: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
        exc_info: bool = False,
    ) -> None:
        """`extra` (the record's own fields, which a JSON log shows) and `exc_info` as `logging.Logger.log` takes
        them."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held_back[key] += 1
            return
        held = _let_through(self._last, self._held_back, key, now)
        suffix = f" (and {held} more like it in the last {self.interval:g}s)" if held else ""
        self.target.log(self.level, message + suffix, *args, extra=extra, exc_info=exc_info)


class CappedLog:
    """At most `rate` records a second (in bursts of `BURST_SECONDS`' worth); the records past it are counted, and
    the next one let through says how many were not logged. For lines made per request (`tool call … by …`): a
    client calling as fast as it can would otherwise make the gateway write as many lines (the audit log, bounded
    by its own sink, keeps every call). `rate` 0: none at all."""

    BURST_SECONDS = 5.0

    def __init__(
        self, target: logging.Logger, rate: float, setting: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.target = target
        self.rate = rate
        self.setting = setting
        self.clock = clock
        self.burst = max(1.0, rate * self.BURST_SECONDS)
        self._tokens = self.burst
        self._at = clock()
        self._held_back = 0

    def info(self, message: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        if self.rate <= 0 or not self.target.isEnabledFor(logging.INFO):
            return
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            self._held_back += 1
            return
        self._tokens -= 1
        held, self._held_back = self._held_back, 0
        suffix = f" (and {held} more like it not logged: {self.setting} is {self.rate:g} a second)" if held else ""
        self.target.info(message + suffix, *args, extra=extra)
