"""The optimizer as clients see it: `find_tool` and `call_tool` in place of every backend tool.

`OptimizerFront` is a tool provider of the router (`vmcp_opt/routing/providers.py`): `tools/list` shows
the meta-tools (and the pinned backend tools the backend provider lists); `find_tool` ranks every
searchable provider's tools with the hybrid index, keeping only those the router says the caller may use;
`call_tool` goes back through the router, so policy, validation, routing and results are exactly those
of a direct call.

The index follows the providers' tools: on every change the keyword index is rebuilt at once (no model
needed, so the gateway answers within a second of start), and a background thread loads the embedding
model and embeds only new or changed tools. Until the vectors are ready `find_tool` ranks by keywords and
says so in its answer.

With `optimizer.usage` on, the router reports every finished tool call (`tool_called`, as a call
observer); a known caller's own successful calls (not a workflow's steps: `Exchange.step_of`) form tasks
of a co-usage graph (optimizer/usage.py) that raises companions in `find_tool`. The graph lives in `index_dir/usage.json`: loaded at start, written every
`optimizer.usage_sync_interval` seconds when it changed and once more by `close` on shutdown.

Just past ~450 lines: the provider's start, its index updates and its two meta-tools share the index, the slots and
the usage graph's saver; the forms, answers and names already live in modules of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

from vmcp_opt.arguments import ArgumentError, ArgumentValidator
from vmcp_opt.auth import Caller
from vmcp_opt.config import VmcpConfig
from vmcp_opt.display import shorten
from vmcp_opt.logs import ThrottledLog, masked_query_secrets
from vmcp_opt.optimizer.calibration import scale_for
from vmcp_opt.optimizer.catalogue_names import CatalogueNames, Starting, restricts
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.embedding import load_configured_embedder
from vmcp_opt.optimizer.fit_signal import nothing_fits
from vmcp_opt.optimizer.index import SearchHit, SearchResult, ToolIndex
from vmcp_opt.optimizer.index_dirs import hold_index_dir
from vmcp_opt.optimizer.listing import Listing, catalogue_key, save_complete_listing
from vmcp_opt.optimizer.meta_tool_forms import (
    CALL_TOOL,
    FIND_TOOL,
    META_TOOL_NAMES,
    META_TOOLS,
    ToolParts,
    check_sizes,
    coerce_strings,
    hit_json,
)
from vmcp_opt.optimizer.ready_signal import ReadySignal
from vmcp_opt.optimizer.search_slots import SearchSlots
from vmcp_opt.optimizer.tokens import AnswerTokens, ToolListTokens, answer_text
from vmcp_opt.optimizer.tool_records import meta_tools_tokens, provided_record
from vmcp_opt.optimizer.usage import UsageGraph, UsageRecorder, usage_client
from vmcp_opt.optimizer.usage_files import FileUsageHistory, UsageHistory
from vmcp_opt.routing import GATEWAY_SOURCE, Denied, Exchange, ProvidedTool, ToolCall, UnknownTool
from vmcp_opt.routing.operations import current

logger = logging.getLogger(__name__)

# How long shutdown waits for the embedder thread to finish what it is doing (loading the model takes ~1 s;
# a large catalogue's embedding longer: then the process leaves without its interpreter's exit, see runner).
EMBEDDER_STOP_WAIT = 5.0

USAGE_FILE = "usage.json"

POLICY_DEPTH = 4
# A string form longer than this is decoded in a worker thread: `json.loads` of a 4 MB `arguments` takes ~40 ms.
_INLINE_DECODE = 65_536
_DECODED = ("arguments", "backends")  # the fields whose string forms `coerce_strings` decodes


class OptimizerFront:
    """The meta-tools' provider, and the call observer that learns which tools are used together."""

    searchable = False  # find_tool does not find itself

    def __init__(self, config: VmcpConfig, history: UsageHistory | None = None) -> None:
        self.settings = config.optimizer
        # The index directory marked in use while this gateway runs, its owner file kept (optimizer/index_dirs.py).
        self._index_dir_hold = hold_index_dir(config)
        # Tools used together: None when `optimizer.usage` is off (nothing recorded, nothing written).
        self.usage_path = Path(config.index_dir()) / USAGE_FILE
        # Where the graph is kept: `index_dir/usage.json` unless the gateway gives another (Redis).
        self.history: UsageHistory = history or FileUsageHistory(self.usage_path)
        self.usage: UsageGraph | None = self.history.load() if self.settings.usage else None
        self._recorder = (
            UsageRecorder(self.usage, self.settings.usage_window, period=self.settings.usage_caller_period)
            if self.usage is not None
            else None
        )
        self._saved_version = self.usage.version if self.usage is not None else 0
        self._save_lock = threading.Lock()
        # A save that keeps failing (a full disk) is one warning in ten minutes, not one per sync.
        self._save_failures = ThrottledLog(logger, interval=600.0)
        self._closed = threading.Event()
        self._saver: threading.Thread | None = None
        self.index = ToolIndex(
            config.optimizer,
            config.index_dir(),
            usage=self.usage,
            model_cache=config.model_cache_dir(),
            model_cache_fallback=config.data_dir_path() / "models",
        )
        # Match scores on an absolute scale (optimizer/calibration.py); None for a model without one.
        self.match_scale = scale_for(self.index.model.id)
        learned = self.match_scale.threshold if self.match_scale is not None else 0.0
        self.match_threshold = self.settings.match_threshold if self.settings.match_threshold is not None else learned
        self.names = CatalogueNames()  # the searchable tools' names and backends
        # Which configuration the saved catalogue is of: `vmcp index` reads it only for the same one.
        self._catalogue_key = catalogue_key(config)
        # Backend tools named like a meta-tool or the script tool, as (backend, name), last warned of (`_reachable`).
        self._shadowed: frozenset[tuple[str, str]] = frozenset()
        # The names the gateway's own tools take before any backend's: the meta-tools' and code mode's script tool's.
        script_tool = frozenset([config.code_mode.tool_name] if config.code_mode.enabled else [])
        self._gateway_names: frozenset[str] = META_TOOL_NAMES | script_tool
        self._provided = {
            tool.name: ProvidedTool(tool.name, tool, GATEWAY_SOURCE, tool.name, "the gateway's own tools")
            for tool in META_TOOLS
        }
        # What `tools/list` costs without the optimizer: for every searchable tool, and per caller's usable set.
        self.list_tokens = ToolListTokens({}, (0, 0, 0, 0))
        self.meta_tools_tokens = 0
        self.answer_tokens = AnswerTokens(self.settings.model)
        self._parts = ToolParts()
        self._validator = ArgumentValidator()
        self.searches = SearchSlots(self.settings.find_tool_slots)  # find_tool's CPU, shared fairly
        # The newest catalogue waiting to be embedded; the worker always takes the latest one.
        self._pending: list[ToolRecord] | None = None
        self._wake = threading.Condition()
        self._idle = threading.Event()  # clear while the embedder thread loads the model or embeds
        self._idle.set()
        self._worker: threading.Thread | None = None
        # Set once the first catalogue is embedded (or embedding failed): a find_tool meanwhile waits for it.
        self._vectors_ready = ReadySignal()
        self._vector_deadline: float | None = None  # when find_tool stops waiting for them: the first wait's end
        # Why the last embedding of the catalogue failed, in words (/readyz, find_tool's note); None again once an
        # update succeeds (each new catalogue tries the model again: one fixed in place, a disk freed).
        self.embedding_failure: str | None = None
        # Set by the gateway: waits (bounded) for the backends' first listing, returns those still starting.
        self.wait_for_backends: Callable[[], Awaitable[list[str]]] = _none_starting
        # Set by the gateway: why a configured backend has no tools here (not connected, ...); None for a name
        # no backend has.
        self.why_no_tools: Callable[[str], str | None] = _not_configured

    # --- ToolProvider ----------------------------------------------------------------------------

    def tools(self) -> Mapping[str, ProvidedTool]:
        return self._provided

    def listed(self) -> Sequence[ProvidedTool]:
        return list(self._provided.values())

    def why_unavailable(self, name: str) -> str | None:
        return None

    async def call(self, call: ToolCall) -> types.CallToolResult:
        tool = FIND_TOOL if call.tool.name == FIND_TOOL.name else CALL_TOOL
        try:
            arguments = await _object_forms(call.arguments)
            if tool is FIND_TOOL:
                check_sizes(arguments)  # O(1) on the event loop, however long the query or `backends`
            # Off the event loop unless it cannot be costly: a long list, a deep `arguments` object.
            await self._validator.check_async(tool.name, tool.input_schema, arguments)
        except ArgumentError as exc:
            return _error(str(exc))
        if tool is FIND_TOOL:
            return await self.find_tool(
                arguments["query"], arguments.get("limit"), arguments.get("backends"), allowed=call
            )
        target = arguments["tool_name"]
        if target in META_TOOL_NAMES:
            return _error(f"field 'tool_name': '{target}' is a meta-tool; call it directly")
        try:
            return await call.router.call_tool(call.caller, target, arguments.get("arguments") or {}, call.exchange)
        except UnknownTool as unknown:
            if isinstance(unknown, Denied) and (op := current()) is not None:
                # Answered as an unknown name (no oracle), but the client's request was refused: its metrics and
                # audit outcome say so, as they did when the refusal went out as an error.
                op.outcome, op.error = "denied", "denied"
            if unknown.why is not None:  # served by another replica behind this endpoint, not by this one
                return _error(f"field 'tool_name': {unknown.why}")
            meant = unknown.meant  # `Router.meant`: the names it likely meant, among those the caller may use
            hint = f"did you mean {' or '.join(map(repr, meant))}? Otherwise use" if meant else "use"
            return _error(f"field 'tool_name': unknown tool '{shorten(target)}'; {hint} find_tool to look tools up")

    async def tools_changed(self, tools: Sequence[ProvidedTool], not_connected: Sequence[str] = ()) -> None:
        """The searchable providers' tools changed: re-index them (keywords now, vectors in the background).
        `not_connected`: the configured backends whose tools are missing from `tools` because they are down."""
        tools = self._reachable(tools)
        self.names.update(tools)
        # Keywords at once, never waiting for an embedding in progress (`ToolIndex.update_keywords`);
        # the records too are made on the worker thread (10k tools: ~0.1 s).
        records = await anyio.to_thread.run_sync(self._update_keywords, tools)
        # Vectors next, before the token counts and the listing's save: a cold catalogue's bulk child then starts
        # (its torch import, its weights) while they run, not after them (bench/README.md, "Thirtieth session").
        self._embed_in_background(records)
        await anyio.to_thread.run_sync(self._count_tokens, tools)
        # For `vmcp index stats|search`, which then need not start the backends: only a whole catalogue.
        key, missing = self._catalogue_key, tuple(not_connected)
        listing = Listing(records, self.full_list_tokens, self.settings.model, config_key=key, not_connected=missing)
        await anyio.to_thread.run_sync(save_complete_listing, self.usage_path.parent, listing)
        if self.history.shared:
            self._start_saver()  # other replicas' learning arrives even before this one learns anything

    def _reachable(self, tools: Sequence[ProvidedTool]) -> list[ProvidedTool]:
        """`tools` but those named like a meta-tool (a backend that is itself a gateway, served without a
        prefix) or like code mode's script tool (`code_mode.tool_name`): the gateway's tool takes the name, so
        find_tool would offer one tool's description and schema for a name that calls another. Warned once per set
        of such tools, with what to do."""
        shadowed = [tool for tool in tools if tool.name in self._gateway_names]
        found = frozenset((tool.source, tool.name) for tool in shadowed)
        if found and found != self._shadowed:
            logger.warning(
                "optimizer: %s shadowed by the meta-tool of the same name, or by code mode's script tool "
                "(code_mode.tool_name): find_tool leaves it out and call_tool cannot reach it; serve it under another "
                "name (aggregation.conflict_resolution: prefix, or an override in "
                "aggregation.tools.<backend>.overrides), or choose another code_mode.tool_name",
                ", ".join(f"tool '{name}' of backend '{source}'" for source, name in sorted(found)),
            )
        self._shadowed = found
        return [tool for tool in tools if tool.name not in self._gateway_names] if shadowed else list(tools)

    # --- CallObserver ----------------------------------------------------------------------------

    def tool_called(self, caller: Caller, tool: ProvidedTool, result: types.CallToolResult, exchange: Exchange) -> None:
        """A known caller's successful call of a tool (a backend's, or a workflow) is a use; meta-tool calls
        are not, nor are a workflow's steps: the workflow's run made those, not the client."""
        if caller.known and not result.is_error and tool.source != GATEWAY_SOURCE and exchange.step_of is None:
            self.tool_used(usage_client(caller), tool.name)

    def tool_used(self, client: Hashable, name: str) -> None:
        """`client` (`usage_client` of the caller) called `name` and it succeeded."""
        if self._recorder is None or self._closed.is_set():
            return
        self._recorder.tool_used(client, name)
        self._start_saver()

    def _start_saver(self) -> None:
        if self._saver is None and self.usage is not None and not self._closed.is_set():
            self._saver = threading.Thread(target=self._save_periodically, name="optimizer-usage-saver", daemon=True)
            self._saver.start()

    def close(self) -> None:
        """On shutdown: stop the periodic saver and the embedder (after what it is doing, waited for up to
        `EMBEDDER_STOP_WAIT`), and write what the savers have not written yet (the usage history, and the
        vectors a paced save kept pending). Idempotent."""
        self._closed.set()
        with self._wake:
            self._wake.notify_all()
        self._idle.wait(EMBEDDER_STOP_WAIT)
        self.save_usage()
        self.index.close()
        self._index_dir_hold.close()

    @property
    def embedding(self) -> bool:
        """The embedder thread is inside the model (loading it, or embedding): the process must not run its
        interpreter's exit then (ONNX Runtime's threads abort it: "terminate called without an active
        exception")."""
        return not self._idle.is_set()

    # --- find_tool ------------------------------------------------------------------------------------

    async def find_tool(
        self, query: str, limit: int | None, backends: list[str] | None, allowed: ToolCall | None = None
    ) -> types.CallToolResult:
        """The best matches for `query` (as `call` checked it: `check_sizes`); with `allowed`, only the tools its
        caller may use."""
        # After the wait: a backend still connecting at start has tools by then, not an error.
        starting = Starting.told(await self.wait_for_backends(), allowed)
        if backends is not None:
            problem = await self.names.backends_problem(backends, allowed, self.why_no_tools)
            if problem is not None:
                return _error(f"field 'backends': {problem}")
        if not self.index.dense_ready and self.settings.vector_wait > 0 and self.embedding_failure is None:
            # The model loads in the first seconds after start; a keyword-only ranking (and scores that
            # mean nothing yet) would be the agent's first impression. Bounded, and once: every call shares the
            # first one's deadline (a first start's export takes minutes: each call waited `vector_wait` anew).
            # On the event loop, not in a worker thread: a burst of find_tool at start must not take them all.
            if self._vector_deadline is None:
                self._vector_deadline = time.monotonic() + self.settings.vector_wait
            if (left := self._vector_deadline - time.monotonic()) > 0:
                await self._vectors_ready.wait(left)
        wanted = int(limit or self.settings.default_limit)
        usable = await allowed.router.usable_tools_async(allowed.caller) if allowed is not None else None
        # A policy that can say at once which tools a caller may use filters before ranking (`usable`);
        # one asked tool by tool filters a deeper ranking after it.
        filtered = usable is None and restricts(allowed)
        depth = wanted * POLICY_DEPTH if filtered else wanted
        # The search's CPU is shared fairly between callers (optimizer/search_slots.py): a slot first, waited
        # for on the event loop; no await between the refusal's count and the wait.
        key = SearchSlots.key(allowed.caller if allowed is not None else None)
        refused = self.searches.refusal(key)
        if refused is not None:
            return _error(refused)
        async with self.searches.held(key):
            if not filtered or allowed is None:
                # One hop: the answer (parts, scores, token count, JSON) is built beside the search, off the
                # event loop, which then only writes it out.
                return await self.searches.in_thread(self._search_and_answer, query, depth, backends, usable, starting)
            result: SearchResult = await self.searches.in_thread(self.index.search, query, depth, backends, usable)
            permitted = set(allowed.router.may_use(allowed.caller, [hit.record.name for hit in result.hits]))
            hits = [h for h in result.hits if h.record.name in permitted][:wanted]
            # This caller's own list would cost one policy question per tool per call: its size is left out.
            return await self.searches.in_thread(
                self._answer, query, SearchResult(hits, result.mode, result.arms), starting, None
            )

    def _search_and_answer(
        self, query: str, depth: int, backends: list[str] | None, usable: frozenset[str] | None, starting: Starting
    ) -> types.CallToolResult:
        result = self.index.search(query, depth, backends, usable)
        return self._answer(query, result, starting, self.list_tokens.of(usable))

    def _answer(
        self, query: str, result: SearchResult, starting: Starting, full_list: int | None
    ) -> types.CallToolResult:
        """find_tool's answer for `result` (on a worker thread: ~1 ms of CPU for 8 results); `full_list`: what
        the caller's `tools/list` of every tool it may use would cost, None when not known."""
        parts = [self._parts.of(hit.record) for hit in result.hits]
        tools = self._shown(result.hits, parts)
        answer: dict[str, Any] = {"query": query, "ranking": result.mode, "tools": tools}
        # Named only to a caller no policy restricts (`Starting`): the others are told of no backend they cannot use.
        notes = [note] if (note := starting.note(answer)) is not None else []
        if result.mode == "keyword":
            notes.append(  # a failure is told as one: an agent told "still loading" waited for good
                "ranked by keywords only: vectors are unavailable because embedding the tools failed (scores are relative)"
                if self.embedding_failure is not None
                else "ranked by keywords only: the embedding model is still loading (scores are relative until then)"
            )
        elif nothing_fits(tools, result.arms):
            answer["nothing_fits"] = True
            notes.append(
                f"nothing fits this request well: the best match is {tools[0]['score']:.2f} (of 1), under "
                f"{self.match_threshold:.2f}; the closest tools are listed as weak matches; try other words"
            )
        if notes:
            answer["note"] = "; ".join(notes)
        # The whole answer is counted, not only its results: a long query, echoed, is as many tokens again.
        answer["tokens"] = self.answer_tokens.figures(answer, self.answer_tokens.count(tools, parts), full_list)
        # The text is what `figures` counted (tokens.answer_text: compact, non-ASCII as written).
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=answer_text(answer))],
            structured_content=answer,
        )

    def _shown(self, hits: Sequence[SearchHit], parts: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The results as find_tool shows them: a match score when there is one, links only within the answer.
        `parts[i]`: `hits[i]`'s kept `tool_json`."""
        names = {hit.record.name for hit in hits}
        shown = []
        for i, hit in enumerate(hits):
            found = hit_json(hit, names, parts[i] if parts is not None else None)
            if hit.similarity is not None and self.match_scale is not None:
                found["score"] = round(self.match_scale(hit.similarity), 4)
                if found["score"] < self.match_threshold:
                    found["weak_match"] = True
            shown.append(found)
        return shown

    # --- index upkeep ---------------------------------------------------------------------------------

    def _update_keywords(self, tools: Sequence[ProvidedTool]) -> list[ToolRecord]:
        records = [provided_record(tool) for tool in tools]
        self.index.update_keywords(records)
        return records

    @property
    def full_list_tokens(self) -> int:
        """What `tools/list` of every searchable tool costs."""
        return self.list_tokens.total

    def _count_tokens(self, tools: Sequence[ProvidedTool]) -> None:
        self.list_tokens = ToolListTokens.count({t.name: t.tool for t in tools}, self.settings.model)
        self.meta_tools_tokens = meta_tools_tokens(self.settings.model)
        logger.info(
            "optimizer: %d tools; tools/list is %d tokens with the optimizer, %d without",
            len(tools),
            self.meta_tools_tokens,
            self.full_list_tokens,
        )

    def save_usage(self) -> None:
        """Merge the co-usage graph with its history if it changed since the last merge (a shared history:
        always, to read what the other replicas learned); a failure is a warning, not a crash."""
        if self.usage is None:
            return
        with self._save_lock:
            version = self.usage.version
            if version == self._saved_version and not self.history.shared:
                return
            try:
                self.history.save(self.usage)
            except Exception as exc:  # full disk, read-only index_dir, Redis gone: the gateway keeps serving
                self._save_failures.warning(
                    "usage", "optimizer: could not save the usage history to %s: %s", self.history.where, exc
                )
                return
            self._saved_version = version
        logger.debug("optimizer: usage history merged with %s", self.history.where)

    def _save_periodically(self) -> None:
        while not self._closed.wait(self.settings.usage_sync_interval):
            self.save_usage()

    def _warm_answer_tokens(self, records: list[ToolRecord]) -> None:
        """Count each tool's part of a find_tool answer now, so queries tokenize only their scores."""
        started = time.perf_counter()
        counted = self.answer_tokens.warm(
            (self._parts.of(record) for record in records),
            stop=lambda: self._pending is not None or self._closed.is_set(),
        )
        logger.info("optimizer: answer tokens counted for %d tools in %.1f s", counted, time.perf_counter() - started)

    def _embed_in_background(self, records: list[ToolRecord]) -> None:
        with self._wake:
            self._pending = records
            self._wake.notify()
        if self._worker is None:
            self._worker = threading.Thread(target=self._embed_forever, name="optimizer-embedder", daemon=True)
            self._worker.start()

    def _embed_forever(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed.is_set():
                    self._wake.wait()
                records, self._pending = self._pending, None
                if records is None or self._closed.is_set():
                    return
                self._idle.clear()
            try:
                if self.index.embedder is None:
                    # Loaded outside the index's update lock, so keyword refreshes never wait for it; on a first
                    # start the bulk child starts before the model loads (`update` hands it the texts).
                    self.index.embedder = load_configured_embedder(
                        self.settings,
                        self.index.model_cache,
                        new_documents=self.index.cold_documents(records),
                        model_cache_fallback=self.index.model_cache_fallback,
                    )
                self.index.update(records)
                self.embedding_failure = None
                self._vectors_ready.set()
                self._warm_answer_tokens(records)
            except Exception as exc:  # the keyword ranking keeps serving; say why vectors are missing
                # For /readyz, which anyone may read: one line, bounded, a URL's credentials masked.
                self.embedding_failure = shorten(masked_query_secrets(f"{type(exc).__name__}: {exc}"), 240)
                self._vectors_ready.set()  # nobody waits for vectors that will not come
                logger.exception("optimizer: embedding the catalogue failed; find_tool ranks by keywords")
            finally:
                self._idle.set()


async def _none_starting() -> list[str]:
    return []


def _not_configured(name: str) -> str | None:
    return None


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


async def _object_forms(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """A meta-tool's arguments with their string forms decoded (`coerce_strings`), in a worker thread when one to
    decode is long."""
    arguments = dict(given or {})
    if any(isinstance(arguments.get(field), str) and len(arguments[field]) > _INLINE_DECODE for field in _DECODED):
        return await anyio.to_thread.run_sync(coerce_strings, arguments, abandon_on_cancel=True)
    return coerce_strings(arguments)
