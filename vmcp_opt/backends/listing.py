"""What a backend offers (`BackendListing`), and listing pages with their invalid items screened out.

A listing page the SDK refuses because some of its items fail the protocol's validation (a tool whose
`inputSchema` is not an object, say) is fetched again through a `WatchedReadStream` with an `ItemScreen`,
which drops those items, each with a warning: one bad tool never fails its backend.

A page of tools is validated on a worker thread (`list_tools_page`): the SDK's `list_tools` does it on the
event loop, ~0.3 s for one page of 10k tools in which no request, health check or timer ran. A screened
page is screened on a worker thread too, item by item, so the loop runs between items: on the loop it held
it ~0.8 s for 50,000 tools, at every re-fetch a backend could ask for with `list_changed`. Its warnings stop
at `MAX_DROP_WARNINGS` a page, the rest counted in one line.

A tool whose definition (name, description, schemas, as JSON) is longer than `MAX_TOOL_CHARS` is dropped
from its page the same way (`_within_size`): every `tools/list` answer and every find_tool answer naming it
would carry it, and its tokens counted for find_tool took seconds of CPU. A 5 MB description made one search
answer 6 MB, 550,000 tokens, more than any agent's context.

One list, across its pages, takes in at most `limits.max_listed_items_per_backend` items and `MAX_LISTED_CHARS`
characters of JSON (`ListBudget`); past either it is cut short, what was read kept, with one warning. The page cap
alone let a backend that gave a new cursor with every page of 20,000 resources grow the gateway by 1.3 GB in 35 s,
at every re-fetch it announced and every reconnect.

A page longer than the transport takes in (`limits.max_result_bytes` with room for the envelope: backends/stdio.py,
backends/http_bodies.py), or of more values than a page may hold (backends/results.py, `page_values`: the larger of
`limits.max_result_values` and `MAX_PAGE_VALUES`, counted before it is parsed), ends its list there, the pages before
it kept, with one warning (`_cut_at_page`): the page is an error for its request, which failed the whole backend,
and its reconnects read it again for good. A page of 4.3 million values in a field beside its one tool held the
event loop over a second at every re-fetch.

A lone surrogate (an unpaired `\\ud800`-`\\udfff` escape, which JSON allows and no UTF-8 writer can write) in an item's
text becomes U+FFFD where the list is taken in (`mended_items`, on the budget's worker thread); an item whose name or URI
holds one is dropped with a warning (backends/lone_surrogates.py says why). Left in, one description failed every
client's `tools/list`. Only a stdio backend whose output has shown one is walked (`suspected`): an HTTP or SSE
backend's bytes are mended before they are parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.client import session as sdk_session
from mcp.client.session import ClientSession
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.methods import validate_server_result
from pydantic import ValidationError

from vmcp_opt.backends.errors import over_result_cap
from vmcp_opt.backends.forwarding import WrappedReadStream
from vmcp_opt.backends.http_bodies import as_internal_error
from vmcp_opt.backends.lone_surrogates import escaped, mended_items, suspected
from vmcp_opt.backends.results import json_size
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

MAX_DROP_WARNINGS = 20
# Pages of one list fetched from a backend; past it the listing is cut short, with a warning.
MAX_PAGES = 1000
# Characters of one list's items as JSON (about), across its pages: 128 MiB, some 50,000 tools of 2.6k each.
MAX_LISTED_CHARS = 128 * 1024 * 1024
# Tools per pydantic call when a page is validated (`_validated_in_slices`).
TOOLS_SLICE = 500
# Characters of one tool's definition as JSON, about: ~64k tokens, far past any real tool's (a few thousand).
MAX_TOOL_CHARS = 256 * 1024
# (backend, method) of lists a backend offers but does not serve, already warned about (`_without_list`).
_UNSERVED_LISTS: set[tuple[str, str]] = set()
# (backend, method) of lists already cut at a `ListBudget` bound and warned about (later cuts are logged at debug).
_CUT_LISTS: set[tuple[str, str]] = set()


@dataclass
class BackendListing:
    tools: list[types.Tool] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    resource_templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)


# A listing's attribute → its method and the key of its items in the result.
LISTS = {
    "tools": ("tools/list", "tools"),
    "resources": ("resources/list", "resources"),
    "resource_templates": ("resources/templates/list", "resourceTemplates"),
    "prompts": ("prompts/list", "prompts"),
}


@dataclass
class ItemScreen:
    """Drops the items of one listing result that fail the protocol's validation, each with a warning."""

    backend: str
    method: str
    key: str
    version: str

    def applies(self, result: dict[str, Any]) -> bool:
        return isinstance(result.get(self.key), list)

    def screen(self, result: dict[str, Any]) -> dict[str, Any]:
        """`result` without its invalid items (many small validations: run it on a worker thread)."""
        kept = []
        dropped = 0
        for item in result[self.key]:
            try:
                validate_server_result(self.method, self.version, {self.key: [item]})
            except (ValidationError, ValueError, KeyError) as exc:
                dropped += 1
                if dropped <= MAX_DROP_WARNINGS:
                    name = item.get("name", item.get("uri", "?")) if isinstance(item, dict) else "?"
                    logger.warning(
                        "backend %s: %s '%s' dropped: its definition is invalid (%s)",
                        self.backend,
                        self.key.rstrip("s"),
                        escaped(shorten(str(name))),
                        first_error(exc),
                    )
                continue
            kept.append(item)
        if dropped > MAX_DROP_WARNINGS:
            logger.warning(
                "backend %s: %d more %s dropped as invalid (warnings stop at %d a listing)",
                self.backend,
                dropped - MAX_DROP_WARNINGS,
                self.key,
                MAX_DROP_WARNINGS,
            )
        return {**result, self.key: kept}


def first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"][2:])  # past the listing key and the index
        return shorten(f"{where}: {error['msg']}" if where else error["msg"], 200)
    return shorten(str(exc), 200)


class WatchedReadStream(WrappedReadStream):
    """The transport's read stream, telling us when it ends (the SDK session has no closed signal).

    While `screening` is set, listing results pass through it (`BackendConnection._screened_page`).
    """

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        super().__init__(inner)
        self._on_end = on_end
        self.screening: ItemScreen | None = None

    def wrapping(self, inner: Any) -> WatchedReadStream:
        self._inner = inner
        return self

    async def receive(self) -> Any:
        try:
            message = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise
        screening = self.screening
        if screening is not None and isinstance(message, SessionMessage):
            response = message.message
            if isinstance(response, types.JSONRPCResponse) and screening.applies(response.result):
                kept = await anyio.to_thread.run_sync(screening.screen, response.result)
                screened = response.model_copy(update={"result": kept})
                return SessionMessage(screened, metadata=message.metadata)
        return message


@dataclass
class ListBudget:
    """What one list may take in across its pages: `most` items (`limits.max_listed_items_per_backend`) and
    `chars` characters of JSON."""

    backend: str
    method: str
    most: int
    chars: int = MAX_LISTED_CHARS
    taken: int = 0
    size: int = 0

    async def take(self, page: list[Any], more: bool) -> list[Any]:
        """The first items of `page` within the budget, sizes measured on a worker thread (the walk stops at the
        bound). `more`: the backend offers another page; a list cut short is warned about."""
        kept = await anyio.to_thread.run_sync(self._within, page)
        if len(kept) < len(page) or (more and self.spent):
            self._warn_cut()
        if not suspected(self.backend):  # nothing to mend: see the module
            return kept
        return await anyio.to_thread.run_sync(mended_items, self.backend, self.method, kept)

    @property
    def spent(self) -> bool:
        return self.taken >= self.most or self.size >= self.chars

    def _within(self, page: list[Any]) -> list[Any]:
        count = 0
        for item in page[: self.most - self.taken]:
            size = json_size(item, self.chars - self.size)
            if size is None:
                self.size = self.chars
                break
            self.size += size
            count += 1
        self.taken += count
        return page if count == len(page) else page[:count]

    def _warn_cut(self) -> None:
        """At WARNING once per backend and list in this process: a list cut short is cut again at every re-fetch."""
        level = logging.DEBUG if (self.backend, self.method) in _CUT_LISTS else logging.WARNING
        _CUT_LISTS.add((self.backend, self.method))
        if self.taken >= self.most:
            bound = f"limits.max_listed_items_per_backend ({self.most:,} items)"
        else:
            bound = f"{self.chars:,} characters of JSON, the most one list holds"
        logger.log(
            level,
            "backend %s: %s offers more than %s: only its first %s items are served",
            self.backend,
            self.method,
            bound,
            f"{self.taken:,}",
        )


async def fetch_listing(
    session: ClientSession, stream: WatchedReadStream, backend: str, version: str, max_items: int
) -> BackendListing:
    """Everything the backend offers, page by page, at most `max_items` items a list (and `MAX_LISTED_CHARS`); a
    page refused for some of its items comes again without them (`stream` screens the repeat)."""
    capabilities = session.server_capabilities

    async def paginate(list_method: Callable[..., Awaitable[Any]], attribute: str) -> list[Any]:
        items: list[Any] = []
        cursor: str | None = None
        seen: set[str] = set()
        budget = ListBudget(backend, LISTS[attribute][0], max_items)
        for _ in range(MAX_PAGES):  # a backend that never stops paginating must not hang discovery
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            try:
                page = await list_method(params=params)
            except MCPError as exc:
                if exc.code == types.METHOD_NOT_FOUND:
                    return _without_list(backend, attribute, items)
                if over_result_cap(as_internal_error(exc) or exc):
                    return _cut_at_page(backend, attribute, items, exc)
                raise
            except (ValidationError, ValueError):  # ValueError: a schema nested past pydantic's serializer's depth
                method, key = LISTS[attribute]
                stream.screening = ItemScreen(backend, method, key, version)
                try:
                    page = await list_method(params=params)
                finally:
                    stream.screening = None
            cursor = page.next_cursor
            items.extend(await budget.take(getattr(page, attribute), more=bool(cursor)))
            if not cursor or budget.spent:
                return items
            if cursor in seen:
                # A cursor that comes back would be followed to the page cap, each round adding the same
                # items again (1,000 copies of them held, and every one a duplicate to drop).
                logger.warning(
                    "backend %s: %s gave a cursor it already gave (%r): the listing stops there, %d items",
                    backend,
                    LISTS[attribute][0],
                    shorten(cursor, 80),
                    len(items),
                )
                return items
            seen.add(cursor)
        logger.warning(
            "backend %s: %s still had more after %d pages: only their %d items are served",
            backend,
            LISTS[attribute][0],
            MAX_PAGES,
            len(items),
        )
        return items

    async def list_tools(params: types.PaginatedRequestParams | None = None) -> types.ListToolsResult:
        return await list_tools_page(session, params, backend)

    listing = BackendListing()
    if capabilities is None or capabilities.tools is not None:
        listing.tools = await paginate(list_tools, "tools")
    if capabilities is not None and capabilities.resources is not None:
        listing.resources = await paginate(session.list_resources, "resources")
        listing.resource_templates = await paginate(session.list_resource_templates, "resource_templates")
    if capabilities is not None and capabilities.prompts is not None:
        listing.prompts = await paginate(session.list_prompts, "prompts")
    return listing


def _without_list(backend: str, attribute: str, items: list[Any]) -> list[Any]:
    """A list the backend's capabilities promise but whose method it does not serve (`-32601`): a server that
    declares `resources` and implements `resources/list` only is common (the SDKs' low-level servers answer
    what has a handler). Failing the whole backend for it left its tools unserved, reconnecting without end,
    with "Method not found" as the only reason given."""
    method = LISTS[attribute][0]
    if (backend, method) not in _UNSERVED_LISTS:  # once, not at every re-fetch: backends are few, methods four
        _UNSERVED_LISTS.add((backend, method))
        logger.warning(
            "backend %s: answers %s with 'Method not found' though its capabilities offer it; served without %s",
            backend,
            method,
            attribute.replace("_", " "),
        )
    return items


def _cut_at_page(backend: str, attribute: str, items: list[Any], exc: MCPError) -> list[Any]:
    """A list whose next page the transport refused for its size: the items of the pages before it, with a warning
    (at WARNING once per backend and list, as `ListBudget`'s cuts)."""
    method = LISTS[attribute][0]
    level = logging.DEBUG if (backend, method) in _CUT_LISTS else logging.WARNING
    _CUT_LISTS.add((backend, method))
    logger.log(
        level,
        "backend %s: %s: a page was too large to take in (%s); only the %d items before it are served",
        backend,
        method,
        shorten((as_internal_error(exc) or exc).error.message, 300),
        len(items),
    )
    return items


async def list_tools_page(
    session: ClientSession, params: types.PaginatedRequestParams | None, backend: str
) -> types.ListToolsResult:
    """`session.list_tools(params=params)`, with the page's validation on a worker thread.

    The same request as the SDK's `send_request` makes (its stamp and read timeout), then the same steps on
    the result: the protocol version's validation, the version-free model, and `_absorb_tool_listing` (the
    2026-07-28 `x-mcp-header` check and the per-tool state later calls use). On the thread, the Python parts
    leave the GIL to the event loop between pydantic's calls: the slowest `/healthz` answer while a 10k-tool
    gateway started went from 278-291 to 63-113 ms (bench/README.md, sixth session). This uses the SDK's
    private names below (`mcp` is pinned); every test that lists a backend goes through here.
    """
    request = types.ListToolsRequest(params=params)
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    options: CallOptions = {}
    session._stamp(data, options)
    if session._session_read_timeout_seconds is not None:
        options["timeout"] = session._session_read_timeout_seconds
    raw = await session._dispatcher.send_raw_request("tools/list", data.get("params"), options)
    complete = params is None or params.cursor is None
    return await anyio.to_thread.run_sync(_validated_tools_page, session, raw, complete, backend)


def _validated_tools_page(
    session: ClientSession, raw: dict[str, Any], complete: bool, backend: str
) -> types.ListToolsResult:
    sdk_session._clamp_inbound_ttl(raw)
    version = session._negotiated_version or "2025-11-25"  # the SDK's own fallback
    later = sdk_session._later_revision_fields("tools/list", version)
    # The fields of later protocol revisions are left out of the version-free model, as the SDK does.
    tools = raw.get("tools")
    if isinstance(tools, list):
        tools = raw["tools"] = _within_size(backend, tools)
    kept = {key: value for key, value in raw.items() if key not in later}
    if not isinstance(tools, list) or len(tools) <= TOOLS_SLICE:
        validate_server_result("tools/list", version, raw)
        result = types.ListToolsResult.model_validate(kept, by_name=False)
    else:
        result = _validated_in_slices(version, raw, kept, tools)
    return session._absorb_tool_listing(result, complete=complete and result.next_cursor is None)


def _within_size(backend: str, tools: list[Any]) -> list[Any]:
    """`tools` without those whose definitions pass `MAX_TOOL_CHARS`, each with a warning (`MAX_DROP_WARNINGS` a
    page). Measured on the page's JSON values, a walk that stops at the bound."""
    kept: list[Any] = []
    dropped: list[Any] = []
    for tool in tools:
        (kept if json_size(tool, MAX_TOOL_CHARS) is not None else dropped).append(tool)
    if not dropped:
        return tools
    for tool in dropped[:MAX_DROP_WARNINGS]:
        name = tool.get("name", "?") if isinstance(tool, dict) else "?"
        logger.warning(
            "backend %s: tool '%s' dropped: its definition is longer than %s characters",
            backend,
            shorten(str(name)),
            f"{MAX_TOOL_CHARS:,}",
        )
    if len(dropped) > MAX_DROP_WARNINGS:
        logger.warning(
            "backend %s: %d more tools dropped as too long (warnings stop at %d a listing)",
            backend,
            len(dropped) - MAX_DROP_WARNINGS,
            MAX_DROP_WARNINGS,
        )
    return kept


def _validated_in_slices(
    version: str, raw: dict[str, Any], kept: dict[str, Any], tools: list[Any]
) -> types.ListToolsResult:
    """The same validations as for a short page, `TOOLS_SLICE` tools per pydantic call: each call holds the
    GIL from start to end, so over a 50,000-tool page the event loop waited for one call at a time (hundreds
    of milliseconds each on a slow host) instead of a slice's few milliseconds. The page's other fields are
    in every slice, so each is checked as the page would be; tools are checked one by one in any case."""
    slices = [tools[start : start + TOOLS_SLICE] for start in range(0, len(tools), TOOLS_SLICE)]
    for piece in slices:
        validate_server_result("tools/list", version, {**raw, "tools": piece})
    head = types.ListToolsResult.model_validate({**kept, "tools": []}, by_name=False)
    parsed: list[types.Tool] = []
    for piece in slices:
        parsed.extend(types.ListToolsResult.model_validate({"tools": piece}, by_name=False).tools)
    return head.model_copy(update={"tools": parsed})
