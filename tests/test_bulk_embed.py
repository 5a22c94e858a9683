"""Bulk encoding in a child process (optimizer/bulk_embed.py): a real child on the real model, on either engine,
gives the vectors the served ONNX int8 encoder gives (torch: within its cosine floor; onnx: the same graph, the
same vectors), reports its progress, and a failing or late child leaves the update to the in-process path with
the reason logged. Small updates never start a child."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_lean_encoder import TEXTS
from tests.test_optimizer_index import CATALOGUE
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import index as index_module
from vmcp_opt.optimizer.bulk_embed import FOLDER_PREFIX, BulkEncoder, BulkEngine, BulkJob
from vmcp_opt.optimizer.cpu import bulk_engine
from vmcp_opt.optimizer.documents import tool_document
from vmcp_opt.optimizer.embedding import load_configured_embedder
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model
from vmcp_opt.optimizer.onnx_encoder import OnnxEmbedder
from vmcp_opt.optimizer.onnx_export import int8_cosine_floor

# Real documents of mixed lengths (tool documents, short and over-long texts), enough for several batches.
DOCUMENTS = [tool_document(r) for r in CATALOGUE] + [f"{text} ({i})" for i in range(12) for text in TEXTS]


def _embedder(**config: object) -> OnnxEmbedder:
    cache = Path(os.environ["VMCP_OPTIMIZER__MODEL_CACHE"])
    embedder = load_configured_embedder(OptimizerConfig.model_validate(config), cache)
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


@pytest.fixture(scope="module")
def served(real_export: Path) -> OnnxEmbedder:
    """The gateway's default embedder: ONNX Runtime int8, with the child for 1,000 new documents or more."""
    return _embedder()


def _in_process(served: OnnxEmbedder, texts: list[str]) -> np.ndarray:
    return served.encoder.encode_bulk(texts, served.batch_size)


def _bulk(served: OnnxEmbedder, engine: BulkEngine) -> BulkEncoder:
    """A child encoder on `engine`, attached to the served encoder as `load_configured_embedder` attaches one."""
    bulk = BulkEncoder(served.spec, served.encoder.encode, min_documents=2, timeout=600, engine=engine)
    bulk.onnx_model = served.encoder.model
    return bulk


@pytest.mark.parametrize(
    ("flags", "settings", "engine"),
    [
        ({"amx_bf16", "avx512_bf16"}, {}, "torch"),  # AMX: torch bfloat16, ~2x ONNX Runtime
        ({"avx512_bf16"}, {}, "onnx"),  # AVX-512 BF16 alone: the int8 graph takes less CPU
        ({"avx512_bf16"}, {"precision": "fp32"}, "torch"),  # ... but not the fp32 graph
        ({"avx2", "fma"}, {"precision": "fp32"}, "onnx"),  # no bfloat16: torch float32 never wins
        ({"amx_bf16"}, {"bulk_bfloat16": False}, "onnx"),
    ],
)
def test_bulk_engine_follows_the_cpu_and_the_serving_precision(
    flags: set[str], settings: dict[str, Any], engine: str
) -> None:
    assert bulk_engine(OptimizerConfig.model_validate(settings), frozenset(flags)) == engine


def test_gateway_embedder_attaches_the_child_above_the_configured_threshold(served: OnnxEmbedder) -> None:
    assert isinstance(served.bulk, BulkEncoder)
    assert served.bulk.min_documents == OptimizerConfig().bulk_process_min
    # The demo and the tests (57 tools) stay in process: no child, no torch import.
    assert served.bulk(DOCUMENTS[:57]) is None
    assert _embedder(bulk_process_min=0).bulk is None


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_child_vectors_match_the_served_onnx_encoder_and_progress_is_relayed(
    served: OnnxEmbedder, engine: BulkEngine
) -> None:
    done: list[int] = []
    vectors = _bulk(served, engine).run(DOCUMENTS, done.append)
    assert sum(done) == len(DOCUMENTS) and len(done) > 1
    expected = _in_process(served, DOCUMENTS)
    if engine == "onnx":
        # The same graph on the same batches (each a single-threaded run): the same vectors.
        np.testing.assert_allclose(vectors, expected, atol=1e-6)
    # The served int8 graph's own floor to torch: dynamic int8 takes one activation scale per padded batch
    # (measured 0.9975 against the child's bfloat16 vectors).
    cosines = (vectors * expected).sum(axis=1)
    assert cosines.min() >= int8_cosine_floor(), cosines.min()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_a_documents_vector_does_not_depend_on_the_documents_embedded_with_it(served: OnnxEmbedder) -> None:
    """Dynamic int8 takes one activation scale per run, so a tool in a batch got a vector that moved with its
    batch-mates: a tool re-embedded alone (an update) differed from its cold-build vector. The served bulk path
    runs each text alone, as a query runs: the child's vectors are those of each document embedded by itself."""
    vectors = _bulk(served, "onnx").run(DOCUMENTS, lambda n: None)
    alone = np.vstack([served.encoder.encode([document]) for document in DOCUMENTS])
    np.testing.assert_allclose(vectors, alone, atol=1e-6)
    np.testing.assert_allclose(_in_process(served, DOCUMENTS), alone, atol=1e-6)


def test_update_above_the_threshold_takes_the_child() -> None:
    embedder = _embedder(bulk_process_min=len(DOCUMENTS))
    assert isinstance(embedder.bulk, BulkEncoder)
    vectors = embedder.encode_documents(DOCUMENTS)
    assert embedder.bulk.failed is None
    assert (vectors * _in_process(embedder, DOCUMENTS)).sum(axis=1).min() >= int8_cosine_floor()


def test_failing_child_falls_back_to_in_process_encoding_with_the_reason_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = _embedder(bulk_process_min=2)
    assert isinstance(embedder.bulk, BulkEncoder)
    # A model directory the torch child cannot load: it exits with an error line.
    embedder.bulk.engine = "torch"
    embedder.bulk.spec = dataclasses.replace(resolve_model(DEFAULT_MODEL), path=tmp_path)
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.optimizer.bulk_embed"):
        vectors = embedder.encode_documents(DOCUMENTS[:10])
    assert embedder.bulk.failed is not None and "not a BERT model" in embedder.bulk.failed
    assert "encoding in process instead" in caplog.text and "not a BERT model" in caplog.text
    np.testing.assert_allclose(vectors, _in_process(embedder, DOCUMENTS[:10]), atol=1e-5)
    # Not tried again in this process.
    assert embedder.bulk(DOCUMENTS[:10]) is None


def test_onnx_child_that_cannot_load_its_graph_falls_back_with_the_reason(
    tmp_path: Path, served: OnnxEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    bulk = _bulk(served, "onnx")
    bulk.onnx_model = tmp_path / "model-int8.onnx"
    bulk.onnx_model.write_bytes(b"not a protobuf")
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.optimizer.bulk_embed"):
        assert bulk(DOCUMENTS[:10]) is None
    assert bulk.failed is not None and "ONNX Runtime cannot load it" in bulk.failed, bulk.failed
    assert str(bulk.onnx_model) in caplog.text and "encoding in process instead" in caplog.text


def test_child_past_its_deadline_is_killed_and_the_update_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    embedder = _embedder(bulk_process_min=2, bulk_process_timeout=0.05)
    assert isinstance(embedder.bulk, BulkEncoder)
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.optimizer.bulk_embed"):
        vectors = embedder.encode_documents(DOCUMENTS[:4])
    assert "optimizer.bulk_process_timeout" in caplog.text
    assert vectors.shape == (4, embedder.dimensions)


def test_lean_encoder_from_the_model_directory_matches_the_loaded_model() -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from vmcp_opt.optimizer.encoder import LeanEncoder

    spec = resolve_model(DEFAULT_MODEL)
    model = SentenceTransformer(str(spec.path), device="cpu", local_files_only=True)
    model.max_seq_length = spec.max_seq_length
    loaded = LeanEncoder.from_sentence_transformer(model)
    direct = LeanEncoder.from_directory(spec.path, spec.max_seq_length, torch.float32)
    assert loaded is not None and direct is not None
    # The same one-batch `encode` on both, in chunks of near-equal length: every document, without padding
    # them all to the longest (256 word pieces), which took ~10 s of forward passes.
    ordered = sorted(DOCUMENTS, key=len)
    for start in range(0, len(ordered), 16):
        chunk = ordered[start : start + 16]
        assert (loaded.encode(chunk) * direct.encode(chunk)).sum(axis=1).min() >= 0.99999


def test_child_tokenizer_and_fused_layers_match_the_lean_encoder() -> None:
    """The child tokenizes on a thread with its own tokenizer (batching.load_tokenizer) and encodes on the
    fused oneDNN layers: the same ids as `LeanEncoder.tokenize`, the same vectors as the plain layers."""
    import torch

    from vmcp_opt.optimizer.batching import load_tokenizer, tokenize_chunked
    from vmcp_opt.optimizer.cpu import cpu_supports_bfloat16
    from vmcp_opt.optimizer.encoder import LeanEncoder

    spec = resolve_model(DEFAULT_MODEL)
    lean = LeanEncoder.from_directory(spec.path, spec.max_seq_length, torch.bfloat16)
    assert lean is not None
    tokenizer = load_tokenizer(spec.path / "tokenizer.json", spec.max_seq_length)
    ids = tokenize_chunked(lambda chunk: [e.ids for e in tokenizer.encode_batch(list(chunk))], DOCUMENTS)
    assert [list(row) for row in ids] == lean.tokenize(DOCUMENTS)
    assert max(len(row) for row in ids) == spec.max_seq_length
    fused = lean.encode_bulk_ids(ids, 16)
    # On a CPU with oneDNN bfloat16 (AMX / AVX-512 BF16) the fused path is the one taken.
    assert lean._fused is not None or not cpu_supports_bfloat16()
    plain = np.concatenate([lean.encode_ids([ids[i].tolist()]) for i in range(len(ids))])
    assert (fused * plain).sum(axis=1).min() >= 0.9999


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, BulkJob | None]]:
    """What a cold update does, in order: each bulk child started (with its job) and each `_prepare` call."""
    events: list[tuple[str, BulkJob | None]] = []
    job_init, prepare = BulkJob.__init__, index_module._prepare

    def record_job(self: BulkJob, *args: Any, **kwargs: Any) -> None:
        job_init(self, *args, **kwargs)
        events.append(("child", self))

    def record_prepare(*args: Any, **kwargs: Any) -> Any:
        events.append(("prepare", None))
        return prepare(*args, **kwargs)

    monkeypatch.setattr(BulkJob, "__init__", record_job)
    monkeypatch.setattr(index_module, "_prepare", record_prepare)
    return events


def _exited(job: BulkJob | None) -> bool:
    """The child is gone (reaped: no process left) and so are its files."""
    assert job is not None
    return job.child.returncode is not None and not Path(f"/proc/{job.child.pid}").exists() and not job.texts.exists()


def test_cold_update_starts_the_child_before_building_documents_and_gets_the_normal_vectors(
    tmp_path: Path, started: list[tuple[str, BulkJob | None]]
) -> None:
    config = OptimizerConfig(bulk_process_min=len(CATALOGUE))
    index = ToolIndex(config, tmp_path, model_cache=Path(os.environ["VMCP_OPTIMIZER__MODEL_CACHE"]))
    stats = index.update(CATALOGUE)
    assert stats.embedded == len(CATALOGUE)
    # One child, started before the documents were built (its torch import overlaps that and the model load).
    assert [kind for kind, _ in started] == ["child", "prepare"]
    assert _exited(started[0][1])
    embedder = index.embedder
    assert isinstance(embedder, OnnxEmbedder) and isinstance(embedder.bulk, BulkEncoder)
    assert embedder.bulk.failed is None
    # The same vectors as a child started the ordinary way, with its texts at once.
    documents = [embedder.spec.document_prefix + tool_document(r) for r in CATALOGUE]
    normal = embedder.bulk.run(documents, lambda n: None)
    assert index._snapshot.vectors is not None
    np.testing.assert_allclose(index._snapshot.vectors, normal, atol=1e-6)


def test_early_child_is_killed_when_too_few_documents_turn_out_new(
    tmp_path: Path, started: list[tuple[str, BulkJob | None]]
) -> None:
    # Every tool listed twice: twice as many tools as cached vectors (none), so the child starts early, but
    # only half of them are distinct, below the threshold: the child is killed and ONNX encodes in process.
    config = OptimizerConfig(bulk_process_min=len(CATALOGUE) + 1)
    index = ToolIndex(config, tmp_path, model_cache=Path(os.environ["VMCP_OPTIMIZER__MODEL_CACHE"]))
    stats = index.update(CATALOGUE + CATALOGUE)
    assert stats.embedded == len(CATALOGUE)
    assert [kind for kind, _ in started] == ["child", "prepare"]
    assert _exited(started[0][1])
    embedder = index.embedder
    assert isinstance(embedder, OnnxEmbedder) and isinstance(embedder.bulk, BulkEncoder)
    assert embedder.bulk.failed is None  # cancelled, not failed: the next large update takes the child
    documents = [embedder.spec.document_prefix + tool_document(r) for r in CATALOGUE]
    assert index._snapshot.vectors is not None
    np.testing.assert_allclose(index._snapshot.vectors, _in_process(embedder, documents), atol=1e-5)
    # A restart with every vector cached starts no child at all.
    ToolIndex(config, tmp_path, model_cache=Path(os.environ["VMCP_OPTIMIZER__MODEL_CACHE"])).update(CATALOGUE)
    assert len([kind for kind, _ in started if kind == "child"]) == 1


def test_waiting_child_exits_when_its_parent_closes_the_pipe(served: OnnxEmbedder) -> None:
    """A parent that dies before feeding its early child leaves no process behind."""
    assert isinstance(served.bulk, BulkEncoder)
    job = served.bulk._job()
    try:
        # glibc keeps the child's freed activations for its next batch (KEEP_FREED_MEMORY).
        environment = Path(f"/proc/{job.child.pid}/environ").read_bytes().split(b"\0")
        assert b"MALLOC_TRIM_THRESHOLD_=%d" % (1 << 30) in environment
        assert job.child.stdin is not None
        job.child.stdin.close()
        assert job.child.wait(timeout=120) == 1
        assert "the parent closed its pipe" in job.errors.read_text(encoding="utf-8")
    finally:
        job.cancel()
    assert _exited(job)


def test_a_job_removes_the_folders_of_killed_processes_and_keeps_live_ones(
    served: OnnxEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed with -9 mid-build leaves its job folder (the catalogue's texts): the next job removes it,
    but not the folder of a job that still runs."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"{FOLDER_PREFIX}{int(gone.stdout)}-abc"
    live = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-def"
    for folder in (left, live):
        folder.mkdir()
        (folder / "texts.json").write_text("[]", encoding="utf-8")
    assert isinstance(served.bulk, BulkEncoder)
    job = served.bulk._job()
    try:
        assert not left.exists() and live.exists()
        assert Path(job.texts).parent.name.startswith(f"{FOLDER_PREFIX}{os.getpid()}-")
    finally:
        job.cancel()


def test_child_module_starts_without_the_gateway_config() -> None:
    """The child's start-up before torch is on a cold build's critical path: importing bulk_embed must not
    bring in vmcp_opt.config (pydantic, jsonschema: ~0.2-0.3 s)."""
    code = "import sys, vmcp_opt.optimizer.bulk_embed; sys.exit(int('vmcp_opt.config' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_child_that_cannot_start_leaves_the_update_in_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = _embedder(bulk_process_min=2)
    assert isinstance(embedder.bulk, BulkEncoder)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.optimizer.bulk_embed"):
        embedder.bulk.start(new_documents=4)
    assert embedder.bulk.failed is not None and "cannot start the child" in embedder.bulk.failed
    assert "encoding in process instead" in caplog.text
    vectors = embedder.encode_documents(DOCUMENTS[:4])
    np.testing.assert_allclose(vectors, _in_process(embedder, DOCUMENTS[:4]), atol=1e-5)
