"""One embedding model per run, shared by every method: each distinct document text is embedded once.

`SharedEmbedder` wraps the optimizer's `Embedder` (`vmcp_opt.optimizer.embedding.load_embedder`) and keeps
the vectors of every document text it has encoded, in memory and on disk (`<out>/cache/`), so the dense
baseline, the ToolHive baseline and the optimizer's own index reuse them and a second run embeds nothing.
Queries are never cached: each method pays for its query embedding, so latencies stay honest.

A cache file names the model's files (`model_digest`), the graph its vectors are for (`EncoderStamp`: the
encoder, precision included, and the ONNX export recipe) and the releases of the packages that ran it
(`vector_packages`: a new onnxruntime or torch can move a vector), which the gateway's index leaves out on purpose
(optimizer/vector_store.py): eval compares graphs, so an upgrade's new recipe is measured on its own graph's
documents, not the previous graph's, and a cache directory given to two encoders hands neither the other's
vectors. A file without all three stamps is not trusted: its vectors are embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from eval.late_interaction import TokenMatrix, TokenStore

if TYPE_CHECKING:
    from vmcp_opt.optimizer.embedding import EncoderKind
    from vmcp_opt.optimizer.onnx_export import Precision

Vectors = npt.NDArray[np.float32]
# One query request as `SharedEmbedder.query_cache` keeps it: its texts, and whether token embeddings were asked.
RequestKey = tuple[tuple[str, ...], bool]
# New document texts from which an embedding shows a progress bar (about 5 s on one CPU thread).
PROGRESS_MIN = 64


class EmbedderLike(Protocol):
    model_id: str
    dimensions: int

    def encode_queries(self, texts: Sequence[str]) -> Vectors: ...

    def encode_documents(self, texts: Sequence[str], progress: bool = False) -> Vectors: ...


@dataclass(frozen=True)
class EncoderStamp:
    """What made cached document vectors besides the model's files (`model_digest`): the encoder they are for
    (an embedder's `kind`: "onnx-int8", "onnx" for fp32, "torch") and the ONNX export recipe
    (onnx_export.RECIPE_VERSION, bumped whenever the exported or quantised graphs change)."""

    encoder: str
    recipe: int

    def serves(self, current: EncoderStamp) -> bool:
        """Whether vectors made as this stamp says may serve an encoder as `current` says: the same encoder, and
        the same export recipe unless both are torch (which runs no exported graph)."""
        if self.encoder != current.encoder:
            return False
        return self.recipe == current.recipe or self.encoder == "torch"


class SharedEmbedder:
    def __init__(
        self,
        inner: Any,
        cache_dir: Path | None = None,
        query_threads: int = 1,
        bulk_threads: int = 1,
        encoder_name: str | None = None,
    ) -> None:
        self.inner = inner
        # How texts are embedded (`vmcp eval run --encoder`): the optimizer's index directories are kept per
        # encoder, as the document vectors are, so no run of one encoder reads another's index.
        self.encoder_name = encoder_name or str(inner.kind)
        # Deliberate thread counts: with anything else on the other core, 2 torch threads were 4-8x slower
        # than 1 here (spinning workers contend), for one query and for bulk encoding alike.
        self.query_threads = query_threads
        self.bulk_threads = bulk_threads
        self.model_id: str = str(inner.model_id)
        self.dimensions: int = int(inner.dimensions)
        self.cache_dir = cache_dir
        self._vectors: dict[str, Vectors] = {}
        # Token embeddings (eval/late_interaction.py) by the same keys, for texts embedded with tokens.
        self._tokens: dict[str, TokenMatrix] = {}
        self.embedded = 0
        # Query vectors reused across methods (untimed queries of `vmcp eval run`, every query of `eval.tune`),
        # kept per request: the texts of one `encode_queries` call and whether tokens were asked for.
        self.query_cache: dict[RequestKey, tuple[Vectors, list[TokenMatrix]]] | None = None
        # True while a query is being timed: it then pays for its own embedding.
        self.bypass_cache = False
        # A bar for document embeddings of at least PROGRESS_MIN new texts (`vmcp eval run`: a cold catalogue
        # takes minutes on CPU); off for `eval.tune`, whose own output is one line per configuration.
        self.show_progress = False

    def __getattr__(self, name: str) -> Any:
        # Anything else the optimizer's index asks of an embedder (spec, batch_size...) comes from the model.
        return getattr(self.inner, name)

    def encode_queries(self, texts: Sequence[str]) -> Vectors:
        return self.encode_queries_with_tokens(texts, tokens=False)[0]

    def encode_queries_with_tokens(
        self, texts: Sequence[str], *, tokens: bool = True
    ) -> tuple[Vectors, list[TokenMatrix]]:
        if self.query_cache is None or self.bypass_cache:
            return self._embed_request(texts, tokens)
        # A request's vectors are computed as find_tool computes them: its texts in one batch, nothing else
        # in it. Batching several requests together would change them (ONNX int8 quantises each batch's
        # activations as a whole; padding moves the rest), and with them the figures.
        key = (tuple(texts), tokens)
        if key not in self.query_cache:
            self.query_cache[key] = self._embed_request(texts, tokens)
        vectors, matrices = self.query_cache[key]
        return vectors.copy(), list(matrices)

    def _embed_request(self, texts: Sequence[str], tokens: bool) -> tuple[Vectors, list[TokenMatrix]]:
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32), []
        with torch_threads(self.query_threads):
            vectors, matrices = self.inner.encode_queries_with_tokens(list(texts), tokens=tokens)
        return np.asarray(vectors, dtype=np.float32), list(matrices)

    def prime_queries(self, texts: Sequence[str]) -> None:
        """Embed each query into the query cache as a request of its own, as find_tool embeds it (dense and
        ToolHive ask for exactly that; a single-intent optimizer search too), with a bar for many."""
        from vmcp_opt.optimizer.embedding import maybe_progress

        if self.query_cache is None:
            self.query_cache = {}
        missing = [text for text in dict.fromkeys(texts) if ((text,), False) not in self.query_cache]
        # ToolLens' 1,577 untimed queries take about a minute on one thread: a bar, as for documents.
        progress = self.show_progress and len(missing) >= PROGRESS_MIN
        with maybe_progress(progress, f"embedding {len(missing)} queries", len(missing)) as advance:
            for text in missing:
                self.query_cache[((text,), False)] = self._embed_request([text], tokens=False)
                advance(1)

    def encode_documents(self, texts: Sequence[str], progress: bool = False) -> Vectors:
        return self.encode_documents_with_tokens(texts, progress=progress, tokens=False)[0]

    def encode_documents_with_tokens(
        self, texts: Sequence[str], *, progress: bool = False, tokens: bool = True
    ) -> tuple[Vectors, list[TokenMatrix]]:
        texts = list(texts)
        self._load_from_disk()
        missing = [
            text
            for text in dict.fromkeys(texts)
            if _key(text) not in self._vectors or (tokens and _key(text) not in self._tokens)
        ]
        if missing:
            progress = progress or (self.show_progress and len(missing) >= PROGRESS_MIN)
            with torch_threads(self.bulk_threads):
                vectors, matrices = self.inner.encode_documents_with_tokens(missing, progress=progress, tokens=tokens)
            self.embedded += len(missing)
            for text, vector in zip(missing, np.asarray(vectors, dtype=np.float32), strict=True):
                self._vectors[_key(text)] = vector
            if tokens:
                self._tokens.update(zip(map(_key, missing), matrices, strict=True))
            self._save_to_disk()
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32), []
        vectors = np.stack([self._vectors[_key(text)] for text in texts]).astype(np.float32)
        return vectors, [self._tokens[_key(text)] for text in texts] if tokens else []

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in self.model_id)
        return self.cache_dir / f"{safe}.npz"

    def _load_from_disk(self) -> None:
        path = self._cache_file()
        if path is None or not path.exists() or getattr(self, "_disk_loaded", False):
            return
        self._disk_loaded = True
        try:
            vectors, tokens = self._read_cache(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # A cache only saves time: one cut short (a full disk, a killed run) is embedded again, and
            # replaced at the next save.
            print(f"cannot read the vector cache {path} ({exc}): embedding its texts again", file=sys.stderr)
            return
        for key, vector in vectors.items():
            self._vectors.setdefault(key, vector)
        for key, matrix in tokens.items():
            self._tokens.setdefault(key, matrix)

    def _read_cache(self, path: Path) -> tuple[dict[str, Vectors], dict[str, TokenMatrix]]:
        """The file's vectors and token matrices by text key, or none if another model or graph made them
        (vectors of the model as it was, changed in place, or of another graph: embedded again)."""
        vectors: dict[str, Vectors] = {}
        tokens: dict[str, TokenMatrix] = {}
        with np.load(path) as data:
            built_by = (str(data["model_files"]), str(data["model_digest"])) if "model_digest" in data else None
            if not self._same_model(built_by) or not self._same_encoder(data):
                return vectors, tokens
            for key, vector in zip(data["keys"], data["vectors"], strict=True):
                vectors[str(key)] = vector.astype(np.float32)
            if "token_keys" in data:
                store = TokenStore(data["tokens"], data["token_offsets"])
                for i, key in enumerate(data["token_keys"]):
                    tokens[str(key)] = store.matrix(i)
        return vectors, tokens

    def _same_model(self, built_by: tuple[str, str] | None) -> bool:
        """Whether a cache file written by the model as `built_by` stamped it holds this model's vectors: the
        id alone names a local directory, which fine-tuning can rewrite in place. Its files as they are now
        (a few stat calls), else their bytes (copied or reinstalled: new times, same model). A file without a
        stamp, written before stamps, cannot be told apart and is not trusted."""
        spec = getattr(self.inner, "spec", None)
        if spec is None:  # an embedder without a model directory (tests' stand-ins): the id is all there is
            return True
        if built_by is None:
            return False
        from vmcp_opt.optimizer.model_registry import model_digest, model_files

        return built_by[0] == model_files(spec) or built_by[1] == model_digest(spec)

    def _same_encoder(self, data: Any) -> bool:
        """Whether a cache file's vectors are for this encoder's graph (`EncoderStamp.serves`); one without the
        stamp is not trusted, as one without the model's."""
        current = self._encoder_stamp()
        if current is None:
            return True
        if "export_recipe" not in data or "packages" not in data:
            return False
        releases = json.loads(str(data["packages"]))
        if not isinstance(releases, dict) or not same_releases(releases, vector_packages()):
            return False
        return EncoderStamp(str(data["encoder"]), int(data["export_recipe"])).serves(current)

    def _encoder_stamp(self) -> EncoderStamp | None:
        """The graph this embedder's vectors are for, or None for one with no model spec (as `_model_stamp`)."""
        if getattr(self.inner, "spec", None) is None:
            return None
        from vmcp_opt.optimizer import onnx_export

        return EncoderStamp(str(self.inner.kind), onnx_export.RECIPE_VERSION)

    def _model_stamp(self) -> tuple[str, str] | None:
        """(`model_files`, `model_digest`) as the gateway's vector store stamps its files (optimizer/vector_store.py),
        or None for an embedder with no model spec. The digest is computed once per state of the files."""
        spec = getattr(self.inner, "spec", None)
        if spec is None:
            return None
        from vmcp_opt.optimizer.model_registry import model_digest, model_files

        return model_files(spec), model_digest(spec)

    def _save_to_disk(self) -> None:
        """A cache only saves time, so one that cannot be written (a full disk, a read-only directory) is
        named once and the run goes on without it, rather than ending after minutes of embedding."""
        path = self._cache_file()
        if path is None:
            return
        try:
            self._write_cache(path)
        except OSError as exc:
            print(f"cannot save the vector cache {path} ({exc.strerror or exc}): going on without it", file=sys.stderr)
            self.cache_dir = None  # no second warning, and no retry per dataset

    def _write_cache(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._vectors), dtype="U64")
        stacked = np.stack(list(self._vectors.values())).astype(np.float32)
        store = TokenStore.from_matrices(list(self._tokens.values()), self.dimensions)
        arrays: dict[str, Any] = {
            "keys": keys,
            "vectors": stacked,
            "token_keys": np.array(list(self._tokens), dtype="U64"),
            "tokens": store.tokens,
            "token_offsets": store.offsets,
        }
        stamp = self._model_stamp()
        if stamp is not None:
            arrays.update(model_files=np.array(stamp[0]), model_digest=np.array(stamp[1]))
        encoder = self._encoder_stamp()
        if encoder is not None:
            arrays.update(encoder=np.array(encoder.encoder), export_recipe=np.array(encoder.recipe))
            arrays.update(packages=np.array(json.dumps(vector_packages(), sort_keys=True)))
        _write_atomically(path, arrays)


def _write_atomically(path: Path, arrays: dict[str, Any]) -> None:
    """`path` replaced whole by a file of its own: two runs saving one cache at once each write a temporary
    file of a unique name, so neither renames the other's (the last complete one stays)."""
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.npz")
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(handle, "wb") as tmp:
            os.fchmod(tmp.fileno(), 0o666 & ~umask)  # as a plain write would make it, not owner-only
            np.savez(tmp, **arrays)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    torch = sys.modules.get("torch")
    if torch is None:  # the ONNX encoder: torch is not loaded, and its threads are set per session
        yield
        return
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Packages whose release can move a vector (the graph runtime, torch's kernels, sentence-transformers' pooling,
# the tokenizer's splits), by module and distribution name. A run records those it imported: the ones that
# embedded (the ONNX encoder never imports torch), not merely the ones installed.
VECTOR_PACKAGES = {
    "onnxruntime": "onnxruntime",
    "torch": "torch",
    "sentence_transformers": "sentence-transformers",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
}


def embedding_record(embedder: SharedEmbedder, settings: Mapping[str, Any]) -> dict[str, Any]:
    """How `embedder` made its vectors, for results.json: two result files (or a README table) with different
    figures can then be told apart by encoder, precision, export recipe or package release, not guessed at.
    `settings` are `--encoder`'s (eval/cli.py ENCODERS); what the CPU made of them is read off the embedder."""
    record: dict[str, Any] = {
        "encoder": embedder.encoder_name,
        "settings": dict(settings),
        "model": embedder.model_id,
        "kind": str(getattr(embedder.inner, "kind", embedder.encoder_name)),
    }
    if record["kind"].startswith("onnx"):
        from vmcp_opt.optimizer import onnx_export

        record["export_recipe"] = onnx_export.RECIPE_VERSION
        if record["kind"].startswith("onnx-int8"):
            from vmcp_opt.optimizer.cpu import int8_weight_peak

            record["int8_weight_peak"] = int8_weight_peak()  # 63 where the CPU's int8 products saturate
    else:  # the torch encoder: bfloat16 only where the CPU has it, so what was asked is not what ran
        for name in ("query_bfloat16", "bulk_bfloat16"):
            if isinstance(getattr(embedder.inner, name, None), bool):
                record[name] = getattr(embedder.inner, name)
    record["packages"] = vector_packages()
    return record


def vector_packages() -> dict[str, str]:
    """The releases of VECTOR_PACKAGES this process has imported, by distribution name."""
    found: dict[str, str] = {}
    for module_name, distribution in VECTOR_PACKAGES.items():
        module = sys.modules.get(module_name)
        version = getattr(module, "__version__", None) if module is not None else None
        if isinstance(version, str):
            found[distribution] = version
    return found


def same_releases(cached: Mapping[str, str], current: Mapping[str, str]) -> bool:
    """Whether vectors made under `cached` releases may serve a run under `current`: every package both name at
    one release (one process may have imported a package the other had not, which embedded nothing)."""
    return all(cached[name] == current[name] for name in cached.keys() & current.keys())


def embedding_caption(record: Mapping[str, Any], *, model: bool = True) -> str:
    """One line naming how a table's vectors were made: `embedding` of results.json, summed up (without the
    model for a table whose rows are models)."""
    settings = ", ".join(f"{key}={value}" for key, value in record.get("settings", {}).items())
    extras = [f"{key} {record[key]}" for key in ("export_recipe", "int8_weight_peak") if key in record]
    extras += [f"{key} {record[key]}" for key in ("query_bfloat16", "bulk_bfloat16") if key in record]
    packages = ", ".join(f"{name} {version}" for name, version in record.get("packages", {}).items())
    parts = [f"model {record.get('model')}"] if model else []
    parts += [f"encoder {record.get('encoder')} ({settings})", *extras]
    return "embedding: " + "; ".join(parts) + (f"; {packages}" if packages else "")


def load_shared_embedder(
    model: str,
    bulk_bfloat16: bool,
    cache_dir: Path | None,
    query_threads: int = 1,
    *,
    encoder: EncoderKind = "onnx",
    precision: Precision = "int8",
    lean: bool = True,
    query_bfloat16: bool = True,
    encoder_name: str | None = None,
) -> SharedEmbedder:
    """The optimizer's configured model, loaded offline the way the gateway loads it (the defaults of
    `encoder`, `precision`, `lean` and `query_bfloat16` are the gateway's; the others exist to compare against it).
    An ONNX encoder that cannot load is an error here, not the gateway's fallback: a comparison must
    measure what it names."""
    from vmcp_opt.optimizer.embedding import load_embedder
    from vmcp_opt.optimizer.model_registry import ModelError

    inner = load_embedder(
        model,
        encoder=encoder,
        precision=precision,
        bulk_bfloat16=bulk_bfloat16,
        progress=False,
        query_threads=query_threads,
        bulk_threads=query_threads,
        lean=lean,
        query_bfloat16=query_bfloat16,
    )
    wanted = encoder if encoder == "torch" or precision == "fp32" else f"{encoder}-{precision}"
    if inner.kind != wanted:
        raise ModelError(f"the {wanted} encoder did not load (see the warning above)")
    return SharedEmbedder(
        inner, cache_dir, query_threads=query_threads, bulk_threads=query_threads, encoder_name=encoder_name or wanted
    )
