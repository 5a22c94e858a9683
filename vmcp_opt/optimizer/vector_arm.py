"""The vector arm: FAISS over the tools' normalised vectors, exact inner product or HNSW.

Built once per index snapshot; the snapshot keeps FAISS's own copy of the vectors and reads it through a
numpy view (`stored_vectors`) rather than holding a second one. Searches run single-threaded.

An exact (flat) search scores the view directly and keeps the best `depth` with a partition: FAISS's
flat search reads all the vectors once per query variant (a multi-intent request runs up to five), and a
filter there needs an ID selector built from the allowed rows on every search. One variant goes through
FAISS's own kernel (the same scores as its search); several through a matrix product over blocks of rows
small enough that OpenBLAS keeps them on the calling thread, which reads the vectors once for all variants
(scores within 2e-7 of FAISS's).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import faiss
import numpy as np

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking
from vmcp_opt.optimizer.int8_pass import Int8FirstPass, rows_to_rescore

logger = logging.getLogger(__name__)

# FAISS (OpenMP), numpy and torch share 2 cores; a one-query FAISS search is fastest single-threaded.
# OpenMP keeps the setting per thread, so `candidates` sets it again on whichever thread searches.
faiss.omp_set_num_threads(1)

_HNSW_M = 32
_HNSW_EF_CONSTRUCTION = 80
_HNSW_EF_SEARCH = 128
# OpenBLAS runs a matrix product of m * n * k at most this on the calling thread (SMP_THRESHOLD_MIN 65536 x
# GEMM_MULTITHREAD_THRESHOLD 4): its threads would fight torch, ONNX Runtime and FAISS for the cores.
_ONE_THREAD_PRODUCT = 65536 * 4
# Below this many rows a float32 scan is already a fraction of a millisecond: no int8 pass.
FIRST_PASS_MIN_ROWS = 4096


def build(vectors: np.ndarray, config: OptimizerConfig) -> Any:
    """A FAISS index of `vectors` (float32, L2-normalised rows) of the configured `index_type`."""
    dims = vectors.shape[1]
    index: Any
    if config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dims, _HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = max(_HNSW_EF_SEARCH, config.candidates)
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # building a graph uses every core
        try:
            index.add(vectors)
        finally:
            faiss.omp_set_num_threads(1)
    else:
        index = faiss.IndexFlatIP(dims)
        index.add(vectors)
    return index


def first_pass(vectors: np.ndarray, config: OptimizerConfig) -> Int8FirstPass | None:
    """The int8 first pass over `vectors` (optimizer/int8_pass.py) where it pays: exact search, many rows."""
    if not config.int8_first_pass or config.index_type != "flat" or len(vectors) < FIRST_PASS_MIN_ROWS:
        return None
    try:
        return Int8FirstPass(vectors)
    except Exception as exc:  # an ONNX Runtime without the op, say: the exact scan serves the same results
        logger.warning("int8 first pass unavailable (%s): every search scans the float32 vectors", exc)
        return None


def stored_vectors(index: Any, count: int, dims: int) -> np.ndarray:
    """A read-only numpy view of the vectors FAISS stores (flat storage of either index type)."""
    flat: Any = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index
    view = faiss.rev_swig_ptr(flat.get_xb(), count * dims).reshape(count, dims)
    view.flags.writeable = False
    return view


def candidates(
    index: Any,
    has_vector: np.ndarray,
    queries: np.ndarray,
    depth: int,
    allowed: np.ndarray | None,
    config: OptimizerConfig,
    vectors: np.ndarray | None = None,
    int8_pass: Int8FirstPass | None = None,
) -> list[ranking.Ranking]:
    """For each query row, the best `depth` documents that have a vector, among those `allowed`.

    `vectors` (the `stored_vectors` view) makes an exact search score them directly (see the module's
    docstring); without it, or for HNSW, FAISS searches. `int8_pass` (of the same vectors) picks the rows
    that `vectors` then scores: the same results, fewer bytes read."""
    # anyio's worker threads start with every core: two spinning OpenMP threads per search made a 10k-tool
    # search 15x slower under load in the gateway (bench/README.md). Setting it costs ~1 µs.
    faiss.omp_set_num_threads(1)
    if vectors is not None and config.index_type == "flat":
        if int8_pass is not None:
            approximate, bounds = int8_pass.scores(queries)
            return [
                _best_rescored(approximate[i], float(bounds[i]), queries[i], vectors, depth, has_vector, allowed)
                for i in range(len(queries))
            ]
        scores = inner_products(vectors, queries)
        return [_best(row, depth, has_vector, allowed) for row in scores]
    if allowed is None:
        scores, ids = index.search(queries, depth)
        return [
            {int(i): float(s) for s, i in zip(row_s, row_i, strict=True) if i >= 0 and has_vector[i]}
            for row_s, row_i in zip(scores, ids, strict=True)
        ]
    # FAISS with an ID selector (single-threaded, like the unfiltered path): a numpy matrix product
    # here would start OpenBLAS threads that fight torch and FAISS for the cores.
    selector = faiss.IDSelectorBatch(np.flatnonzero(has_vector & allowed).astype(np.int64))
    params: Any = (
        faiss.SearchParametersHNSW(sel=selector, efSearch=max(_HNSW_EF_SEARCH, depth))  # type: ignore[attr-defined]
        if config.index_type == "hnsw"
        else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
    )
    scores, ids = index.search(queries, depth, params=params)
    return [
        {int(i): float(s) for s, i in zip(row_s, row_i, strict=True) if i >= 0}
        for row_s, row_i in zip(scores, ids, strict=True)
    ]


def inner_products(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(queries, rows) inner products, on the calling thread: FAISS's kernel for one query, else a matrix
    product block by block (each block's product stays under OpenBLAS's threading threshold)."""
    count, dims = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # FAISS's view already is: no copy
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty((len(queries), count), dtype=np.float32)
    if len(queries) == 1:
        ptr = faiss.swig_ptr
        faiss.fvec_inner_products_ny(ptr(out), ptr(queries[0]), ptr(vectors), dims, count)  # type: ignore[attr-defined]
        return out
    step = max(1, _ONE_THREAD_PRODUCT // (len(queries) * dims))
    for start in range(0, count, step):
        np.matmul(queries, vectors[start : start + step].T, out=out[:, start : start + step])
    return out


def _best_rescored(
    approximate: np.ndarray,
    bound: float,
    query: np.ndarray,
    vectors: np.ndarray,
    depth: int,
    has_vector: np.ndarray,
    allowed: np.ndarray | None,
) -> ranking.Ranking:
    """`_best` of the exact scores, computed only for the rows the int8 pass cannot rule out."""
    if allowed is not None:
        eligible = has_vector & allowed
        depth = min(depth, int(np.count_nonzero(eligible)))
        approximate = np.where(eligible, approximate, -np.inf)
    if min(depth, len(approximate)) < 1:
        return {}
    rows = rows_to_rescore(approximate, bound, depth)
    best = _best(vectors[rows] @ query, depth, has_vector[rows], None)
    return {int(rows[row]): score for row, score in best.items()}


def _best(scores: np.ndarray, depth: int, has_vector: np.ndarray, allowed: np.ndarray | None) -> ranking.Ranking:
    """What FAISS's flat search keeps: unfiltered, the best `depth` rows less those without a vector (their
    zero rows may take a place); filtered, the best `depth` of the rows with a vector that are allowed."""
    if allowed is not None:
        eligible = has_vector & allowed
        depth = min(depth, int(np.count_nonzero(eligible)))
        scores = np.where(eligible, scores, -np.inf)
    depth = min(depth, len(scores))
    if depth < 1:
        return {}
    best = np.argpartition(-scores, depth - 1)[:depth] if depth < len(scores) else np.arange(len(scores))
    best = best[has_vector[best]]
    return dict(zip(best.tolist(), scores[best].tolist(), strict=True))
