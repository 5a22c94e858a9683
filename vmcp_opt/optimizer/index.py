"""The hybrid tool index: bm25s keywords plus FAISS vectors, persisted per model and content hash.

Reads are lock-free: `search` takes the current `_Snapshot` (an immutable bundle of records, keyword index
and vectors) and works on it alone, while `update` builds the next snapshot in another thread and swaps
it in at the end. Vectors are cached on disk under `index_dir/<model-slug>/vectors.npz`, keyed by each
tool's content hash, so a restart with unchanged tools embeds nothing and a changed tool re-embeds alone.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bm25s
import faiss
import numpy as np
import Stemmer

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking
from vmcp_opt.optimizer.documents import ToolRecord, content_hash, tool_document
from vmcp_opt.optimizer.embedding import Embedder, ModelSpec, load_embedder, resolve_model
from vmcp_opt.optimizer.late_interaction import TokenStore
from vmcp_opt.optimizer.prerequisites import Prerequisite, find_prerequisites
from vmcp_opt.optimizer.usage import UsageGraph, companion_scores

log = logging.getLogger(__name__)

# FAISS (OpenMP), numpy and torch share 2 cores; a one-query FAISS search is fastest single-threaded.
faiss.omp_set_num_threads(1)

VECTORS_FILE = "vectors.npz"
_HNSW_M = 32
_HNSW_EF_CONSTRUCTION = 80
_HNSW_EF_SEARCH = 128
# A tool raised for what a result needs scores this fraction of that result: just below it.
_BELOW = 0.999
_STOPWORDS = "en"
_stemmers = threading.local()


def _stem(words: list[str]) -> list[str]:
    # PyStemmer objects are not thread-safe: one per thread.
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    result: list[str] = stemmer.stemWords(words)
    return result


def _tokenize(texts: list[str], *, return_ids: bool = True) -> Any:
    return bm25s.tokenize(texts, stopwords=_STOPWORDS, stemmer=_stem, return_ids=return_ids, show_progress=False)


# A removed tool's vector and, with late interaction, its token matrix.
_Retired = tuple[np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class _VectorCache:
    """Vectors (and token matrices, when re-ranking) by content hash: `matrix[rows[hash]]`, plus those of
    tools that left the catalogue (`retired`, oldest first), so a backend that comes back is not re-embedded."""

    rows: dict[str, int] = field(default_factory=dict)
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    # What owns `matrix`'s memory when it is a view of FAISS storage: kept alive as long as the cache is.
    owner: Any = None
    # Row i's token matrix is `tokens.matrix(i)`; None when built without late interaction.
    tokens: TokenStore | None = None
    retired: OrderedDict[str, _Retired] = field(default_factory=OrderedDict)

    def stack(self, hashes: Sequence[str], dims: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(vectors aligned with `hashes`, which rows were found, token matrices); missing rows are zero/empty."""
        where = np.fromiter((self.rows.get(h, -1) for h in hashes), dtype=np.int64, count=len(hashes))
        found = where >= 0
        out = np.zeros((len(hashes), dims), dtype=np.float32)
        if found.any():
            out[found] = self.matrix[where[found]]
        empty = np.zeros((0, dims), dtype=np.float16)
        tokens = self.tokens
        matrices = [tokens.matrix(int(row)) if tokens is not None and row >= 0 else empty for row in where]
        for i in np.flatnonzero(~found) if self.retired else ():
            entry = self.retired.get(hashes[int(i)])
            if entry is not None:
                out[i], found[i] = entry[0], True
                if entry[1] is not None:
                    matrices[i] = entry[1]
        return out, found, matrices

    def retire(self, keep: set[str], limit: int) -> OrderedDict[str, _Retired]:
        """The retired entries after the catalogue becomes `keep`: rows not in it join (newest last), entries
        back in it leave, and only the newest `limit` stay."""
        retired = OrderedDict((h, entry) for h, entry in self.retired.items() if h not in keep)
        for digest, row in self.rows.items():
            if digest not in keep:
                retired.pop(digest, None)
                matrix = self.tokens.matrix(row).copy() if self.tokens is not None else None
                retired[digest] = (self.matrix[row].copy(), matrix)
        while len(retired) > limit:
            retired.popitem(last=False)
        return retired


@dataclass
class SearchHit:
    record: ToolRecord
    score: float
    # The result this tool is mostly here for, when past tasks used them together (optimizer/usage.py)
    # gave it more of its score than the request did.
    used_with: str | None = None
    # (result, argument) when this tool issues a value a result requires (optimizer/prerequisites.py).
    supplies: tuple[str, str] | None = None


@dataclass
class SearchResult:
    hits: list[SearchHit]
    # "keyword" while vectors (or the model for queries) are not ready yet.
    mode: Literal["hybrid", "keyword"]


@dataclass
class UpdateStats:
    embedded: int
    reused: int
    removed: int
    total: int
    seconds: float


@dataclass(frozen=True)
class _Snapshot:
    """Everything one search reads; never mutated after it is built."""

    records: tuple[ToolRecord, ...] = ()
    hashes: tuple[str, ...] = ()
    backend_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    backend_ids: dict[str, int] = field(default_factory=dict)
    bm25: Any = None
    # float32 (n, d), L2-normalised, aligned with records; rows without a vector are zero.
    vectors: np.ndarray | None = None
    has_vector: np.ndarray | None = None
    faiss_index: Any = None
    # Token embeddings for late-interaction re-ranking, aligned with records (None when it is off).
    tokens: TokenStore | None = None
    # Routable name -> position, for the co-usage graph (which knows tools by name).
    positions: dict[str, int] = field(default_factory=dict)
    # Position -> the tools issuing values it requires (optimizer/prerequisites.py).
    prerequisites: dict[int, tuple[Prerequisite, ...]] = field(default_factory=dict)


class ToolIndex:
    """Search over the gateway's tools; `update` replaces the indexed set, `search` never waits for it."""

    def __init__(
        self,
        config: OptimizerConfig,
        index_dir: Path,
        embedder: Embedder | None = None,
        usage: UsageGraph | None = None,
    ) -> None:
        self.config = config
        self.embedder = embedder
        # Tools used together (optimizer/usage.py); None or empty leaves the ranking as the arms give it.
        self.usage = usage
        self.model: ModelSpec = embedder.spec if embedder is not None else resolve_model(config.model)
        self.directory = Path(index_dir) / self.model.slug
        self._snapshot = _Snapshot()
        self._swap_lock = threading.Lock()
        self._update_lock = threading.Lock()
        # Vectors by content hash, from the last update or the persisted cache (loaded once, lazily).
        self._cache: _VectorCache | None = None
        # Query text -> (vector, token matrix or None): agents repeat find_tool queries, and the query
        # embedding is most of a search's time. Least recently used first; bounded by `query_cache_size`.
        self._queries: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._queries_lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def dense_ready(self) -> bool:
        snap = self._snapshot
        return snap.vectors is not None and self.embedder is not None

    def __len__(self) -> int:
        return len(self._snapshot.records)

    def search(self, query: str, limit: int = 8, backends: Collection[str] | None = None) -> SearchResult:
        snap = self._snapshot
        embedder = self.embedder
        dense = snap.vectors is not None and embedder is not None
        mode: Literal["hybrid", "keyword"] = "hybrid" if dense else "keyword"
        if not snap.records or not query.strip() or limit < 1:
            return SearchResult([], mode)
        allowed = _backend_mask(snap, backends)
        if allowed is not None and not allowed.any():
            return SearchResult([], mode)
        variants = ranking.query_variants(query, self.config)
        depth = min(self.config.candidates, len(snap.records))
        sparse = [self._keyword_candidates(snap, variant, depth, allowed) for variant in variants]
        if dense and embedder is not None:
            rerank = snap.tokens is not None
            # One forward pass gives the sentence vectors and, for re-ranking, the token embeddings.
            query_vectors, query_tokens = self._encode_queries(embedder, variants, rerank)
            vectors = self._dense_candidates(snap, query_vectors, depth, allowed)
            fused = [ranking.fuse(d, s, self.config) for d, s in zip(vectors, sparse, strict=True)]
            if rerank and snap.tokens is not None:
                fused = [
                    self._rerank(snap.tokens, f, s, q) for f, s, q in zip(fused, sparse, query_tokens, strict=True)
                ]
        else:
            fused = [ranking.keyword_only(s) for s in sparse]
        merged = ranking.merge_variants(fused)
        # Both raise tools next to what the request ranked (`merged`), so neither feeds the other.
        scored = merged
        used_with: dict[int, str] = {}
        if self.config.usage and self.usage is not None and self.config.usage_weight > 0 and len(self.usage):
            scored, used_with = self._with_companions(snap, merged, allowed)
        supplies: dict[int, tuple[str, str]] = {}
        if self.config.prerequisite_weight > 0 and snap.prerequisites:
            scored, supplies = self._with_prerequisites(snap, merged, scored, allowed)
        best = ranking.top(scored, limit)
        return SearchResult(
            [SearchHit(snap.records[doc], float(score), used_with.get(doc), supplies.get(doc)) for doc, score in best],
            mode,
        )

    def _encode_queries(
        self, embedder: Embedder, texts: list[str], tokens: bool
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        size = self.config.query_cache_size
        with self._queries_lock:
            cached = [self._queries.get(text) for text in texts]
            for text, hit in zip(texts, cached, strict=True):
                if hit is not None:
                    self._queries.move_to_end(text)
        missing = [text for text, hit in zip(texts, cached, strict=True) if hit is None or (tokens and hit[1] is None)]
        if missing:
            vectors, matrices = embedder.encode_queries_with_tokens(missing, tokens=tokens)
            fresh = {text: (vectors[i], matrices[i] if tokens else None) for i, text in enumerate(missing)}
            with self._queries_lock:
                for text, entry in fresh.items():
                    self._queries[text] = entry
                while len(self._queries) > size:
                    self._queries.popitem(last=False)
            cached = [fresh.get(text, hit) for text, hit in zip(texts, cached, strict=True)]
        entries = [hit for hit in cached if hit is not None]
        query_vectors = np.stack([vector for vector, _ in entries])
        query_tokens = [matrix for _, matrix in entries if matrix is not None] if tokens else []
        return query_vectors, query_tokens

    def _rerank(
        self, tokens: TokenStore, fused: ranking.Ranking, sparse: ranking.Ranking, query_tokens: np.ndarray
    ) -> ranking.Ranking:
        """Every fused candidate re-scored: token-level MaxSim blended with the keyword arm.

        All of them rather than a head: a re-ranked head over an unranked tail would need two score
        scales, and ~150 candidates cost a few milliseconds."""
        late = tokens.maxsim(query_tokens, list(fused))
        if not late:
            return fused
        return ranking.blend(late, sparse, self.config.rerank_weight, list(fused))

    def _with_companions(
        self, snap: _Snapshot, merged: ranking.Ranking, allowed: np.ndarray | None
    ) -> tuple[ranking.Ranking, dict[int, str]]:
        """`merged` plus what co-usage with its best results adds (tools outside it may enter), and, for
        each tool that owes more of its score to co-usage than to the request, the result it came with."""
        assert self.usage is not None
        seeds = self.config.usage_seeds
        head = [(snap.records[doc].name, merged[doc]) for doc in ranking.order(merged)[:seeds]]
        boosted = dict(merged)
        used_with: dict[int, str] = {}
        for name, (extra, seed) in companion_scores(head, self.usage, seeds, self.config.usage_weight).items():
            doc = snap.positions.get(name)
            if doc is None or (allowed is not None and not allowed[doc]):
                continue
            if extra > merged.get(doc, 0.0):
                used_with[doc] = seed
            boosted[doc] = boosted.get(doc, 0.0) + extra
        return boosted, used_with

    def _with_prerequisites(
        self, snap: _Snapshot, merged: ranking.Ranking, scored: ranking.Ranking, allowed: np.ndarray | None
    ) -> tuple[ranking.Ranking, dict[int, tuple[str, str]]]:
        """`scored` plus, for each tool issuing a value one of the best results requires, what co-usage with
        P = 1 would add, and what it supplies to which result.

        Only the strongest such result counts (a value is issued once), and the tool stays below it: the
        result the request asked for is never pushed out by what it needs."""
        weight = self.config.prerequisite_weight
        best: dict[int, tuple[float, float, int, str]] = {}  # issuer -> (extra, ceiling, result, argument)
        for rank, doc in enumerate(ranking.order(merged)[: self.config.usage_seeds], start=1):
            score = merged[doc]
            for needed in snap.prerequisites.get(doc, ()) if score > 0 else ():
                extra = weight * score / rank
                if (allowed is None or allowed[needed.issuer]) and extra > best.get(needed.issuer, (0.0,))[0]:
                    best[needed.issuer] = (extra, score * _BELOW, doc, needed.argument)
        boosted = dict(scored)
        supplies: dict[int, tuple[str, str]] = {}
        for issuer, (extra, ceiling, doc, argument) in best.items():
            own = scored.get(issuer, 0.0)
            boosted[issuer] = max(own, min(own + extra, ceiling))
            supplies[issuer] = (snap.records[doc].name, argument)
        return boosted, supplies

    def _keyword_candidates(
        self, snap: _Snapshot, query: str, depth: int, allowed: np.ndarray | None
    ) -> ranking.Ranking:
        tokens = _tokenize([ranking.keyword_query(query)], return_ids=False)[0]
        ids = snap.bm25.get_tokens_ids(tokens)
        if not ids:
            return {}
        scores = snap.bm25.get_scores_from_ids(ids)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        return _top_positive(scores, depth)

    def _dense_candidates(
        self, snap: _Snapshot, queries: np.ndarray, depth: int, allowed: np.ndarray | None
    ) -> list[ranking.Ranking]:
        assert snap.vectors is not None and snap.has_vector is not None
        if allowed is None:
            scores, ids = snap.faiss_index.search(queries, depth)
            has = snap.has_vector
            return [
                {int(i): float(s) for s, i in zip(row_s, row_i, strict=True) if i >= 0 and has[i]}
                for row_s, row_i in zip(scores, ids, strict=True)
            ]
        # FAISS with an ID selector (single-threaded, like the unfiltered path): a numpy matrix product
        # here would start OpenBLAS threads that fight torch and FAISS for the cores.
        selector = faiss.IDSelectorBatch(np.flatnonzero(snap.has_vector & allowed).astype(np.int64))
        params: Any = (
            faiss.SearchParametersHNSW(sel=selector, efSearch=max(_HNSW_EF_SEARCH, depth))  # type: ignore[attr-defined]
            if self.config.index_type == "hnsw"
            else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        )
        scores, ids = snap.faiss_index.search(queries, depth, params=params)
        return [
            {int(i): float(s) for s, i in zip(row_s, row_i, strict=True) if i >= 0}
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    # -- writing -----------------------------------------------------------------------------------------

    def update(self, records: Sequence[ToolRecord], *, progress: bool = False) -> UpdateStats:
        """Index exactly `records`: keywords rebuilt, vectors reused by content hash, new ones embedded."""
        started = time.perf_counter()
        with self._update_lock:
            if self.embedder is None:
                self.embedder = load_embedder(
                    self.config.model,
                    bulk_bfloat16=self.config.bulk_bfloat16,
                    batch_size=self.config.batch_size,
                    query_threads=self.config.query_threads,
                    bulk_threads=self.config.bulk_threads,
                )
            records, documents, hashes = _prepare(records)
            cache = self._vector_cache()
            vectors, found, matrices = cache.stack(hashes, self.model.dimensions)
            # Each new document once, even when two tools share it.
            first: dict[str, int] = {}
            for i in np.flatnonzero(~found):
                first.setdefault(hashes[i], int(i))
            if first:
                fresh, fresh_tokens = self.embedder.encode_documents_with_tokens(
                    [documents[i] for i in first.values()], progress=progress, tokens=self._late_interaction
                )
                by_hash = dict(zip(first, range(len(first)), strict=True))
                missing = np.flatnonzero(~found)
                vectors[missing] = fresh[[by_hash[hashes[i]] for i in missing]]
                if self._late_interaction:
                    for i in missing:
                        matrices[i] = fresh_tokens[by_hash[hashes[i]]]
            removed = len(cache.rows.keys() - set(hashes))
            retired = cache.retire(set(hashes), self.config.keep_removed)
            token_store = self._token_store(matrices)
            del matrices
            snapshot = self._build(records, documents, hashes, vectors, np.ones(len(records), dtype=bool), token_store)
            del vectors  # the snapshot holds FAISS's copy; drop ours before saving
            self._swap(snapshot)
            self._cache = _VectorCache(
                {h: i for i, h in enumerate(hashes)},
                _or_empty(snapshot.vectors),
                owner=snapshot.faiss_index,
                tokens=token_store,
                retired=retired,
            )
            self._save(hashes, _or_empty(snapshot.vectors), token_store, retired)
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
        return stats

    def update_keywords(self, records: Sequence[ToolRecord]) -> None:
        """Replace the indexed set without the model: keywords at once, plus any vectors already cached."""
        with self._update_lock:
            records, documents, hashes = _prepare(records)
            vectors, found, matrices = self._vector_cache().stack(hashes, self.model.dimensions)
            tokens = self._token_store(matrices) if found.any() else None
            self._swap(self._build(records, documents, hashes, vectors if found.any() else None, found, tokens))
        log.info("keyword index updated: %d tools, %d with cached vectors", len(records), int(found.sum()))

    def _build(
        self,
        records: list[ToolRecord],
        documents: list[str],
        hashes: list[str],
        vectors: np.ndarray | None,
        has_vector: np.ndarray,
        tokens: TokenStore | None = None,
    ) -> _Snapshot:
        backend_ids: dict[str, int] = {}
        codes = np.fromiter(
            (backend_ids.setdefault(r.backend, len(backend_ids)) for r in records), dtype=np.int32, count=len(records)
        )
        bm25 = None
        if records:
            bm25 = bm25s.BM25(k1=self.config.bm25_k1, b=self.config.bm25_b)
            bm25.index(_tokenize(documents), show_progress=False)
        faiss_index = None
        if vectors is not None and len(records):
            faiss_index = self._faiss(vectors)
            # Keep one copy of the vectors: a view of FAISS's own storage (the flat codes).
            vectors = _faiss_vectors(faiss_index, len(records), self.model.dimensions)
        return _Snapshot(
            records=tuple(records),
            hashes=tuple(hashes),
            backend_codes=codes,
            backend_ids=backend_ids,
            bm25=bm25,
            vectors=vectors,
            has_vector=has_vector,
            faiss_index=faiss_index,
            tokens=tokens,
            positions={record.name: position for position, record in enumerate(records)},
            prerequisites=find_prerequisites(records),
        )

    @property
    def _late_interaction(self) -> bool:
        return self.config.rerank == "late-interaction"

    def _token_store(self, matrices: Sequence[np.ndarray]) -> TokenStore | None:
        return TokenStore.from_matrices(matrices, self.model.dimensions) if self._late_interaction else None

    def _faiss(self, vectors: np.ndarray) -> Any:
        dims = vectors.shape[1]
        index: Any
        if self.config.index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dims, _HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = max(_HNSW_EF_SEARCH, self.config.candidates)
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # building a graph uses every core
            try:
                index.add(vectors)
            finally:
                faiss.omp_set_num_threads(1)
        else:
            index = faiss.IndexFlatIP(dims)
            index.add(vectors)
        return index

    def _swap(self, snapshot: _Snapshot) -> None:
        with self._swap_lock:
            self._snapshot = snapshot

    # -- persistence -------------------------------------------------------------------------------------

    def _vector_cache(self) -> _VectorCache:
        if self._cache is None:
            self._cache = self._load()
        return self._cache

    def _load(self) -> _VectorCache:
        path = self.directory / VECTORS_FILE
        if not path.exists():
            return _VectorCache()
        try:
            with np.load(path, allow_pickle=False) as data:
                model = str(data["model"])
                hashes = [h.decode("ascii") for h in data["hashes"]]
                vectors = np.ascontiguousarray(data["vectors"], dtype=np.float32)
                # Written since removed tools' vectors are kept; older files hold the catalogue only.
                retired_count = int(data["retired"]) if "retired" in data else 0
                tokens = None
                if self._late_interaction:
                    if "token_offsets" not in data:
                        raise ValueError("no token embeddings for re-ranking (built before late interaction)")
                    tokens = TokenStore(np.asarray(data["tokens"], dtype=np.float16), np.asarray(data["token_offsets"]))
                    if len(tokens) != len(hashes):
                        raise ValueError(f"token offsets for {len(tokens)} tools, not {len(hashes)}")
            if model != self.model.id:
                raise ValueError(f"built by model {model!r}, not {self.model.id!r}")
            if not 0 <= retired_count <= len(hashes):
                raise ValueError(f"{retired_count} retired vectors of {len(hashes)}")
            if vectors.shape != (len(hashes), self.model.dimensions):
                raise ValueError(f"vectors {vectors.shape} do not match {len(hashes)} hashes x {self.model.dimensions}")
        except Exception as exc:  # any unreadable cache is rebuilt, never fatal
            log.warning("index cache %s unusable, rebuilding: %s", path, exc)
            return _VectorCache()
        current = len(hashes) - retired_count
        retired: OrderedDict[str, _Retired] = OrderedDict(
            (h, (vectors[i], tokens.matrix(i) if tokens is not None else None))
            for i, h in enumerate(hashes[current:], start=current)
        )
        return _VectorCache({h: i for i, h in enumerate(hashes[:current])}, vectors, tokens=tokens, retired=retired)

    def _save(
        self,
        hashes: list[str],
        vectors: np.ndarray,
        tokens: TokenStore | None,
        retired: OrderedDict[str, _Retired] | None = None,
    ) -> None:
        """The catalogue's vectors, then the retired ones (oldest first; `retired` says how many)."""
        unique = {digest: i for i, digest in enumerate(hashes)}
        rows = np.fromiter(unique.values(), dtype=np.int64, count=len(unique))
        retired = retired or OrderedDict()
        all_hashes = [*unique, *retired]
        dims = self.model.dimensions
        current = vectors[rows] if len(rows) else np.zeros((0, dims), dtype=np.float32)
        all_vectors = np.concatenate([current, *(entry[0][None, :] for entry in retired.values())])
        extra: dict[str, Any] = {}
        if tokens is not None:
            matrices = [tokens.matrix(int(row)) for row in rows]
            empty = np.zeros((0, dims), dtype=np.float16)
            matrices += [entry[1] if entry[1] is not None else empty for entry in retired.values()]
            kept = TokenStore.from_matrices(matrices, dims)
            extra = {"tokens": kept.tokens, "token_offsets": kept.offsets}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".vectors-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as file:
                    np.savez(
                        file,
                        model=np.array(self.model.id),
                        hashes=np.array(all_hashes, dtype="S64"),
                        vectors=all_vectors,
                        retired=np.array(len(retired)),
                        **extra,
                    )
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, self.directory / VECTORS_FILE)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("could not save the index cache to %s: %s", self.directory, exc)

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
            "fusion": self.config.fusion,
            "dense_ready": self.dense_ready,
            "with_vectors": int(snap.has_vector.sum()) if snap.has_vector is not None else 0,
            "rerank": self.config.rerank,
            "token_store_bytes": snap.tokens.nbytes if snap.tokens is not None else 0,
            "path": str(self.directory),
            "size_on_disk_bytes": size,
        }


def _prepare(records: Sequence[ToolRecord]) -> tuple[list[ToolRecord], list[str], list[str]]:
    """Unique by name (the last one wins, as a later list_changed would), with documents and hashes."""
    by_name: dict[str, ToolRecord] = {}
    for record in records:
        if record.name in by_name:
            log.warning("tool %r listed twice; indexing the last one", record.name)
        by_name[record.name] = record
    unique = list(by_name.values())
    documents = [tool_document(r) for r in unique]
    hashes = [content_hash(r) for r in unique]
    return unique, documents, hashes


def _or_empty(vectors: np.ndarray | None) -> np.ndarray:
    return vectors if vectors is not None else np.zeros((0, 0), dtype=np.float32)


def _faiss_vectors(index: Any, count: int, dims: int) -> np.ndarray:
    """A read-only numpy view of the vectors FAISS stores (flat storage of either index type)."""
    flat: Any = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index
    view = faiss.rev_swig_ptr(flat.get_xb(), count * dims).reshape(count, dims)
    view.flags.writeable = False
    return view


def _backend_mask(snap: _Snapshot, backends: Collection[str] | None) -> np.ndarray | None:
    if backends is None:
        return None
    codes = [snap.backend_ids[b] for b in backends if b in snap.backend_ids]
    return np.isin(snap.backend_codes, np.array(codes, dtype=np.int32))


def _top_positive(scores: np.ndarray, depth: int) -> ranking.Ranking:
    depth = min(depth, len(scores))
    part = np.argpartition(-scores, depth - 1)[:depth]
    return {int(i): float(scores[i]) for i in part if scores[i] > 0}
