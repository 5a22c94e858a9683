"""The vector arm: FAISS over the tools' normalised vectors, exact inner product or HNSW.

Built once per index snapshot; the snapshot keeps FAISS's own copy of the vectors and reads it through a
numpy view (`stored_vectors`) rather than holding a second one. Searches run single-threaded.
"""

from __future__ import annotations

import os
from typing import Any

import faiss
import numpy as np

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking

# FAISS (OpenMP), numpy and torch share 2 cores; a one-query FAISS search is fastest single-threaded.
faiss.omp_set_num_threads(1)

_HNSW_M = 32
_HNSW_EF_CONSTRUCTION = 80
_HNSW_EF_SEARCH = 128


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
) -> list[ranking.Ranking]:
    """For each query row, the best `depth` documents that have a vector, among those `allowed`."""
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
