"""The hybrid tool index: bm25s keywords plus FAISS vectors, persisted per model and content hash.

Reads are lock-free: `search` takes the current `_Snapshot` (an immutable bundle of records, keyword index
and vectors) and works on it alone, while `update` builds the next snapshot in another thread and swaps
it in at the end. Writes never wait for the model either: `update_keywords` swaps in a newer catalogue while
an `update` is embedding an older one, and that `update` then gives its vectors to the newer snapshot
rather than swap the older catalogue back in (each snapshot carries the generation of the call that handed
its records to the index; a swap never goes back). The parts, one module each:

- `keyword_arm` and `vector_arm`: the two first-stage arms, fused by `ranking`;
- `boosts`: companions (co-usage) and prerequisites, raised after fusion;
- `query_cache`: query embeddings by text, since agents repeat queries;
- `vector_store`: vectors on disk under `index_dir/<model-slug>/vectors.npz`, keyed by each tool's content
  hash, so a restart with unchanged tools embeds nothing and a changed tool re-embeds alone; an update saves
  them chunk by chunk as it embeds in process (`EMBED_CHUNK`), so a restart during a first build reuses them;
- `rerank`: the interface of an optional second stage (none in the gateway).

Past ~450 lines on purpose: the snapshot, its swap and the two writers that race for it (`update`,
`update_keywords`) are one protocol; apart, each half would reach into the other's locks and generations.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import feedback, keyword_arm, ranking, vector_arm
from vmcp_opt.optimizer.boosts import with_companions, with_prerequisites
from vmcp_opt.optimizer.documents import ToolRecord, document_hash, keyword_document, keyword_fields, tool_document
from vmcp_opt.optimizer.embedding import TextEmbedder, bulk_started, load_configured_embedder
from vmcp_opt.optimizer.fit_signal import ArmTops, arm_tops
from vmcp_opt.optimizer.int8_pass import Int8FirstPass
from vmcp_opt.optimizer.model_registry import ModelSpec, resolve_model
from vmcp_opt.optimizer.prerequisites import Prerequisite, find_prerequisites
from vmcp_opt.optimizer.query_cache import QueryCache
from vmcp_opt.optimizer.rerank import Reranker, RerankStage
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.vector_store import VectorCache, VectorStore

log = logging.getLogger(__name__)

# Per-caller masks of the records a policy lets them use, kept for the served snapshot.
NAME_MASKS_KEPT = 256
# New documents embedded in process per chunk, each chunk's vectors saved (paced, vector_store.SAVE_INTERVAL) as it
# is done: a stop during a first build of thousands of tools (minutes) kept none of them. Batches within a chunk
# are as before (the encoder's own), so the chunks cost a save each, no more. `VMCP_EMBED_CHUNK` overrides it: for
# tests, not for tuning.
EMBED_CHUNK = 256
EMBED_CHUNK_ENV = "VMCP_EMBED_CHUNK"


@dataclass
class SearchHit:
    record: ToolRecord
    score: float
    # The result this tool is mostly here for, when past tasks used them together (optimizer/usage.py)
    # gave it more of its score than the request did.
    used_with: str | None = None
    # (result, argument) when this tool issues a value a result requires (optimizer/prerequisites.py).
    supplies: tuple[str, str] | None = None
    # Cosine similarity of the request (its best query variant) and the tool's document: absolute, unlike
    # `score`; find_tool maps it to a match score (optimizer/calibration.py). None while ranking by keywords.
    similarity: float | None = None


@dataclass
class SearchResult:
    hits: list[SearchHit]
    # "keyword" while vectors (or the model for queries) are not ready yet.
    mode: Literal["hybrid", "keyword"]
    # What each arm put first for the whole request: find_tool's `nothing_fits` reads it (optimizer/fit_signal.py).
    arms: ArmTops | None = None


@dataclass
class UpdateStats:
    embedded: int
    reused: int
    removed: int
    total: int
    seconds: float
    stage: Literal["keywords", "vectors"] = "vectors"  # update_keywords, or update (the model's pass)


@dataclass(frozen=True)
class _Keywords:
    """The snapshot's parts built from the documents alone (`ToolIndex._keywords`)."""

    bm25: Any
    prerequisites: dict[int, tuple[Prerequisite, ...]]


@dataclass(frozen=True)
class _Snapshot:
    """Everything one search reads; never mutated after it is built."""

    records: tuple[ToolRecord, ...] = ()
    backend_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    backend_ids: dict[str, int] = field(default_factory=dict)
    bm25: Any = None
    # float32 (n, d), L2-normalised, aligned with records; rows without a vector are zero.
    vectors: np.ndarray | None = None
    has_vector: np.ndarray | None = None
    faiss_index: Any = None
    # Int8 copies of `vectors` that pick the rows an exact search scores (optimizer/int8_pass.py), or None.
    int8_pass: Int8FirstPass | None = None
    # The second stage for these records, when the index has a reranker (optimizer/rerank.py).
    rerank: RerankStage | None = None
    # Routable name -> position, for the co-usage graph (which knows tools by name).
    positions: dict[str, int] = field(default_factory=dict)
    # Position -> the tools issuing values it requires (optimizer/prerequisites.py).
    prerequisites: dict[int, tuple[Prerequisite, ...]] = field(default_factory=dict)
    # Each record's content hash (vector_store's key), aligned with records.
    hashes: tuple[str, ...] = ()
    # Which call to `update` or `update_keywords` handed these records to the index (`ToolIndex._generation`).
    generation: int = 0


@dataclass
class _NameMasks:
    """The masks of one snapshot, the served one, by the id of the name set they were made from (kept with
    it: an id is only unique while its object lives). Kept per snapshot, not across them: a mask held a
    replaced snapshot alive, and a backend changing its tools every second kept 256 catalogues in memory
    (3 MiB each at 1,500 tools) under a per-caller policy."""

    snapshot: _Snapshot
    # Oldest first. An OrderedDict for `popitem(last=False)`: one step under the GIL, where the oldest key read
    # from an iterator, then popped, failed when another search thread evicted or added one in between.
    masks: OrderedDict[int, tuple[frozenset[str], np.ndarray]] = field(default_factory=OrderedDict)


class ToolIndex:
    """Search over the gateway's tools; `update` replaces the indexed set, `search` never waits for it."""

    def __init__(
        self,
        config: OptimizerConfig,
        index_dir: Path,
        embedder: TextEmbedder | None = None,
        usage: UsageGraph | None = None,
        reranker: Reranker | None = None,
        model_cache: Path | None = None,
        model_cache_fallback: Path | None = None,
    ) -> None:
        self.config = config
        self.embedder = embedder
        # Where the ONNX encoder's export is kept (None: the per-user default, optimizer/embedding.py).
        self.model_cache = model_cache
        # Where the export goes when `model_cache` cannot be written (an image's, read-only): `<data_dir>/models`.
        self.model_cache_fallback = model_cache_fallback
        # Tools used together (optimizer/usage.py); None or empty leaves the ranking as the arms give it.
        self.usage = usage
        # An optional second stage over the fused candidates (optimizer/rerank.py); the gateway has none.
        self.reranker = reranker
        self.model: ModelSpec = embedder.spec if embedder is not None else resolve_model(config.model)
        self.directory = Path(index_dir) / self.model.slug
        self._snapshot = _Snapshot()
        self._swap_lock = threading.Lock()
        # Serialises `update`s (their embeddings and saves); `update_keywords` never takes it.
        self._update_lock = threading.Lock()
        # Counts the record sets handed to the index, in the order they came (under `_swap_lock`).
        self._generation = 0
        # The vectors the last `update` saved (None: read `vector_store`'s once): what `update_keywords` reuses
        # without touching the store while an `update` holds it.
        self._known: VectorCache | None = None
        # The records the last `update` indexed (with their vectors), as `_unique` gives them.
        self._embedded: tuple[ToolRecord, ...] | None = None
        # Vectors by content hash, from the last update or the persisted file (read once, lazily).
        # The lock's wait: as long as another process's update may legitimately take (its bulk encoding's
        # deadline); a holder past it is stuck, and this process embeds on its own rather than never.
        # Saves are paced (vector_store.SAVE_INTERVAL): `close` writes what is pending.
        self._vectors = VectorStore(
            self.directory, self.model, lock_wait=config.bulk_process_timeout, keep_removed=config.keep_removed
        )
        self._queries = QueryCache(config.query_cache_size)
        self._name_masks = _NameMasks(self._snapshot)
        # Told of every update when it is done, on the updating thread (the gateway's metrics).
        self.updated: Callable[[UpdateStats], None] | None = None

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def dense_ready(self) -> bool:
        snap = self._snapshot
        return snap.vectors is not None and self.embedder is not None

    def __len__(self) -> int:
        return len(self._snapshot.records)

    @property
    def with_vectors(self) -> int:
        """Tools of the current snapshot that have a vector: from memory, never the index directory."""
        has_vector = self._snapshot.has_vector
        return int(has_vector.sum()) if has_vector is not None else 0

    @property
    def vectors_unsaved(self) -> str | None:
        """Why the last write of the vectors did not reach `vectors.npz` (a full disk...); None when it did. An
        index's first update writes at once (vector_store.py), so this is its outcome after one `update`."""
        return self._vectors.unsaved

    def search(
        self,
        query: str,
        limit: int = 8,
        backends: Collection[str] | None = None,
        names: frozenset[str] | None = None,
    ) -> SearchResult:
        """The best `limit` tools for `query`, among those of `backends` and named in `names` (all when None):
        both filters apply before ranking, so a filtered search still returns `limit` results when it can."""
        snap = self._snapshot
        embedder = self.embedder
        dense = snap.vectors is not None and embedder is not None
        mode: Literal["hybrid", "keyword"] = "hybrid" if dense else "keyword"
        if not snap.records or not query.strip() or limit < 1:
            return SearchResult([], mode)
        allowed = _backend_mask(snap, backends)
        if names is not None:
            named = self._name_mask(snap, names)
            allowed = named if allowed is None else allowed & named
        if allowed is not None and not allowed.any():
            return SearchResult([], mode)
        config = self.config
        variants = ranking.query_variants(query, config)
        query_vectors: np.ndarray | None = None
        depth = min(config.candidates, len(snap.records))
        sparse = [keyword_arm.candidates(snap.bm25, variant, depth, allowed) for variant in variants]
        if dense and embedder is not None:
            assert snap.has_vector is not None
            query_vectors = self._query_vectors(embedder, variants)
            vectors = vector_arm.candidates(
                snap.faiss_index, snap.has_vector, query_vectors, depth, allowed, config, snap.vectors, snap.int8_pass
            )
            tops = arm_tops(snap.records, vectors[0], sparse[0])  # before feedback changes the arms' rankings
            fused = [ranking.fuse(d, s, config) for d, s in zip(vectors, sparse, strict=True)]
            if feedback.enabled(config):
                arms = (snap.bm25, snap.faiss_index, snap.has_vector, snap.vectors)
                fused, sparse = feedback.refine(
                    variants, fused, (vectors, sparse), query_vectors, arms, depth, allowed, config
                )
            if snap.rerank is not None:
                fused = snap.rerank.rerank(variants, fused, sparse)
        else:
            tops = arm_tops(snap.records, None, sparse[0])
            fused = [ranking.keyword_only(s) for s in sparse]
        merged = ranking.merge_variants(fused)
        # Both raise tools next to what the request ranked (`merged`), so neither feeds the other.
        scored = merged
        used_with: dict[int, str] = {}
        if config.usage and self.usage is not None and config.usage_weight > 0 and len(self.usage):
            scored, used_with = with_companions(merged, snap.records, snap.positions, self.usage, config, allowed)
        supplies: dict[int, tuple[str, str]] = {}
        if config.prerequisite_weight > 0 and snap.prerequisites:
            scored, supplies = with_prerequisites(merged, scored, snap.records, snap.prerequisites, config, allowed)
        best = ranking.top(scored, limit)
        similarity = _similarities(snap, query_vectors, [doc for doc, _ in best])
        return SearchResult(
            [
                SearchHit(snap.records[doc], float(score), used_with.get(doc), supplies.get(doc), similarity.get(doc))
                for doc, score in best
            ],
            mode,
            tops,
        )

    def _query_vectors(self, embedder: TextEmbedder, variants: list[str]) -> np.ndarray:
        """One row per query variant. With `whole_request_vector: intent_mean`, a multi-intent request's own
        row (the first) is averaged from its intents' rather than embedded: one model input fewer."""
        if self.config.whole_request_vector == "embedded" or len(variants) == 1:
            return self._queries.encode(embedder, variants)
        intents = self._queries.encode(embedder, variants[1:])
        return np.vstack([ranking.intent_mean(intents, variants[1:]), intents])

    def _name_mask(self, snap: _Snapshot, names: frozenset[str]) -> np.ndarray:
        """Which records `names` holds; kept for the served snapshot, since a caller's set is reused until the
        catalogue changes."""
        kept = self._name_masks
        if kept.snapshot is not snap:
            if snap is not self._snapshot:  # a search begun before a swap: its snapshot goes when it ends
                return _records_named(snap, names)
            kept = self._name_masks = _NameMasks(snap)
        cached = kept.masks.get(id(names))
        if cached is not None and cached[0] is names:
            return cached[1]
        mask = _records_named(snap, names)
        if len(kept.masks) >= NAME_MASKS_KEPT:
            with suppress(KeyError):  # other threads evicted every one meanwhile: nothing left to evict
                kept.masks.popitem(last=False)
        kept.masks[id(names)] = (names, mask)
        return mask

    def cold_documents(self, records: Sequence[ToolRecord]) -> int:
        """How many of `records` are new for sure without reading the vectors' file: all of them when there is
        no such file (a first start, another model), else none (a restart reuses what the file holds)."""
        return 0 if self._vectors.path.exists() or self._snapshot.vectors is not None else len(records)

    # -- writing -----------------------------------------------------------------------------------------

    def update(self, records: Sequence[ToolRecord], *, progress: bool = False) -> UpdateStats:
        """Index exactly `records`: keywords rebuilt, vectors reused by content hash, new ones embedded. When a
        newer catalogue came (`update_keywords`) while this one was embedded, that one stays served, with
        these vectors added."""
        started = time.perf_counter()
        generation = self._next_generation()
        unique = _unique(records)
        if self._unchanged(unique, generation):
            log.debug("index unchanged: the same %d tools as the last update", len(unique))
            return UpdateStats(0, len(unique), 0, len(unique), time.perf_counter() - started)
        # The vectors' file lock first: while another replica embeds, keyword refreshes need not wait.
        with self._vectors.updating() as cache, self._update_lock:
            # Tools past the cache's count are new for sure: enough of them and the bulk child starts before the
            # model loads and the documents are built, which its torch import then overlaps (bench/README.md,
            # "Cold build: starting the child first").
            surely_new = len(records) - len(cache.rows) - len(cache.retired)
            if self.embedder is None:
                self.embedder = load_configured_embedder(
                    self.config,
                    self.model_cache,
                    new_documents=surely_new,
                    model_cache_fallback=self.model_cache_fallback,
                )
            with bulk_started(self.embedder, surely_new):
                records, documents, hashes = _prepare(unique)
                vectors, found = cache.stack(hashes, self.model.dimensions)
                # Each new document once, even when two tools share it.
                first: dict[str, int] = {}
                for i in np.flatnonzero(~found):
                    first.setdefault(hashes[i], int(i))
                keywords: _Keywords | None = None
                chunked = False
                if first:
                    # Said before the work, which takes minutes at thousands of tools: until then the log shows
                    # only the keyword index, and nothing says that vectors are still coming.
                    log.info(
                        "index: embedding %d new tools (%d reused) with %s; find_tool finds them by keywords until then",
                        len(first),
                        len(set(hashes)) - len(first),
                        self.model.id,
                    )
                    # The keyword arm needs no vectors: built on a thread while the documents are embedded (1.5 s
                    # for 10k tools on a loaded host).
                    with ThreadPoolExecutor(1, thread_name_prefix="index-keywords") as pool:
                        building = pool.submit(self._keywords, records, documents)
                        new = [documents[i] for i in first.values()]
                        fresh, chunked = self._embed_new(new, list(first), (cache, hashes, vectors, found), progress)
                        keywords = building.result()
                    by_hash = dict(zip(first, range(len(first)), strict=True))
                    missing = np.flatnonzero(~found)
                    vectors[missing] = fresh[[by_hash[hashes[i]] for i in missing]]
            removed = len(cache.rows.keys() - set(hashes))
            retired = cache.retire(set(hashes), self.config.keep_removed)
            rerank = self.reranker.prepare(documents) if self.reranker is not None else None
            snapshot = self._build(
                records,
                documents,
                vectors,
                np.ones(len(records), dtype=bool),
                rerank,
                keywords=keywords,
                hashes=hashes,
                generation=generation,
            )
            del vectors  # the snapshot holds FAISS's copy; drop ours before saving
            swapped = self._swap(snapshot)
            matrix = snapshot.vectors if snapshot.vectors is not None else np.zeros((0, 0), dtype=np.float32)
            rows = {h: i for i, h in enumerate(hashes)}
            known = VectorCache(rows, matrix, owner=snapshot.faiss_index, retired=retired)
            self._vectors.save(known)
            if chunked:  # the chunks' saves started the pacing: the whole is written now, not 30 s on
                self._vectors.flush(lock_wait=0.0)  # held by this update (else it updates without it: no wait)
            self._known = known
            self._embedded = tuple(records)
            if not swapped:
                self._give_vectors_to_newer(known)
        stats = UpdateStats(
            embedded=len(first),
            reused=len(set(hashes)) - len(first),
            removed=removed,
            total=len(records),
            seconds=time.perf_counter() - started,
        )
        log.info(
            "index updated: embedded %d, reused %d, removed %d (%d tools, %.2f s)",
            stats.embedded,
            stats.reused,
            stats.removed,
            stats.total,
            stats.seconds,
        )
        if self.updated is not None:
            self.updated(stats)
        return stats

    def _embed_new(
        self,
        documents: list[str],
        hashes: list[str],
        known: tuple[VectorCache, list[str], np.ndarray, np.ndarray],
        progress: bool,
    ) -> tuple[np.ndarray, bool]:
        """The vectors of the new `documents` (content `hashes`), and whether they came in chunks, each saved as it
        is done (paced by the store), so a stop mid-build (a deploy, a probe's restart) keeps them: the next start
        reuses them by hash. `known`: the update's cache, its catalogue's hashes, the vectors found for those and
        where. One call where the bulk child takes them all (its start-up is paid once) or one chunk does."""
        embedder = self.embedder
        assert embedder is not None
        size = embed_chunk()
        if len(documents) <= size or _bulk_takes(embedder, len(documents)):
            return embedder.encode_documents(documents, progress=progress), False
        cache, catalogue, vectors, found = known
        reused = {catalogue[i]: int(i) for i in np.flatnonzero(found)}
        base = vectors[list(reused.values())]
        retired = cache.retire(set(catalogue), self.config.keep_removed)
        fresh = np.empty((len(documents), self.model.dimensions), dtype=np.float32)
        step = max(1, len(documents) // 10)
        for start in range(0, len(documents), size):
            end = min(start + size, len(documents))
            fresh[start:end] = embedder.encode_documents(documents[start:end], progress=progress)
            rows = {digest: row for row, digest in enumerate([*reused, *hashes[:end]])}
            self._vectors.save(VectorCache(rows, np.concatenate([base, fresh[:end]]), retired=retired))
            if end // step > start // step:  # a line per tenth: a long build shows progress in the log
                log.info("index: %d of %d new tools embedded and kept", end, len(documents))
        return fresh, True

    def update_keywords(self, records: Sequence[ToolRecord]) -> None:
        """Replace the indexed set without the model: keywords at once, plus any vectors already cached.

        Never waits for an `update` embedding meanwhile (a large catalogue's takes minutes): the tools a
        backend removed must leave find_tool's answers as soon as the router stops serving them."""
        started = time.perf_counter()
        generation = self._next_generation()
        unique = _unique(records)
        if self._served_again(unique, generation):
            log.debug("keyword index unchanged: the same %d tools", len(unique))
            return
        records, documents, hashes = _prepare(unique)
        vectors, found = self._known_vectors().stack(hashes, self.model.dimensions)
        snapshot = self._build(
            records, documents, vectors if found.any() else None, found, hashes=hashes, generation=generation
        )
        self._swap(snapshot)
        cached = int(found.sum())
        log.info("keyword index updated: %d tools, %d with cached vectors", len(records), cached)
        if self.updated is not None:
            seconds = time.perf_counter() - started
            self.updated(UpdateStats(0, cached, 0, len(records), seconds, "keywords"))

    def _build(
        self,
        records: list[ToolRecord],
        documents: list[str],
        vectors: np.ndarray | None,
        has_vector: np.ndarray,
        rerank: RerankStage | None = None,
        *,
        keywords: _Keywords | None = None,
        hashes: Sequence[str] = (),
        generation: int = 0,
    ) -> _Snapshot:
        backend_ids: dict[str, int] = {}
        codes = np.fromiter(
            (backend_ids.setdefault(r.backend, len(backend_ids)) for r in records), dtype=np.int32, count=len(records)
        )
        if keywords is None:
            keywords = self._keywords(records, documents)
        faiss_index = int8_pass = None
        if vectors is not None and len(records):
            faiss_index = vector_arm.build(vectors, self.config)
            # Keep one copy of the vectors: a view of FAISS's own storage (the flat codes).
            vectors = vector_arm.stored_vectors(faiss_index, len(records), self.model.dimensions)
            int8_pass = vector_arm.first_pass(vectors, self.config)
        return _Snapshot(
            records=tuple(records),
            backend_codes=codes,
            backend_ids=backend_ids,
            bm25=keywords.bm25,
            vectors=vectors,
            has_vector=has_vector,
            faiss_index=faiss_index,
            int8_pass=int8_pass,
            rerank=rerank,
            positions={record.name: position for position, record in enumerate(records)},
            prerequisites=keywords.prerequisites,
            hashes=tuple(hashes),
            generation=generation,
        )

    def _keywords(self, records: list[ToolRecord], documents: list[str]) -> _Keywords:
        """The parts of a snapshot that need no vectors: the BM25 arm and the prerequisite links."""
        bm25 = _keyword_index(records, documents, self.config)
        return _Keywords(bm25, find_prerequisites(records))

    def _unchanged(self, records: tuple[ToolRecord, ...], generation: int) -> bool:
        """Whether `records` are the catalogue the last update embedded, served with all its vectors (a rebuild
        of an unchanged catalogue: a backend's list_changed that changed no tool, a change of its prompts...):
        rebuilding the same snapshot cost seconds of CPU at thousands of tools, twice (keywords, then `update`).
        Only while no update runs: one still embedding an older catalogue (R, then R', then R again while R'
        embeds) would then find R served, a newer one, and rebuild it with R''s vectors, the cost saved here; and
        leave `_embedded` saying R' while R is served. Then this update waits and runs, and embeds nothing."""
        if self.reranker is not None or not self._update_lock.acquire(blocking=False):
            return False
        try:
            return records == self._embedded and self._served_again(records, generation, vectors=True)
        finally:
            self._update_lock.release()

    def _next_generation(self) -> int:
        with self._swap_lock:
            self._generation += 1
            return self._generation

    def _served_again(self, records: tuple[ToolRecord, ...], generation: int, *, vectors: bool = False) -> bool:
        """Whether `records` are exactly what is served (and, with `vectors`, every one with its vector): then the
        served snapshot is what a rebuild would make, and it is only stamped with `generation`, as a swap would,
        so that an older catalogue's update still in flight is not swapped in over it."""
        with self._swap_lock:
            current = self._snapshot
            if current.records != records or current.generation > generation:
                return False
            if vectors and (current.vectors is None or current.has_vector is None or not current.has_vector.all()):
                return False
            self._snapshot = replace(current, generation=generation)
            return True

    def _swap(self, snapshot: _Snapshot) -> bool:
        """Serve `snapshot` unless a newer catalogue is served already (an older one would bring back tools a
        backend removed, until the next change); whether it was swapped in."""
        with self._swap_lock:
            if snapshot.generation < self._snapshot.generation:
                return False
            self._snapshot = snapshot
            return True

    def _known_vectors(self) -> VectorCache:
        known = self._known
        if known is None:
            known = self._known = self._vectors.cache()
        return known

    def _give_vectors_to_newer(self, known: VectorCache) -> None:
        """The served snapshot is a newer catalogue than the one just embedded: the same snapshot (records,
        keyword arm, generation) with every vector `known` has for it. Its own `update`, queued behind this
        one, embeds the rest; meanwhile its tools in both catalogues rank with vectors. Nothing is rebuilt when
        that adds no vector to the served ones (the served snapshot may have some `known` has not)."""
        current = self._snapshot
        served = current.has_vector if current.vectors is not None and current.has_vector is not None else None
        if served is not None and served.all():
            return
        vectors, found = known.stack(current.hashes, self.model.dimensions)
        if not (found if served is None else found & ~served).any():
            return
        if served is not None and current.vectors is not None:  # keep what it has
            vectors[served], found = current.vectors[served], found | served
        keywords = _Keywords(current.bm25, current.prerequisites)
        self._swap(
            self._build(
                list(current.records),
                [],
                vectors,
                found,
                keywords=keywords,
                hashes=current.hashes,
                generation=current.generation,
            )
        )

    def close(self) -> None:
        """On shutdown: write the vectors a paced save has not written yet, so a restart embeds none of them
        again. Idempotent; an `update` after it writes at once."""
        self._vectors.close()

    def stats(self) -> dict[str, Any]:
        snap = self._snapshot
        size = sum(f.stat().st_size for f in self.directory.glob("*") if f.is_file()) if self.directory.exists() else 0
        return {
            "tools": len(snap.records),
            "backends": len(snap.backend_ids),
            "backend_names": sorted(snap.backend_ids),
            "model": self.model.id,
            "dimensions": self.model.dimensions,
            "index_type": self.config.index_type,
            "int8_first_pass": snap.int8_pass is not None,
            "fusion": self.config.fusion,
            "dense_ready": self.dense_ready,
            "with_vectors": int(snap.has_vector.sum()) if snap.has_vector is not None else 0,
            "path": str(self.directory),
            "size_on_disk_bytes": size,
        }


def embed_chunk() -> int:
    """`EMBED_CHUNK`, or the documents `VMCP_EMBED_CHUNK` gives (a bad value is said and ignored)."""
    said = os.environ.get(EMBED_CHUNK_ENV)
    if said is None:
        return EMBED_CHUNK
    if not said.isdigit() or int(said) < 1:
        log.warning("%s=%r is not a positive number of documents; using %d", EMBED_CHUNK_ENV, said, EMBED_CHUNK)
        return EMBED_CHUNK
    return int(said)


def _bulk_takes(embedder: TextEmbedder, documents: int) -> bool:
    """Whether the embedder's bulk child (optimizer/bulk_embed.py) will encode `documents` new ones."""
    from vmcp_opt.optimizer.bulk_embed import BulkEncoder

    bulk = getattr(embedder, "bulk", None)
    return isinstance(bulk, BulkEncoder) and bulk.failed is None and documents >= bulk.min_documents


def _unique(records: Sequence[ToolRecord]) -> tuple[ToolRecord, ...]:
    """Unique by name (the last one wins, as a later list_changed would)."""
    by_name: dict[str, ToolRecord] = {}
    for record in records:
        if record.name in by_name:
            log.warning("tool %r listed twice; indexing the last one", record.name)
        by_name[record.name] = record
    return tuple(by_name.values())


def _prepare(records: Sequence[ToolRecord]) -> tuple[list[ToolRecord], list[str], list[str]]:
    """`_unique`'s records, with their documents and hashes."""
    unique = list(_unique(records))
    documents = [tool_document(r) for r in unique]
    hashes = [document_hash(d) for d in documents]
    return unique, documents, hashes


def _keyword_index(records: Sequence[ToolRecord], documents: Sequence[str], config: OptimizerConfig) -> Any:
    """The keyword arm: over the vector arm's documents unless parameters weigh more there (a fixed
    `parameter_weight`) or as much as this catalogue needs for `parameter_share`."""
    if config.parameter_share is not None:
        fields = [keyword_fields(record) for record in records]
        heads, parameters = [head for head, _ in fields], [params for _, params in fields]
        weight = keyword_arm.parameter_weight_for_share(
            heads,
            parameters,
            config.parameter_share,
            names_in_head=config.parameter_share_names,
            cap=config.parameter_share_cap,
        )
        log.info("keyword arm: parameters weigh %.2f for a %.0f %% share", weight, 100 * config.parameter_share)
        return keyword_arm.build_fields(heads, parameters, weight, config)
    if config.parameter_weight <= 1:
        return keyword_arm.build(documents, config)
    return keyword_arm.build([keyword_document(record, config.parameter_weight) for record in records], config)


def _records_named(snap: _Snapshot, names: frozenset[str]) -> np.ndarray:
    return np.fromiter((r.name in names for r in snap.records), dtype=bool, count=len(snap.records))


def _backend_mask(snap: _Snapshot, backends: Collection[str] | None) -> np.ndarray | None:
    if backends is None:
        return None
    codes = [snap.backend_ids[b] for b in backends if b in snap.backend_ids]
    return np.isin(snap.backend_codes, np.array(codes, dtype=np.int32))


def _similarities(snap: _Snapshot, query_vectors: np.ndarray | None, docs: list[int]) -> dict[int, float]:
    """Each result's best cosine over the query variants (the results only: `limit` dot products each)."""
    if query_vectors is None or snap.vectors is None or snap.has_vector is None or not docs:
        return {}
    best = (snap.vectors[docs] @ query_vectors.T).max(axis=1)
    return {doc: float(sim) for doc, sim, has in zip(docs, best, snap.has_vector[docs], strict=True) if has}
