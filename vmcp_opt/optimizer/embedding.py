"""Embedding models loaded offline, query and bulk encoding (which model: optimizer/model_registry.py).

`load_embedder` picks the encoder (`optimizer.encoder`):

- `onnx` (the default): ONNX Runtime over the model's cached ONNX export (optimizer/onnx_encoder.py,
  optimizer/onnx_export.py), the graph `optimizer.precision` names (default `int8`: SmoothQuant then dynamic
  int8, optimizer/onnx_quantise.py; `int8-blockwise` or `fp32`); torch never loads in this process. Should
  onnxruntime or the export fail, one warning says why and the torch encoder serves instead.
- `torch`: the lean encoder (optimizer/encoder.py: bfloat16 where the CPU has native bfloat16, which
  eval/README.md's "Encoders" table shows costs no retrieval quality) when it can reproduce the model;
  sentence-transformers' own forward serves other models and token embeddings.

All give the same vectors for a model within eval's noise (cosine >= 0.9999 between ONNX fp32 and torch
fp32, closer than the torch encoder's own bfloat16 bulk path; >= 0.995 for the int8 graph, within 0.13
nDCG@10 of fp32 on every eval set, eval/README.md), so the persisted index keeps one set of
vectors per model and a change of encoder or precision re-embeds nothing.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from vmcp_opt.config import APP_NAME, OptimizerConfig
from vmcp_opt.optimizer.batching import TORCH_BATCH_SIZE
from vmcp_opt.optimizer.cpu import bulk_engine, cpu_supports_bfloat16
from vmcp_opt.optimizer.model_registry import ModelError, ModelSpec, resolve_model

if TYPE_CHECKING:
    from vmcp_opt.optimizer.bulk_embed import BulkEncoder
    from vmcp_opt.optimizer.encoder import LeanEncoder
    from vmcp_opt.optimizer.onnx_export import Precision

log = logging.getLogger(__name__)

# Below this many documents, bulk encoding stays in float32.
BFLOAT16_MIN_DOCUMENTS = 128


# `optimizer.encoder`'s values; ONNX Runtime's graph is chosen by `precision` (optimizer/onnx_export.py).
EncoderKind = Literal["onnx", "torch"]


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TextEmbedder(Protocol):
    """What the index, the query cache and eval ask of an embedder (`Embedder`, `OnnxEmbedder`)."""

    spec: ModelSpec
    model_id: str
    dimensions: int
    batch_size: int
    # What runs the model: "torch", "onnx" (fp32), "onnx-int8" or "onnx-int8-dynamic".
    kind: str

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_queries_with_tokens(
        self, texts: Sequence[str], *, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...

    def encode_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...

    def encode_documents_with_tokens(
        self, texts: Sequence[str], *, progress: bool = False, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


class Embedder:
    """A sentence-transformers model: fp32 for queries, optionally a bfloat16 copy for bulk documents."""

    def __init__(
        self,
        spec: ModelSpec,
        model: Any,
        *,
        bulk_bfloat16: bool = True,
        batch_size: int = TORCH_BATCH_SIZE,
        query_threads: int = 1,
        bulk_threads: int = 0,
        lean: bool = True,
        query_bfloat16: bool = True,
    ) -> None:
        self.spec = spec
        self.model_id = spec.id
        self.dimensions = spec.dimensions
        self.batch_size = batch_size
        self.kind = "torch"
        self.query_threads = query_threads
        self.bulk_threads = bulk_threads or os.cpu_count() or 1
        self.bulk_bfloat16 = bulk_bfloat16 and cpu_supports_bfloat16()
        self._model = model
        self._bulk_model: Any = None
        self._bulk_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        # The lean path (optimizer/encoder.py) where it reproduces the model, else sentence-transformers'.
        self._lean: LeanEncoder | None = None
        self._lean_bf16: LeanEncoder | None = None
        if lean:
            import torch

            from vmcp_opt.optimizer.encoder import LeanEncoder

            self._lean = LeanEncoder.from_sentence_transformer(model)
            if self._lean is not None and cpu_supports_bfloat16() and (query_bfloat16 or self.bulk_bfloat16):
                self._lean_bf16 = LeanEncoder.from_sentence_transformer(model, torch.bfloat16)
        self.query_bfloat16 = query_bfloat16 and self._lean_bf16 is not None

    @property
    def lean(self) -> bool:
        """True when queries and documents take the lean encoder rather than sentence-transformers."""
        return self._lean is not None

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32, L2-normalised, one row per text, with the model's query prefix."""
        return self.encode_queries_with_tokens(texts, tokens=False)[0]

    def encode_queries_with_tokens(
        self, texts: Sequence[str], *, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Sentence vectors plus, from the same forward pass, each query's normalised token embeddings."""
        _set_torch_threads(self.query_threads)
        prefixed = [self.spec.query_prefix + text for text in texts]
        lean = self._lean_bf16 if self.query_bfloat16 else self._lean
        if lean is not None and not tokens:
            # Every text of a request (its intents) in one forward pass.
            return (lean.encode(prefixed) if prefixed else np.empty((0, self.dimensions), np.float32)), []
        vectors, matrices = self._encode(self._model, prefixed, tokens)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32), matrices

    def encode_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Bulk encoding (bfloat16 where enabled and supported), float32 normalised rows, in input order."""
        return self.encode_documents_with_tokens(texts, progress=progress, tokens=False)[0]

    def encode_documents_with_tokens(
        self, texts: Sequence[str], *, progress: bool = False, tokens: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """`encode_documents` plus each document's token embeddings (float16, normalised), in input order."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        matrices: list[np.ndarray] = [np.zeros((0, self.dimensions), dtype=np.float16)] * len(texts)
        if not texts:
            return out, matrices
        # A few changed tools are not worth a bfloat16 copy of the model (~0.1 s and ~45 MB).
        bf16 = self.bulk_bfloat16 and len(texts) >= BFLOAT16_MIN_DOCUMENTS
        lean = self._lean_bf16 if bf16 and self._lean_bf16 is not None else self._lean
        if lean is not None and not tokens:
            return self._encode_lean(lean, texts, progress), matrices
        model = self._bulk() if bf16 else self._model
        # Longest first: batches of similar length waste less padding; results go back in input order.
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")
        step = self.batch_size
        previous = _set_torch_threads(self.bulk_threads)
        with maybe_progress(progress, f"embedding {len(texts)} tools", len(texts)) as advance:
            for start in range(0, len(texts), step):
                rows = order[start : start + step]
                batch = [self.spec.document_prefix + texts[i] for i in rows]
                vectors, batch_tokens = self._encode(model, batch, tokens)
                out[rows] = vectors.numpy()
                for row, matrix in zip(rows, batch_tokens, strict=False):
                    matrices[row] = matrix
                advance(len(rows))
        _set_torch_threads(previous)
        if bf16:
            with self._bulk_lock:
                self._bulk_model = None
        release_memory()  # activations of long batches otherwise stay in the process (~100 MB)
        return out, matrices

    def _encode_lean(self, lean: LeanEncoder, texts: Sequence[str], progress: bool) -> np.ndarray:
        previous = _set_torch_threads(self.bulk_threads)
        try:
            with maybe_progress(progress, f"embedding {len(texts)} tools", len(texts)) as advance:
                prefixed = [self.spec.document_prefix + text for text in texts]
                return lean.encode_bulk(prefixed, self.batch_size, advance)
        finally:
            _set_torch_threads(previous)
            release_memory()

    def _encode(self, model: Any, texts: list[str], tokens: bool = False) -> tuple[Any, list[np.ndarray]]:
        """One batch through the model: a normalised float32 tensor, one row per text, and (when asked)
        each text's token embeddings without padding, [CLS] and [SEP]: normalised float16 matrices."""
        import torch

        # A Rust tokenizer raises "Already borrowed" when two threads use it at once (a search during an
        # update); tokenizing is ~0.1 ms, so it is serialised while the forward passes run in parallel.
        with self._tokenizer_lock:
            features = model.preprocess(texts)
        with torch.inference_mode():
            output = model(features)
            # Normalised in float32 (after a bfloat16 forward too), so inner products are cosines.
            vectors = torch.nn.functional.normalize(output["sentence_embedding"].float(), p=2, dim=1)
            if not tokens:
                return vectors, []
            token_vectors = torch.nn.functional.normalize(output["token_embeddings"].float(), p=2, dim=2)
            lengths = output["attention_mask"].sum(dim=1).tolist()
            matrices = [
                token_vectors[i, 1 : max(int(n) - 1, 1)].to(torch.float16).numpy().copy() for i, n in enumerate(lengths)
            ]
            return vectors, matrices

    def _bulk(self) -> Any:
        with self._bulk_lock:
            if self._bulk_model is None:
                import torch

                self._bulk_model = copy.deepcopy(self._model).to(torch.bfloat16)
            return self._bulk_model


def _set_torch_threads(count: int) -> int:
    """Set torch's intra-op threads for the calling thread (OpenMP keeps them per thread); returns the old count.

    New threads start from the last value set anywhere, so bulk encoding restores it when done.
    """
    import torch

    previous = int(torch.get_num_threads())
    if previous != count:
        torch.set_num_threads(count)
    return previous


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise); a no-op elsewhere."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def maybe_progress(enabled: bool, label: str, total: int) -> Iterator[Any]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def default_model_cache() -> Path:
    """Where exported ONNX models are kept when no config names a place: `<per-user data dir>/models`."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "models"


def load_configured_embedder(
    config: OptimizerConfig,
    model_cache: Path | None = None,
    *,
    new_documents: int = 0,
    model_cache_fallback: Path | None = None,
) -> TextEmbedder:
    """The embedder `config` asks for (the gateway's and `vmcp index`'s path); on ONNX, with a child process
    for large bulk encodings (`optimizer.bulk_process_min`, optimizer/bulk_embed.py) when torch is installed.
    With `new_documents` at that threshold the child starts before the model loads, so that its torch import
    overlaps the load; `bulk_started` then hands it the texts or cancels it."""
    bulk = _bulk_encoder(config)
    if bulk is not None:
        bulk.start(new_documents)
    try:
        embedder = load_embedder(
            config.model,
            encoder=config.encoder,
            precision=config.precision,
            model_cache=model_cache,
            model_cache_fallback=model_cache_fallback,
            bulk_bfloat16=config.bulk_bfloat16,
            batch_size=config.batch_size,
            query_threads=config.query_threads,
            bulk_threads=config.bulk_threads,
        )
    except BaseException:
        if bulk is not None:
            bulk.cancel()
        raise
    from vmcp_opt.optimizer.onnx_encoder import OnnxEmbedder

    if bulk is not None and isinstance(embedder, OnnxEmbedder):
        bulk.reference = embedder.encoder.encode
        bulk.onnx_model = embedder.encoder.model
        embedder.bulk = bulk
    elif bulk is not None:
        bulk.cancel()  # ONNX could not load: the torch encoder serves and encodes in process
    return embedder


def _bulk_encoder(config: OptimizerConfig) -> BulkEncoder | None:
    """The child-process encoder an ONNX embedder takes, when `bulk_process_min` > 0."""
    if config.encoder != "onnx" or config.bulk_process_min <= 0:
        return None
    from vmcp_opt.optimizer.bulk_embed import BulkEncoder

    return BulkEncoder(
        resolve_model(config.model),
        min_documents=config.bulk_process_min,
        timeout=config.bulk_process_timeout,
        threads=config.bulk_threads,
        batch_size=config.batch_size,
        engine=bulk_engine(config),
    )


@contextmanager
def bulk_started(embedder: TextEmbedder, new_documents: int) -> Iterator[None]:
    """The embedder's bulk child (if it has one) started now when `new_documents` reach its threshold, so
    that its start-up overlaps the caller's work before `encode_documents`; on the way out a child no
    encoding took is killed."""
    from vmcp_opt.optimizer.bulk_embed import BulkEncoder

    bulk = getattr(embedder, "bulk", None)
    if not isinstance(bulk, BulkEncoder):
        yield
        return
    bulk.start(new_documents)
    try:
        yield
    finally:
        bulk.cancel()


def load_embedder(
    spec: str,
    *,
    encoder: EncoderKind = "onnx",
    precision: Precision = "int8",
    model_cache: Path | None = None,
    model_cache_fallback: Path | None = None,
    batch_size: int | None = None,
    query_threads: int = 1,
    bulk_threads: int = 0,
    **torch_options: bool,
) -> TextEmbedder:
    """`encoder` over a registry model or a local directory, offline (ONNX Runtime's graph at `precision`);
    the torch encoder when the ONNX one cannot load (one warning says why). `torch_options` are `load_torch_embedder`'s own (bulk_bfloat16,
    progress, lean, query_bfloat16)."""
    _offline()
    if encoder != "torch":
        from vmcp_opt.optimizer.onnx_encoder import load_onnx_embedder

        try:
            return load_onnx_embedder(
                resolve_model(spec),
                model_cache or default_model_cache(),
                precision=precision,
                batch_size=batch_size,
                query_threads=query_threads,
                bulk_threads=bulk_threads,
                fallback=model_cache_fallback,
            )
        except Exception as exc:  # onnxruntime missing or failing, export refused: torch still serves
            log.warning(
                "ONNX encoder unavailable for %s (%s); using the torch encoder (`vmcp models export --force` "
                "exports the model again)",
                spec,
                exc,
            )
    return load_torch_embedder(
        spec,
        batch_size=batch_size or TORCH_BATCH_SIZE,
        query_threads=query_threads,
        bulk_threads=bulk_threads,
        **torch_options,
    )


def load_torch_embedder(
    spec: str,
    *,
    bulk_bfloat16: bool = True,
    batch_size: int = TORCH_BATCH_SIZE,
    progress: bool = True,
    query_threads: int = 1,
    bulk_threads: int = 0,
    lean: bool = True,
    query_bfloat16: bool = True,
) -> Embedder:
    """Load a registry model or a local directory on torch, offline; a spinner on stderr while torch loads."""
    _offline()
    model_spec = resolve_model(spec)
    started = time.perf_counter()
    status = _status(f"loading embedding model {model_spec.id}") if progress else _null_status()
    with status:
        try:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(query_threads)

            model = SentenceTransformer(str(model_spec.path), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {model_spec.id!r} at {model_spec.path}: cannot load ({exc})") from None
    model.eval()
    model.max_seq_length = model_spec.max_seq_length
    loaded_dims = model.get_embedding_dimension()
    if loaded_dims and loaded_dims != model_spec.dimensions:
        raise ModelError(
            f"model {model_spec.id!r}: registry says {model_spec.dimensions} dimensions, model has {loaded_dims}"
        )
    log.info("embedding model %s loaded in %.1f s", model_spec.id, time.perf_counter() - started)
    return Embedder(
        model_spec,
        model,
        bulk_bfloat16=bulk_bfloat16,
        batch_size=batch_size,
        query_threads=query_threads,
        bulk_threads=bulk_threads,
        lean=lean,
        query_bfloat16=query_bfloat16,
    )


def _status(message: str) -> Any:
    from rich.console import Console

    return Console(stderr=True).status(message)


@contextmanager
def _null_status() -> Iterator[None]:
    yield
