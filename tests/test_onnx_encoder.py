"""The ONNX Runtime encoder (optimizer/onnx_encoder.py): the same vectors as the torch encoder, a real gateway
that serves find_tool with it and never loads torch, and the fallback to torch when ONNX cannot load.

The model is exported once per machine (`ensure_onnx_model` into the default cache, which `scripts/setup.sh`
fills with `vmcp models export`); tests/conftest.py's `real_export` makes it when it is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, torch_mapped, write_config
from tests.test_lean_encoder import TEXTS
from vmcp_opt.optimizer.batching import low_padding_groups
from vmcp_opt.optimizer.embedding import load_embedder
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model
from vmcp_opt.optimizer.onnx_encoder import OnnxEmbedder, OnnxEncoder
from vmcp_opt.optimizer.onnx_export import (
    EXPORT_TIMEOUT,
    FILES,
    SPLIT_FUSIONS,
    ensure_onnx_model,
    graph_problem,
    int8_cosine_floor,
    prune_earlier_exports,
    split_fusions,
)
from vmcp_opt.optimizer.onnx_quantise import smooth, smoothing_texts
from vmcp_opt.optimizer.side_thread import SideThread


def model_cache() -> Path:
    """The cache every gateway of the test run uses (tests/conftest.py)."""
    return Path(os.environ["VMCP_OPTIMIZER__MODEL_CACHE"])


@pytest.fixture(scope="session")
def onnx_model(real_export: Path) -> Path:
    """The fp32 graph of the export every test shares (tests/conftest.py `real_export`)."""
    return ensure_onnx_model(resolve_model(DEFAULT_MODEL), model_cache())


@pytest.fixture(scope="module")
def lean() -> Any:
    from sentence_transformers import SentenceTransformer

    from vmcp_opt.optimizer.encoder import LeanEncoder

    spec = resolve_model(DEFAULT_MODEL)
    model = SentenceTransformer(str(spec.path), device="cpu", local_files_only=True)
    model.max_seq_length = spec.max_seq_length
    return LeanEncoder.from_sentence_transformer(model)


@pytest.fixture(scope="module")
def encoder(onnx_model: Path) -> OnnxEncoder:
    spec = resolve_model(DEFAULT_MODEL)
    return OnnxEncoder(onnx_model, spec.path / "tokenizer.json", spec.max_seq_length)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


def test_onnx_vectors_match_the_torch_encoder_one_text_at_a_time(encoder: OnnxEncoder, lean: Any) -> None:
    expected = lean.encode(TEXTS)
    alone = np.vstack([encoder.encode([text]) for text in TEXTS])
    assert alone.dtype == np.float32
    assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    assert _cosines(alone, expected).min() >= 0.9999


def test_onnx_vectors_match_the_torch_encoder_in_padded_batches_and_bulk(encoder: OnnxEncoder, lean: Any) -> None:
    expected = lean.encode(TEXTS)
    assert _cosines(encoder.encode_ids(encoder.tokenize(TEXTS)), expected).min() >= 0.9999
    many = TEXTS * 100  # past PARALLEL_MIN_TEXTS: batches run on two threads
    bulk = encoder.encode_bulk(many, batch_size=8, threads=2)
    assert _cosines(bulk, np.tile(expected, (100, 1))).min() >= 0.9999


def test_a_request_runs_in_groups_of_near_equal_length_with_the_vectors_of_one_padded_batch(
    encoder: OnnxEncoder,
) -> None:
    request = "find the weather in Paris and then book a table for two at an Italian restaurant near the station " * 3
    texts = [request, "find the weather in Paris", "book a table for two", "at an Italian restaurant"]
    lengths = [len(ids) for ids in encoder.tokenize(texts)]
    groups = low_padding_groups(lengths)
    assert sorted(row for group in groups for row in group) == [0, 1, 2, 3]
    assert [0] in groups  # the long request runs alone instead of padding the three intents to its length
    for group in groups:
        assert max(lengths[row] for row in group) * len(group) <= 1.25 * sum(lengths[row] for row in group)
    grouped = encoder.encode(texts)
    assert _cosines(grouped, encoder.encode_ids(encoder.tokenize(texts))).min() >= 0.99999


def test_a_request_s_groups_split_over_a_helper_thread_give_the_one_thread_vectors(onnx_model: Path) -> None:
    """About half of a request's groups run on a helper thread; the rows are those of running them in turn,
    also when several requests at once contend for the helper (a busy helper is not waited for)."""
    spec = resolve_model(DEFAULT_MODEL)
    two = OnnxEncoder(onnx_model, spec.path / "tokenizer.json", spec.max_seq_length)
    two.side = SideThread("onnx-groups", enabled=True)
    one = OnnxEncoder(onnx_model, spec.path / "tokenizer.json", spec.max_seq_length)
    one.side = SideThread("unused", enabled=False)
    requests = [[TEXTS[i] * 4, TEXTS[i], TEXTS[(i + 1) % len(TEXTS)] * 2, "a short intent"] for i in range(len(TEXTS))]
    assert all(len(low_padding_groups([len(ids) for ids in two.tokenize(texts)])) >= 2 for texts in requests)
    expected = [one.encode(texts) for texts in requests]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(two.encode, requests * 3))
    for got, want in zip(together, expected * 3, strict=True):
        assert np.array_equal(got, want)
    assert any(thread.name.startswith("onnx-groups") for thread in threading.enumerate())


@pytest.mark.parametrize("precision", ["int8", "int8-blockwise"])
def test_the_int8_graphs_stay_within_their_cosine_floor_of_the_torch_fp32_encoder(
    onnx_model: Path, lean: Any, precision: Any
) -> None:
    spec = resolve_model(DEFAULT_MODEL)
    int8 = ensure_onnx_model(spec, model_cache(), precision)
    assert int8.parent == onnx_model.parent and int8.stat().st_size < onnx_model.stat().st_size
    encoder = OnnxEncoder(int8, spec.path / "tokenizer.json", spec.max_seq_length)
    expected = lean.encode(TEXTS)
    alone = np.vstack([encoder.encode([text]) for text in TEXTS])
    assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    assert _cosines(alone, expected).min() >= int8_cosine_floor()
    assert _cosines(encoder.encode(TEXTS), expected).min() >= int8_cosine_floor()


def test_the_served_int8_graph_runs_integer_kernels_with_per_token_scales_on_the_second_feed_forward_layer(
    onnx_model: Path,
) -> None:
    import onnx

    graph = onnx.load(str(ensure_onnx_model(resolve_model(DEFAULT_MODEL), model_cache(), "int8"))).graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    ops = [node.op_type for node in graph.node]
    assert ops.count("QAttention") == 6 and "Attention" not in ops
    assert ops.count("MatMulInteger") == 12  # attention output and first feed-forward layer, 6 layers
    assert not [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    per_token = [weights[node.input[1]] for node in graph.node if node.op_type == "MatMulIntegerToFloat"]
    assert [(list(w.dims), w.data_type) for w in per_token] == [([1536, 384], onnx.TensorProto.INT8)] * 6
    assert ops.count("ReduceMax") == 6  # one activation scale per token
    assert ops.count("Mul") >= 12  # the smoothing divisors of the QKV and first feed-forward inputs


def test_every_exported_graph_keeps_its_layer_norms_and_gelus_apart_through_the_session_s_optimiser(
    onnx_model: Path, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    def session_ops(path: Path, disabled: list[str]) -> list[str]:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return [node.op_type for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]

    for file in FILES.values():
        ops = [node.op_type for node in onnx.load(str(onnx_model.parent / file)).graph.node]
        assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops, file
        assert ops.count("LayerNormalization") == 12 and ops.count("Gelu") == 6, file
    served = ensure_onnx_model(resolve_model(DEFAULT_MODEL), model_cache(), "int8")
    kept = session_ops(served, list(SPLIT_FUSIONS))  # as OnnxEncoder opens it
    assert "SkipLayerNormalization" not in kept and kept.count("LayerNormalization") == 12
    # Without the names, ONNX Runtime fuses them back: they must be names this version knows.
    assert session_ops(served, []).count("SkipLayerNormalization") == 12


def test_splitting_fused_operators_keeps_their_values(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    hidden, wide = 8, 32

    def constant(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node(
            "SkipLayerNormalization",
            ["x", "skip", "gamma", "beta", "bias"],
            ["normed"],
            domain="com.microsoft",
            epsilon=1e-12,
            name="skip_norm",
        ),
        helper.make_node("MatMul", ["normed", "widen"], ["wide"], name="widen"),
        helper.make_node("BiasGelu", ["wide", "gelu_bias"], ["y"], domain="com.microsoft", name="bias_gelu"),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 5, hidden]) for name in ("x", "skip")]
    weights = [constant("gamma", hidden), constant("beta", hidden), constant("bias", hidden)]
    weights += [constant("widen", hidden, wide), constant("gelu_bias", wide)]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, wide])
    graph = helper.make_graph(nodes, "fused", inputs, [output], weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(tmp_path / "fused.onnx"))
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(tmp_path / "split.onnx"))

    assert split_fusions(tmp_path / "split.onnx") == 2
    assert [node.op_type for node in onnx.load(str(tmp_path / "split.onnx")).graph.node] == [
        "Add",
        "Add",
        "LayerNormalization",
        "MatMul",
        "Add",
        "Gelu",
    ]
    feeds = {name: rng.normal(size=(2, 5, hidden)).astype(np.float32) for name in ("x", "skip")}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fused, split = (
        ort.InferenceSession(str(tmp_path / name), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for name in ("fused.onnx", "split.onnx")
    )
    assert np.allclose(fused, split, atol=1e-5)


def test_smoothing_alone_leaves_the_fp32_graph_s_vectors_unchanged(onnx_model: Path, tmp_path: Path) -> None:
    spec = resolve_model(DEFAULT_MODEL)
    tokenizer = spec.path / "tokenizer.json"
    texts = smoothing_texts()
    assert len(texts) > 100
    kept = smooth(onnx_model, tmp_path / "smoothed.onnx", tokenizer, spec.max_seq_length, texts[:20])
    assert len(kept) == 6
    smoothed = OnnxEncoder(tmp_path / "smoothed.onnx", tokenizer, spec.max_seq_length)
    fp32 = OnnxEncoder(onnx_model, tokenizer, spec.max_seq_length)
    assert _cosines(smoothed.encode(TEXTS), fp32.encode(TEXTS)).min() >= 0.99999


def test_an_export_already_cached_is_reused(onnx_model: Path) -> None:
    before = onnx_model.stat().st_mtime_ns
    assert ensure_onnx_model(resolve_model(DEFAULT_MODEL), model_cache()) == onnx_model
    assert onnx_model.stat().st_mtime_ns == before


def test_an_export_removes_the_same_model_s_earlier_exports_and_killed_staging_only(tmp_path: Path) -> None:
    import json

    spec = resolve_model(DEFAULT_MODEL)

    def export(name: str, model_dir: Path | None) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "model.onnx").write_bytes(b"onnx")
        if model_dir is not None:
            (directory / "export.json").write_text(json.dumps({"model_dir": str(model_dir)}), encoding="utf-8")
        return directory

    keep = export(f"{spec.slug}-{'a' * 16}", spec.path)
    earlier = export(f"{spec.slug}-{'b' * 16}", spec.path)
    other_model = export(f"{spec.slug}-{'c' * 16}", tmp_path / "another-model")
    unreadable = export(f"{spec.slug}-{'d' * 16}", None)
    longer_slug = export(f"{spec.slug}-int8-{'e' * 16}", spec.path)
    killed = export(f".{spec.slug}-{'b' * 16}-k1ll3d00", None)
    old = killed.stat().st_mtime - EXPORT_TIMEOUT - 60
    os.utime(killed, (old, old))
    running = export(f".{spec.slug}-{'a' * 16}-runn1ng0", None)

    assert sorted(prune_earlier_exports(spec, keep)) == sorted([earlier, killed])
    assert not earlier.exists() and not killed.exists()
    assert all(path.is_dir() for path in (keep, other_model, unreadable, longer_slug, running))


def test_onnx_int8_is_the_default_encoder_and_keeps_the_query_prefix_path(onnx_model: Path) -> None:
    embedder = load_embedder(DEFAULT_MODEL, progress=False, model_cache=model_cache())
    assert isinstance(embedder, OnnxEmbedder) and embedder.kind == "onnx-int8"
    assert embedder.encode_queries([]).shape == (0, 384)
    assert embedder.encode_documents(["a", "b"]).shape == (2, 384)


def test_fp32_stays_selectable(onnx_model: Path) -> None:
    embedder = load_embedder(DEFAULT_MODEL, precision="fp32", progress=False, model_cache=model_cache())
    assert isinstance(embedder, OnnxEmbedder) and embedder.kind == "onnx"
    fp32 = OnnxEncoder(onnx_model, embedder.spec.path / "tokenizer.json", embedder.spec.max_seq_length)
    assert np.array_equal(embedder.encode_queries(["add two numbers"]), fp32.encode(["add two numbers"]))


def test_an_unusable_model_cache_falls_back_to_torch_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache directory should be", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.optimizer.embedding"):
        embedder = load_embedder(DEFAULT_MODEL, progress=False, model_cache=not_a_directory / "models")
    assert embedder.kind == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "using the torch encoder" in warnings[0]


def test_models_export_command_names_the_cached_file_and_removes_a_leftover(onnx_model: Path) -> None:
    import json

    # An earlier recipe's export of the same model, left by a version that did not tidy the cache.
    leftover = onnx_model.parent.parent / f"{resolve_model(DEFAULT_MODEL).slug}-{'0' * 16}"
    leftover.mkdir()
    model_dir = str(resolve_model(DEFAULT_MODEL).path)
    (leftover / "export.json").write_text(json.dumps({"model_dir": model_dir}), encoding="utf-8")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vmcp_opt", "models", "export"], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert str(onnx_model) in done.stdout.replace("\n", "")
        assert not leftover.exists()
        assert leftover.name in done.stderr.replace("\n", "")
    finally:
        shutil.rmtree(leftover, ignore_errors=True)


@pytest.fixture
def gateway_config(tmp_path: Path, onnx_model: Path) -> Path:
    config = {
        "backends": [
            {"name": "time", "command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
            demo_backend("notes"),
        ],
        "optimizer": {"enabled": True, "encoder": "onnx", "index_dir": str(tmp_path / "index")},
    }
    return write_config(tmp_path, config)


async def best_tool_once_vectors_are_ready(url: str, query: str) -> str:
    async with Client(url) as client:
        with anyio.fail_after(120):
            while True:
                answer = (await client.call_tool("find_tool", {"query": query})).structured_content
                assert answer is not None
                if answer["ranking"] == "hybrid":
                    return str(answer["tools"][0]["name"])
                await anyio.sleep(0.3)


@pytest.mark.slow
def test_the_gateway_serves_find_tool_on_onnx_without_loading_torch(gateway_config: Path) -> None:
    with running_gateway(gateway_config) as gateway:
        best = anyio.run(best_tool_once_vectors_are_ready, gateway.url, "what time is it in Tokyo")
        assert best == "time_get_current_time"
        assert torch_mapped(gateway.proc.pid) is not True  # None off Linux, where /proc has no maps
        assert "loaded on ONNX Runtime (int8)" in gateway.output()
        assert "using the torch encoder" not in gateway.output()


def _without_cache_override() -> dict[str, str]:
    """The environment without the test run's `VMCP_OPTIMIZER__MODEL_CACHE`, which would win over the file's."""
    return {k: v for k, v in os.environ.items() if k != "VMCP_OPTIMIZER__MODEL_CACHE"}


def _copied_export(onnx_model: Path, cache: Path, truncated: str) -> Path:
    """A copy of the cached export in `cache`, with the graph `truncated` cut short (a bad copy, a full disk)."""
    directory = cache / onnx_model.parent.name
    shutil.copytree(onnx_model.parent, directory)
    os.truncate(directory / truncated, 1_000_000)
    return directory


@pytest.mark.slow
def test_a_cached_graph_that_does_not_load_is_exported_again_not_left_to_torch(
    onnx_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _copied_export(onnx_model, tmp_path, FILES["int8"])
    with caplog.at_level(logging.WARNING):
        embedder = load_embedder(DEFAULT_MODEL, progress=False, model_cache=tmp_path)
    assert isinstance(embedder, OnnxEmbedder) and embedder.kind == "onnx-int8"
    assert "does not load" in caplog.text and "exporting it again" in caplog.text
    assert "using the torch encoder" not in caplog.text
    assert graph_problem(directory) is None


@pytest.mark.slow
def test_models_export_checks_every_cached_graph_and_exports_a_broken_one_again(
    onnx_model: Path, tmp_path: Path
) -> None:
    directory = _copied_export(onnx_model, tmp_path / "cache", FILES["int8-dynamic"])
    config = write_config(tmp_path, {"backends": [], "optimizer": {"model_cache": str(tmp_path / "cache")}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "models", "export", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT,
        env=_without_cache_override(),
    )
    assert done.returncode == 0, done.stderr
    assert "model-int8-dynamic.onnx does not load" in done.stderr.replace("\n", "")
    assert str(directory / FILES["fp32"]) in done.stdout.replace("\n", "")
    assert graph_problem(directory) is None


def test_a_model_cache_that_is_a_file_is_a_validate_error_naming_the_setting(tmp_path: Path) -> None:
    a_file = tmp_path / "hostname"
    a_file.write_text("not a directory", encoding="utf-8")
    config = write_config(tmp_path, {"backends": [], "optimizer": {"model_cache": str(a_file)}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_without_cache_override(), "COLUMNS": "400"},
    )
    assert done.returncode != 0, done.stdout
    assert f"optimizer.model_cache: {a_file} is a file, not a directory" in (done.stdout + done.stderr)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_an_export_whose_gateway_dies_ends_and_removes_its_half_made_files(tmp_path: Path) -> None:
    """A gateway stopped (here: killed) during its first start's export leaves no export running on and no
    staging directory behind."""
    import psutil

    cache = tmp_path / "cache"
    code = (
        "import sys; from pathlib import Path; "
        "from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model; "
        "from vmcp_opt.optimizer.onnx_export import export_dir, run_export; "
        "spec = resolve_model(DEFAULT_MODEL); run_export(spec, export_dir(spec, Path(sys.argv[1])))"
    )
    gateway = subprocess.Popen([sys.executable, "-c", code, str(cache)])
    try:
        parent = psutil.Process(gateway.pid)
        children: list[psutil.Process] = []
        for _ in range(600):  # the export child appears once the model's files are hashed
            children = parent.children()
            if children and any(cache.glob(".*")):
                break
            threading.Event().wait(0.1)
        assert children, "no export child started"
        gateway.kill()
        gateway.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, "the export ran on after its parent died"
        assert list(cache.iterdir()) == []  # the staging directory went with it
    finally:
        if gateway.poll() is None:
            gateway.kill()
