"""ONNX files of an embedding model, exported once with torch in a separate process and cached by content.

The serving process never imports torch: `ensure_onnx_model` finds the exported files under
`<cache>/<model slug>-<hash of the model's files, the recipe and onnxruntime's version>/`, and when they are
missing runs `python -m vmcp_opt.optimizer.onnx_export` (torch, transformers and sentence-transformers load
in that child only) with a deadline. The child:

1. checks the model is one the lean encoder reproduces (BERT, absolute positions, GELU, mean pooling);
2. exports the transformer with mean pooling and L2 normalisation in the graph (inputs `input_ids`,
   `attention_mask`; output `sentence_embedding`), eager attention, so ONNX Runtime's fusions match;
3. applies ONNX Runtime's transformer optimiser (model_type bert: fused embedding layer norm, attention,
   bias-GELU, skip layer norms) -> `model.onnx`;
4. checks `model.onnx` against the torch model on a few texts (cosine >= `MIN_COSINE`, else it fails);
5. writes the int8 graphs beside it (optimizer/onnx_quantise.py): `model-int8.onnx` (SmoothQuant then
   dynamic int8, calibrated on the texts shipped with the package, with one activation scale per token on
   the second feed-forward MatMul; served by default: `optimizer.precision: int8`; cosine >=
   `int8_cosine_floor()` to torch, else the export fails), `model-int8-blockwise.onnx` (8-bit block-wise MatMul weights, the previous `int8`: closer to fp32,
   slower) and `model-int8-dynamic.onnx` (`quantize_dynamic` on every op, eval and bench only: it loses more
   than 0.5 nDCG@10 on some sets of `vmcp eval run --dataset all`, eval/README.md);
6. splits the fused operators whose CPU kernels run slower than their parts (`SPLIT_FUSIONS`) in every graph
   it wrote, and checks all of them against torch again.

Nothing downloads: the model comes from its package or directory (optimizer/embedding.py's registry).

The parent's side (find, export in a child) and the child's (export, optimise, check, split fusions) share the
file names, the cache's layout and the floors; the quantisation itself is optimizer/onnx_quantise.py, and which
exports a cache keeps (one per CPU kind, those a live process uses) optimizer/export_pruning.py.

Past ~450 lines: the export's naming, its checks against torch and where it is kept (the cache, else the data
directory's `models`) decide together whether an export on disk may be used; split, each would re-derive the name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from vmcp_opt.optimizer.export_pruning import METADATA_FILE, hold_export, prune_exports
from vmcp_opt.optimizer.model_registry import ModelError, ModelSpec, resolve_model
from vmcp_opt.optimizer.onnx_quantise import quantise_blockwise, quantise_dynamic, quantise_smoothed, smoothing_texts

log = logging.getLogger(__name__)

# Bump when the exported graphs change (onnx_quantise.py's included): the cache key includes it, so old exports are
# not reused, and eval's cached document vectors (eval/embed.py, `EncoderStamp`) are embedded again.
RECIPE_VERSION = 5
# ONNX Runtime fusions whose CPU kernels ran slower than their parts (ORT 1.32, one thread, a 29-token query,
# 2026-12-03: SkipLayerNormalization 114 µs against Add + LayerNormalization 31 µs a node, BiasGelu 103
# against Add + Gelu 95; the int8 query p50 0.83x): the export writes the parts (`split_fusions`) and the
# encoder's session is told not to fuse them back.
SPLIT_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")
FP32_FILE = "model.onnx"
Precision = Literal["fp32", "int8", "int8-blockwise", "int8-dynamic"]
FILES: dict[Precision, str] = {
    "fp32": FP32_FILE,
    "int8": "model-int8.onnx",
    "int8-blockwise": "model-int8-blockwise.onnx",
    "int8-dynamic": "model-int8-dynamic.onnx",
}
# The exported fp32 graph must give these cosines to the torch model, or the export fails.
MIN_COSINE = 0.9999
# The served int8 graph's floor to torch. With per-token int8 on the second feed-forward MatMul (recipe 4) it
# measures 0.99860 on the parity texts (0.99854 with the fusions split, recipe 5); on
# tests/test_lean_encoder.py's texts 0.99662 one text at a time and 0.99557 in one padded batch with a
# 256-token text (the rest of the graph takes one activation scale per batch), and >= 0.9977 to fp32 on 300
# eval queries, whose nDCG@10 stays within 0.13 of fp32 on every set (eval/README.md, "Per-token int8").
# 0.995 still refuses unsmoothed dynamic int8 (0.989); recipe 3 (second feed-forward fp32) measured 0.99932
# and the block-wise graph 0.99973.
MIN_COSINE_INT8 = 0.995
# The floor where the CPU's int8 products saturate (optimizer/cpu.py, `int8_products_saturate`: AVX2 without VNNI),
# whose graphs take 7-bit weights: on a Zen 2 the parity texts measured 0.9964 and tests/test_onnx_encoder.py's
# texts 0.9927 (0.9930 with 8-bit weights, whose sums saturate). nDCG@10 on such a CPU is not measured yet.
MIN_COSINE_INT8_SATURATING = 0.99


def int8_cosine_floor() -> float:
    """The served int8 graph's cosine floor to torch on this CPU."""
    from vmcp_opt.optimizer.cpu import int8_products_saturate

    return MIN_COSINE_INT8_SATURATING if int8_products_saturate() else MIN_COSINE_INT8


# Seconds the export child may take (torch import ~3 s, export ~2 s, optimisation ~2 s on an idle machine; the
# whole export with the int8 graphs and their calibration took 45 s on the loaded 2 cores, recipe 3).
EXPORT_TIMEOUT = 600.0
_PARITY_TEXTS = (
    "find the weather forecast for a city",
    "git_commit: Records changes to the repository. Parameters: repo_path, message",
    "a",
    "Create a calendar event with attendees, a location and a reminder before it starts. " * 6,
)


# Every CPU kind's int8 weight codes (optimizer/cpu.py, `int8_weight_peak`): a cache hosts of both kinds share
# holds an export of each, which pruning keeps. Each host exports its own kind only: the int8 graph is not a
# function of the peak alone (SmoothQuant calibrates on fp32 activations from this CPU's MLAS kernels, whose
# AVX-512 and AVX2 softmax round differently) and its cosine check runs on this CPU's int8 products.
WEIGHT_PEAKS = (127, 63)


def model_hash(spec: ModelSpec, weight_peak: int | None = None) -> str:
    """sha-256 of the model directory's files (names and bytes), the recipe, onnxruntime's version and the int8
    weight codes this CPU takes, or `weight_peak` (optimizer/cpu.py, `int8_weight_peak`: an export is one kind of
    CPU's)."""
    import onnxruntime

    from vmcp_opt.optimizer.cpu import int8_weight_peak

    recipe = f"recipe {RECIPE_VERSION} onnxruntime {onnxruntime.__version__}"
    peak = int8_weight_peak() if weight_peak is None else weight_peak
    digest = hashlib.sha256(f"{recipe}\n".encode() if peak == 127 else f"{recipe} int8 weights {peak}\n".encode())
    for path in sorted(p for p in spec.path.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(spec.path)).encode() + b"\0")
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def export_dir(spec: ModelSpec, cache: Path) -> Path:
    return cache / f"{spec.slug}-{model_hash(spec)}"


def ensure_onnx_model(
    spec: ModelSpec, cache: Path, precision: Precision = "fp32", *, fallback: Path | None = None
) -> Path:
    """The ONNX file of `spec` at `precision`, exported first (in a child process) when not cached; in `fallback`
    when `cache` cannot be written (`writable_cache`)."""
    directory = export_dir(spec, cache)
    path = directory / FILES[precision]
    if path.is_file() and hold_export(directory):  # marked in use for this process's life: pruning leaves it
        return path
    if (writable := writable_cache(spec, cache, fallback)) != cache:
        return ensure_onnx_model(spec, writable, precision)
    log.info("exporting %s to ONNX in a separate process (once; cached in %s)", spec.id, directory)
    run_export(spec, directory)
    if not hold_export(directory) or not path.is_file():
        raise ModelError(f"model {spec.id!r}: the ONNX export finished without {path.name}")
    tidy_cache(spec, directory)
    return path


def reexport(spec: ModelSpec, cache: Path, precision: Precision = "fp32", *, fallback: Path | None = None) -> Path:
    """Export `spec` again, its cached export (which did not load: truncated, bit rot) removed first, into a
    fresh directory as the first export does (in `fallback` when `cache` cannot be written); the ONNX file at
    `precision`."""
    directory = export_dir(spec, writable_cache(spec, cache, fallback))
    discard_export(directory)
    log.info("exporting %s to ONNX again in a separate process (cached in %s)", spec.id, directory)
    run_export(spec, directory)
    path = directory / FILES[precision]
    if not hold_export(directory) or not path.is_file():
        raise ModelError(f"model {spec.id!r}: the ONNX export finished without {path.name}")
    return path


def writable_cache(spec: ModelSpec, cache: Path, fallback: Path | None) -> Path:
    """`cache`, or `fallback` (the data directory's `models`) when no export can be written in `cache`: an image's
    cache on a read-only root filesystem, or another user's, holding only the build host's CPU kind's export.
    Exporting there keeps the gateway on ONNX Runtime (the torch encoder took 7 s and 380 MB more to load)."""
    if fallback is None or fallback == cache:
        return cache
    try:
        cache.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=f".{spec.slug}-probe-", dir=cache)).rmdir()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        log.info(
            "model cache %s cannot be written (%s): ONNX export of %s kept in %s", cache, reason, spec.id, fallback
        )
        return fallback
    return cache


def discard_export(directory: Path) -> None:
    """Remove an export: renamed first, so no reader sees it half deleted (a leftover of the rename is a
    staging name `prune_earlier_exports` removes later)."""
    if not directory.exists():
        return
    aside = directory.with_name(f".{directory.name}-discarded-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(directory, aside)
    shutil.rmtree(aside, ignore_errors=True)


def graph_problem(directory: Path) -> str | None:
    """Why a graph of the export in `directory` does not load in ONNX Runtime, or None when all do."""
    import onnxruntime

    for name in dict.fromkeys(FILES.values()):
        path = directory / name
        if not path.is_file():
            continue
        try:
            onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types: a truncated or corrupt file
            return f"{path} does not load ({exc})"
    return None


def tidy_cache(spec: ModelSpec, keep: Path) -> None:
    """`prune_earlier_exports`, each removal logged; a cache that cannot be tidied still serves: a warning."""
    try:
        for removed in prune_earlier_exports(spec, keep):
            log.info("removed %s: an earlier ONNX export of %s", removed, spec.id)
    except OSError as exc:
        log.warning("could not remove earlier ONNX exports of %s: %s", spec.id, exc)


def prune_earlier_exports(spec: ModelSpec, keep: Path) -> list[Path]:
    """Remove the other exports of `spec`'s model directory beside `keep` (made by an earlier recipe,
    onnxruntime or model files: ~230 MB each) but not the other CPU kind's current one (`WEIGHT_PEAKS`) nor one
    a live process uses, and the staging directories of exports that were killed (older than `EXPORT_TIMEOUT`);
    returns what was removed (optimizer/export_pruning.py)."""
    current = {keep.name} | {f"{spec.slug}-{model_hash(spec, peak)}" for peak in WEIGHT_PEAKS}
    return prune_exports(keep.parent, spec.slug, spec.path, current, EXPORT_TIMEOUT)


def run_export(spec: ModelSpec, directory: Path) -> None:
    """Export into `directory` through `python -m vmcp_opt.optimizer.onnx_export` (torch stays out of this
    process); the files appear all at once, so a concurrent reader never sees half an export."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    command = [sys.executable, "-m", "vmcp_opt.optimizer.onnx_export", str(spec.path), str(staging)]
    command += ["--parent", str(os.getpid())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT, check=False)
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise ModelError(f"model {spec.id!r}: ONNX export failed: {reason}")
        try:
            os.replace(staging, directory)
        except OSError:
            if not (directory / FP32_FILE).is_file():  # another process's export won the race: keep that one
                raise
    except subprocess.TimeoutExpired:
        raise ModelError(f"model {spec.id!r}: ONNX export took longer than {EXPORT_TIMEOUT:.0f} s") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export(model_dir: Path, out: Path) -> dict[str, Any]:
    """The child's work (torch imported here): export, optimise, check, quantise. Returns the metadata."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

    from vmcp_opt.optimizer.encoder import LeanEncoder

    torch.set_num_threads(os.cpu_count() or 1)
    model: Any = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True).eval()
    reference = LeanEncoder.from_sentence_transformer(model)
    if reference is None:
        raise ModelError(f"{model_dir}: not a BERT model with mean pooling; only those are exported to ONNX")
    transformer: Any = model[0].auto_model
    transformer.set_attn_implementation("eager")  # the graph ONNX Runtime's attention fusion recognises
    config = transformer.config
    raw = out / "raw.onnx"
    sample = torch.ones((2, 16), dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    torch.onnx.export(
        _pooled(transformer),
        (sample, sample),
        str(raw),
        dynamo=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
        opset_version=17,
    )
    fused = _optimise(raw, out / FP32_FILE, int(config.num_attention_heads), int(config.hidden_size))
    raw.unlink()
    tokenizer = model_dir / "tokenizer.json"
    max_length = int(model.max_seq_length)
    cosine = _parity(out / FP32_FILE, tokenizer, max_length, reference)
    if cosine < MIN_COSINE:
        raise ModelError(f"{model_dir}: the ONNX graph gives cosine {cosine:.6f} to torch (< {MIN_COSINE})")
    quantise_smoothed(out / FP32_FILE, out / FILES["int8"], tokenizer, max_length, smoothing_texts())
    quantise_blockwise(out / FP32_FILE, out / FILES["int8-blockwise"])
    quantise_dynamic(out / FP32_FILE, out / FILES["int8-dynamic"])
    split = {name: split_fusions(out / file) for name, file in FILES.items()}
    cosines = {name: _parity(out / file, tokenizer, max_length, reference) for name, file in FILES.items()}
    if cosines["int8"] < int8_cosine_floor():
        raise ModelError(
            f"{model_dir}: the int8 graph gives cosine {cosines['int8']:.6f} to torch (< {int8_cosine_floor()})"
        )
    return {
        "model_dir": str(model_dir),
        "recipe": RECIPE_VERSION,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "fused_operators": fused,
        "fused_operators_split": split,
        "min_cosine_to_torch": {name: round(value, 7) for name, value in cosines.items()},
        "numpy": np.__version__,
    }


def _optimise(source: Path, target: Path, heads: int, hidden: int) -> dict[str, int]:
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    optimised = optimizer.optimize_model(
        str(source),
        model_type="bert",
        num_heads=heads,
        hidden_size=hidden,
        optimization_options=FusionOptions("bert"),
        opt_level=0,  # the session applies ONNX Runtime's own graph optimisations at load
        use_gpu=False,
    )
    optimised.save_model_to_file(str(target))
    return {name: count for name, count in optimised.get_fused_operator_statistics().items() if count}


def split_fusions(path: Path) -> int:
    """Rewrite the graph at `path` with each SkipLayerNormalization as Adds then a LayerNormalization and each
    BiasGelu as an Add then a Gelu (the same values: fp32 outputs within 2e-7); returns how many were split."""
    import onnx

    model = onnx.load(str(path))
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    nodes: list[Any] = []
    split = 0
    for node in model.graph.node:
        parts = _parts(node, layer_norm=opset >= 17)  # LayerNormalization is an opset-17 operator
        split += parts is not None
        nodes.extend(parts if parts is not None else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return split


def _parts(node: Any, *, layer_norm: bool) -> list[Any] | None:
    """The unfused operators computing `node`, or None to keep it."""
    from onnx import helper

    name = node.name or node.output[0]
    inputs = list(node.input)
    if node.op_type == "BiasGelu":
        return [
            helper.make_node("Add", inputs[:2], [f"{name}/biased"], name=f"{name}/add_bias"),
            helper.make_node("Gelu", [f"{name}/biased"], [node.output[0]], name=f"{name}/gelu", domain=node.domain),
        ]
    # Its optional outputs (mean, inverse deviation, the sum) have no unfused form here: keep such a node.
    if node.op_type != "SkipLayerNormalization" or not layer_norm or any(node.output[1:]):
        return None
    epsilon = next((attribute.f for attribute in node.attribute if attribute.name == "epsilon"), 1e-12)
    parts, summed = [], inputs[0]
    if len(inputs) > 4 and inputs[4]:
        parts.append(helper.make_node("Add", [summed, inputs[4]], [f"{name}/biased"], name=f"{name}/add_bias"))
        summed = f"{name}/biased"
    parts.append(helper.make_node("Add", [summed, inputs[1]], [f"{name}/summed"], name=f"{name}/add_skip"))
    norm_inputs = [f"{name}/summed", *inputs[2:4]]
    parts.append(
        helper.make_node(
            "LayerNormalization", norm_inputs, [node.output[0]], name=f"{name}/norm", axis=-1, epsilon=epsilon
        )
    )
    return parts


def _parity(path: Path, tokenizer: Path, max_length: int, reference: Any) -> float:
    """The smallest cosine between the ONNX graph (with the tokenizer the gateway loads) and the lean torch
    encoder over the parity texts, each alone and all in one padded batch."""
    import numpy as np

    from vmcp_opt.optimizer.onnx_encoder import OnnxEncoder

    encoder = OnnxEncoder(path, tokenizer, max_length, threads=1)
    expected = reference.encode(list(_PARITY_TEXTS))
    batch = encoder.encode_ids(encoder.tokenize(list(_PARITY_TEXTS)))  # padded, whatever `encode` groups
    alone = np.vstack([encoder.encode([text]) for text in _PARITY_TEXTS])
    return float(min((batch * expected).sum(axis=1).min(), (alone * expected).sum(axis=1).min()))


def _pooled(transformer: Any) -> Any:
    """The transformer, then mean pooling over real tokens and L2 normalisation, as one module to export."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return Pooled().eval()


def main(argv: list[str] | None = None) -> int:
    """The export child: `python -m vmcp_opt.optimizer.onnx_export MODEL_DIR OUT_DIR`."""
    parser = argparse.ArgumentParser(description="Export a sentence-transformers BERT model to ONNX.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--parent", type=int, help="end, removing OUT_DIR, when this process (the gateway) dies")
    args = parser.parse_args(argv)
    if args.parent is not None:
        _end_with_parent(args.parent, args.out)
    logging.basicConfig(level=logging.WARNING)
    try:
        metadata = _export(args.model_dir, args.out)
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    (args.out / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return 0


def _end_with_parent(parent: int, out: Path) -> None:
    """On Linux, end when the process that started this export dies (a gateway stopped during its first start),
    removing the half-made export, instead of running on for a minute and leaving ~230 MB behind: the kernel
    sends SIGTERM at the parent's death (PR_SET_PDEATHSIG). Elsewhere the staging directory is removed by the
    next export (`prune_earlier_exports`)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    def end(*_: object) -> None:
        shutil.rmtree(out, ignore_errors=True)
        os._exit(1)

    signal.signal(signal.SIGTERM, end)
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request was in place
        end()


def export_for(
    model: str, cache: Path, *, force: bool = False, fallback: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """`vmcp models export`: the cached export of `model` (made now if missing or, with `force`, in any case;
    in `fallback` when `cache` cannot be written) and its metadata, every graph in it checked to load; one that
    does not is exported again. The model's earlier exports still in the cache (left by a version that did not
    tidy up) are removed, each logged."""
    spec = resolve_model(model)
    if force:
        path = reexport(spec, cache, fallback=fallback)
    else:
        path = ensure_onnx_model(spec, cache, fallback=fallback)
        problem = graph_problem(path.parent)
        if problem is not None:
            log.warning("%s; exporting it again", problem)
            path = reexport(spec, cache, fallback=fallback)
    problem = graph_problem(path.parent)
    if problem is not None:
        raise ModelError(f"model {spec.id!r}: {problem} after a fresh export")
    tidy_cache(spec, path.parent)
    metadata_file = path.parent / METADATA_FILE
    metadata = json.loads(metadata_file.read_text(encoding="utf-8")) if metadata_file.is_file() else {}
    return path, metadata


if __name__ == "__main__":
    sys.exit(main())
