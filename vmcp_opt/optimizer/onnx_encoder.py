"""The sentence encoder on ONNX Runtime: the Rust tokenizer, one session, no torch in the process.

The graph (optimizer/onnx_export.py) holds the whole model: BERT with ONNX Runtime's fused operators, mean
pooling and L2 normalisation, so a query is tokenize -> `session.run` -> a normalised float32 row. The texts
of one request (the request and its intents) run in groups of near-equal length rather than one batch padded
to the longest, which cost a long request's intents up to 2.5x their tokens; with two or more groups, about
half of them run on a helper thread while the caller runs the rest, when the helper is free. A query runs on
`query_threads` intra-op threads (1: on a shared 2-core machine a second thread mostly waits for a
busy core); bulk encoding runs batches on `bulk_threads` Python threads, each a single-threaded `run` of
the same session (ONNX Runtime releases the GIL and its `run` is thread-safe), so the weights are held once.

Query runs are bounded (`QueryRuns`): at most one per usable CPU at once, the rest waiting for a slot, and the
heap their activations took is handed back once find_tool has been quiet for a moment after runs overlapped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from vmcp_opt.optimizer.batching import (
    ONNX_BATCH_SIZE,
    batches_by_tokens,
    load_tokenizer,
    low_padding_groups,
    padded,
    tokenize_chunked,
)
from vmcp_opt.optimizer.cpu import usable_cpus
from vmcp_opt.optimizer.embedding import maybe_progress, release_memory
from vmcp_opt.optimizer.model_registry import ModelError, ModelSpec
from vmcp_opt.optimizer.onnx_export import SPLIT_FUSIONS, Precision, ensure_onnx_model, reexport
from vmcp_opt.optimizer.side_thread import SideThread

log = logging.getLogger(__name__)

# Below this many texts bulk encoding stays on the calling thread: worker threads leave their malloc arenas
# and ONNX Runtime's per-thread buffers behind (+58 MB RSS in the demo gateway for 55 tools, measured),
# which only pays off on large builds.
PARALLEL_MIN_TEXTS = 512

# Seconds without a query run, after runs overlapped, before the heap they freed is handed back to the OS.
QUIET_SECONDS = 1.0


class QueryRuns:
    """At most `slots` query runs of the session at once, and the heap they leave handed back after a burst.

    A run mallocs its activations (the CPU arena is off), tens of MB for a request's five 256-token texts.
    Unbounded, 900 concurrent long find_tool calls ran on all 40 of anyio's worker threads at once: a 50-tool
    gateway went from 265 to 605 MiB and kept 575 MiB (glibc keeps what threads free, in pieces below the heap's
    top). Two cores run two runs at a time whatever waits, so the rest wait here for a slot (holding a few KB of
    text) at no cost in throughput. What overlapping runs leave behind is glibc's free heap, not Python objects
    (tracemalloc: 6 MB at the peak of 40 threads encoding alone, whose RSS rose 250 MB): it goes back to the OS
    by `malloc_trim` on a thread of its own once no run has begun for `quiet` seconds, one trim (~6 ms) per
    burst, never on a caller's path, and none for runs one at a time, which reuse one run's memory. The trimmer
    polls for the quiet (at most one wake a `quiet`): woken by every run's start and end while a burst's peak
    stood, it took ~6 of the 13 context switches of a find_tool at 10k tools, measured on a loaded 2-core host."""

    def __init__(self, slots: int, quiet: float = QUIET_SECONDS) -> None:
        self.slots = max(1, slots)
        self.quiet = quiet
        self._free = threading.BoundedSemaphore(self.slots)
        self._changed = threading.Condition()
        self._running = 0
        self._begun = 0  # runs begun, ever: the trimmer's sign that a burst goes on
        self._burst_runs = 0  # runs since the last trim
        self._burst_peak = 0  # most runs at once since the last trim
        self._trimmer: threading.Thread | None = None
        self._ends_waited = False  # the trimmer waits for a burst's end: the run that ends it says so

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Held for one `session.run`: waits while `slots` runs are under way. Wakes the trimmer only when it
        waits for the end of a burst, and only with the run that ends it."""
        with self._free:
            with self._changed:
                self._running += 1
                self._begun += 1
                self._burst_runs += 1
                self._burst_peak = max(self._burst_peak, self._running)
                if self._running > 1 and self._trimmer is None:
                    self._trimmer = threading.Thread(target=self._trim_after_bursts, name="onnx-trim", daemon=True)
                    self._trimmer.start()
            try:
                yield
            finally:
                with self._changed:
                    self._running -= 1
                    if self._ends_waited and self._burst_over():
                        # Told once: a trimmer that gets the lock only after the next run began still goes on (it
                        # waited for this state, which lasts a moment between runs, and was woken at every run's end).
                        self._ends_waited = False
                        self._changed.notify()

    def _burst_over(self) -> bool:
        return self._running == 0 and self._burst_peak > 1

    def _trim_after_bursts(self) -> None:
        """After each burst, once a `quiet` wait saw no run begin (polled: the runs never wake this thread
        then, so the trim comes `quiet` to twice `quiet` after the last run)."""
        while True:
            with self._changed:
                if not self._burst_over():
                    self._ends_waited = True  # the run that ends the burst clears it (`slot`)
                    self._changed.wait_for(lambda: not self._ends_waited)
                begun = self._begun
            time.sleep(self.quiet)
            with self._changed:
                if self._begun != begun:
                    continue  # a run began: the burst goes on
                runs, peak = self._burst_runs, self._burst_peak
                self._burst_runs = self._burst_peak = 0
            started = time.perf_counter()
            release_memory()
            log.debug(
                "query runs: heap handed back after a burst of %d runs (at most %d at once, %d slots) in %.1f ms",
                runs,
                peak,
                self.slots,
                (time.perf_counter() - started) * 1000,
            )


class OnnxEncoder:
    """Texts -> L2-normalised float32 sentence vectors from an exported graph (optimizer/onnx_export.py)."""

    def __init__(self, model: Path, tokenizer_file: Path, max_length: int, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The arena keeps the largest batch's activations for good (+600 MB after bulk batches of 256 tokens,
        # measured); without it a query costs the same and memory returns after each batch.
        options.enable_cpu_mem_arena = False
        # A memory pattern is a plan per input shape for one block holding a run's activations; queries come in
        # ever new shapes (their lengths), so it was rarely reused, and with runs overlapping its blocks took
        # RSS to 352-623 MiB where tensors allocated one by one peaked at 254-257 MiB (40 threads, 300 long
        # queries, runs bounded by `QueryRuns`); sequential query latency the same within noise. The plans
        # themselves are small: 635 shapes in turn kept +1 MB.
        options.enable_mem_pattern = False
        # Spinning intra-op workers burn a core other processes need on a shared machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.model = model
        self._session = ort.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(SPLIT_FUSIONS)
        )
        try:
            self._tokenizer = load_tokenizer(tokenizer_file, max_length)
        except Exception as exc:  # the tokenizers library raises its own Exception for a bad file
            raise ModelError(f"{tokenizer_file}: not a tokenizer file ({exc})") from None
        # A Rust tokenizer raises "Already borrowed" when two threads use it at once; it takes ~20 µs.
        self._lock = threading.Lock()
        # Runs about half of a long request's groups, when free (off: they all run on the caller's thread).
        self.side = SideThread("onnx-groups")
        # Query runs at once: one per CPU its `threads` leave (more only take turns, each holding its activations).
        self.runs = QueryRuns(usable_cpus() // max(1, threads))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), d), each row L2-normalised: one run per group of texts of near-equal length
        (`low_padding_groups`), usually one run for a request."""
        token_ids = self.tokenize(texts)
        groups = low_padding_groups([len(ids) for ids in token_ids])
        if len(groups) == 1:
            return self._query_run(token_ids)

        def run(bin_: list[list[int]]) -> list[tuple[list[int], np.ndarray]]:
            return [(rows, self._query_run([token_ids[row] for row in rows])) for rows in bin_]

        # The groups are independent single-threaded runs: split into two bins of about equal padded tokens,
        # one run here and one on the helper thread (a second core, when there is one), so a long request
        # waits for about half its groups, not all of them.
        here, there = _two_bins(groups, [len(ids) for ids in token_ids])
        elsewhere = self.side.try_submit(lambda: run(there)) if there else None
        parts = run(here) + (elsewhere.result() if elsewhere is not None else run(there))
        out = np.empty((len(token_ids), parts[0][1].shape[1]), dtype=np.float32)
        for rows, vectors in parts:
            out[rows] = vectors
        return out

    def _query_run(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One group of a request's texts, in a `QueryRuns` slot (a slot a run, not a request: a request's
        other half on the helper thread takes a slot of its own, and nothing waits while holding one)."""
        with self.runs.slot():
            return self.encode_ids(token_ids)

    def encode_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = padded(token_ids)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask}
        return np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)

    def encode_bulk(
        self,
        texts: Sequence[str],
        batch_size: int,
        advance: Callable[[int], object] = lambda n: None,
        threads: int = 1,
    ) -> np.ndarray:
        """Many texts: tokenized once, then `encode_bulk_ids`."""
        return self.encode_bulk_ids(tokenize_chunked(self.tokenize, texts), batch_size, advance, threads)

    def encode_bulk_ids(
        self,
        token_ids: Sequence[np.ndarray],
        batch_size: int,
        advance: Callable[[int], object] = lambda n: None,
        threads: int = 1,
    ) -> np.ndarray:
        """Tokenized texts batched by token count (optimizer/batching.py), batches spread over `threads` threads
        when there are `PARALLEL_MIN_TEXTS` or more; rows in input order."""
        batches = list(batches_by_tokens(token_ids, batch_size))
        out: np.ndarray | None = None

        def run(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return rows, self.encode_ids([token_ids[i] for i in rows])

        workers = threads if len(token_ids) >= PARALLEL_MIN_TEXTS else 1
        with ThreadPoolExecutor(workers, thread_name_prefix="onnx-bulk") if workers > 1 else nullcontext() as pool:
            for rows, vectors in pool.map(run, batches) if pool is not None else map(run, batches):
                if out is None:
                    out = np.empty((len(token_ids), vectors.shape[1]), dtype=np.float32)
                out[rows] = vectors
                advance(len(rows))
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with [CLS] and [SEP], truncated to the model's maximum sequence length."""
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        return [encoding.ids for encoding in encodings]


class OnnxEmbedder:
    """The optimizer's embedder (optimizer/embedding.py's `TextEmbedder`) on an `OnnxEncoder`."""

    def __init__(
        self, spec: ModelSpec, encoder: OnnxEncoder, *, precision: Precision, batch_size: int, bulk_threads: int
    ) -> None:
        self.spec = spec
        self.model_id = spec.id
        self.dimensions = spec.dimensions
        self.batch_size = batch_size
        self.bulk_threads = bulk_threads or os.cpu_count() or 1
        self.encoder = encoder
        self.kind = "onnx" if precision == "fp32" else f"onnx-{precision}"
        # Encodes many documents elsewhere (optimizer/bulk_embed.py's child), or None to stay in process.
        self.bulk: Callable[[Sequence[str], bool], np.ndarray | None] | None = None

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32, L2-normalised, one row per text (every text of a request in one run), with the query prefix."""
        if not texts:
            return np.empty((0, self.dimensions), np.float32)
        return self.encoder.encode([self.spec.query_prefix + text for text in texts])

    def encode_queries_with_tokens(
        self, texts: Sequence[str], *, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        if tokens:
            raise ModelError("token embeddings (late interaction) need the torch encoder")
        return self.encode_queries(texts), []

    def encode_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """float32 normalised rows, in input order."""
        if not texts:
            return np.empty((0, self.dimensions), np.float32)
        prefixed = [self.spec.document_prefix + text for text in texts]
        if self.bulk is not None and (vectors := self.bulk(prefixed, progress)) is not None:
            return vectors
        try:
            with maybe_progress(progress, f"embedding {len(texts)} tools", len(texts)) as advance:
                return self.encoder.encode_bulk(prefixed, self.batch_size, advance, self.bulk_threads)
        finally:
            release_memory()

    def encode_documents_with_tokens(
        self, texts: Sequence[str], *, progress: bool = False, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        if tokens:
            raise ModelError("token embeddings (late interaction) need the torch encoder")
        return self.encode_documents(texts, progress=progress), []


def load_onnx_embedder(
    spec: ModelSpec,
    cache: Path,
    *,
    precision: Precision = "int8",
    batch_size: int | None = None,
    query_threads: int = 1,
    bulk_threads: int = 0,
    fallback: Path | None = None,
) -> OnnxEmbedder:
    """The model's cached ONNX export (made first, in a child process, when missing; in `fallback` when `cache`
    cannot be written) in a session."""
    started = time.perf_counter()
    tokenizer = spec.path / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelError(f"model {spec.id!r}: no tokenizer.json in {spec.path}")
    path = ensure_onnx_model(spec, cache, precision, fallback=fallback)
    try:
        encoder = OnnxEncoder(path, tokenizer, spec.max_seq_length, threads=query_threads)
    except Exception as exc:  # a truncated or corrupt cached file: export again once (a second failure is final)
        log.warning("cached ONNX model %s does not load (%s); exporting it again", path, exc)
        path = reexport(spec, cache, precision, fallback=fallback)
        encoder = OnnxEncoder(path, tokenizer, spec.max_seq_length, threads=query_threads)
    embedder = OnnxEmbedder(
        spec, encoder, precision=precision, batch_size=batch_size or ONNX_BATCH_SIZE, bulk_threads=bulk_threads
    )
    log.info(
        "embedding model %s loaded on ONNX Runtime (%s) in %.1f s", spec.id, precision, time.perf_counter() - started
    )
    return embedder


def _two_bins(groups: list[list[int]], lengths: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
    """`groups` in two bins of about equal padded tokens (largest first, each to the lighter bin)."""

    def padded_tokens(rows: list[int]) -> int:
        return max(lengths[row] for row in rows) * len(rows)

    bins: tuple[list[list[int]], list[list[int]]] = ([], [])
    loads = [0, 0]
    for rows in sorted(groups, key=padded_tokens, reverse=True):
        lighter = 0 if loads[0] <= loads[1] else 1
        bins[lighter].append(rows)
        loads[lighter] += padded_tokens(rows)
    return bins
