"""int8 versions of the exported fp32 graph (optimizer/onnx_export.py runs these in its child process).

- `quantise_smoothed` (served as `optimizer.precision: int8`): SmoothQuant, then ONNX Runtime's
  `quantize_dynamic` (per-channel int8 weights, one activation scale per tensor, int8 compute) on the fused
  QKV, the attention output and the first feed-forward MatMul of each layer; the second feed-forward MatMul
  (post-GELU input) is rewritten by `quantise_per_token` instead: one activation scale per token, which
  `quantize_dynamic` cannot express. Smoothing divides each input channel by
  s_j = max|X_j|^a / max|W_j|^(1-a) and multiplies the weight's rows by it, calibrated on texts shipped beside
  this module (smoothing_texts.txt), which takes BERT's outlier hidden dimensions out of the per-tensor
  activation scale: cosine to fp32 ~0.999 against ~0.993 unsmoothed, at ~0.45x fp32's query CPU.
- `quantise_blockwise` (`int8-blockwise`): each plain MatMul's weights become 8-bit blocks of 32 input rows
  run by `MatMulNBits` with `accuracy_level` 4 (activations quantised per block). Closest to fp32 (cosine
  ~0.9998), but this ONNX Runtime has no fast 8-bit kernel: ~fp32's speed.
- `quantise_dynamic`: `quantize_dynamic` on every op, unsmoothed. Fastest, but it loses 1.76 nDCG@10 on
  toolink; eval and bench keep it to compare.

eval/README.md ("int8 recipes", "SmoothQuant", "Per-token int8") has the measurements behind each choice.

A change to what these write is a new recipe: bump onnx_export.RECIPE_VERSION, which keys the cached exports and
the stamps of eval's cached document vectors (eval/embed.py, `EncoderStamp`), so both are made again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Input rows per weight block, and MatMulNBits' accuracy level 4: int8 compute on the CPU's integer dot
# products (VNNI / AMX here) with activations quantised per block.
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4


def quantise_blockwise(source: Path, target: Path) -> int:
    """Rewrite `source`'s MatMuls with a constant 2-D weight as 8-bit MatMulNBits; returns how many."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_8bits

    model = onnx.load(str(source))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    nodes = []
    rewritten = 0
    for node in graph.node:
        tensor = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if tensor is None or len(tensor.dims) != 2:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(tensor).astype(np.float32)
        rows, cols = weight.shape
        blocks = -(-rows // BLOCK_SIZE)
        weight = np.ascontiguousarray(np.pad(weight, ((0, blocks * BLOCK_SIZE - rows), (0, 0))))
        packed = np.zeros((cols, blocks, BLOCK_SIZE), dtype=np.uint8)
        scales = np.zeros((cols, blocks), dtype=np.float32)
        zero_points = np.zeros((cols, blocks), dtype=np.uint8)  # unused: symmetric
        quantize_matmul_8bits(packed, weight, scales, zero_points, BLOCK_SIZE, cols, rows, True)
        names = (f"{tensor.name}_q8", f"{tensor.name}_scales")
        graph.initializer.extend([numpy_helper.from_array(packed, names[0]), numpy_helper.from_array(scales, names[1])])
        graph.initializer.remove(tensor)
        del weights[tensor.name]
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *names],
                list(node.output),
                name=f"{node.name}_q8",
                domain="com.microsoft",
                K=rows,
                N=cols,
                bits=8,
                block_size=BLOCK_SIZE,
                accuracy_level=ACCURACY_LEVEL,
            )
        )
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return rewritten


def quantise_dynamic(
    source: Path, target: Path, *, op_types: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> None:
    """ONNX Runtime's `quantize_dynamic` with per-channel int8 weights, on `op_types` (every op when None)
    except the nodes named in `exclude`; 7-bit weights (`reduce_range`) where int8 products saturate
    (optimizer/cpu.py, `int8_products_saturate`)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vmcp_opt.optimizer.cpu import int8_products_saturate

    # Per-channel weights measured closest to fp32 (cosine ~0.98 against ~0.94 per tensor). The fused
    # operators have no shape inference, hence the default tensor type.
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=int8_products_saturate(),
        op_types_to_quantize=list(op_types) if op_types is not None else None,
        nodes_to_exclude=list(exclude),
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


# SmoothQuant's migration strength per operator (s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)): on the
# calibration texts a simulated dynamic quantisation of each MatMul erred least at 0.75-0.95 for the fused
# QKV and the first feed-forward layer, 0.55-0.75 for the attention output (eval/README.md).
SMOOTH_ALPHA = {"qkv": 0.8, "ffn1": 0.8, "attention_output": 0.7}
SMOOTHING_TEXTS = Path(__file__).with_name("smoothing_texts.txt")
# Each calibration text runs padded to this many tokens with the padding attended (mask all ones): the pad
# positions' activations widen the peaks of the outlier channels, which measured better than real tokens
# alone (cosine to fp32 0.99934 against 0.99842 over 300 eval queries; eval/README.md).
CALIBRATION_TOKENS = 128


def smoothing_texts() -> list[str]:
    """The calibration texts shipped beside this module: paragraphs, `#` lines are comments."""
    lines = SMOOTHING_TEXTS.read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.startswith("#"))
    return [paragraph.strip() for paragraph in text.split("\n\n") if paragraph.strip()]


def quantise_smoothed(source: Path, target: Path, tokenizer: Path, max_length: int, texts: Sequence[str]) -> None:
    """`smooth`, then `quantize_dynamic` (per-channel int8 weights) on the fused QKV, the attention output and
    the first feed-forward MatMul of each layer, and `quantise_per_token` on the second feed-forward MatMul
    (its input is GELU's output, where one scale per tensor left ~1e-3 relative error even smoothed)."""
    staged = target.with_name(f".{target.name}.smoothed.onnx")
    try:
        kept = smooth(source, staged, tokenizer, max_length, texts)
        quantise_per_token(staged, staged, kept)
        quantise_dynamic(staged, target, op_types=["MatMul", "Attention"])
    finally:
        staged.unlink(missing_ok=True)


def smooth(source: Path, target: Path, tokenizer: Path, max_length: int, texts: Sequence[str]) -> list[str]:
    """SmoothQuant in fp32 (the output equals `source`'s up to rounding): returns the names of the operators
    left unsmoothed, for the quantiser to keep in fp32 (the second feed-forward MatMuls).

    Per input channel j of the fused QKV, the attention output and the first feed-forward MatMul,
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) from the fp32 graph's activations over `texts`: W's rows are
    multiplied by s and X divided by it, which moves BERT's outlier hidden dimensions out of the one
    activation scale per tensor that dynamic quantisation uses. 1/s is an fp32 `Mul` on the input (a layer
    norm's output also feeds the residual), or, for the attention output, folded into the V columns of the
    layer's fused QKV weights and bias.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    roles = _roles(graph, weights)
    peaks = _input_peaks(model, [node for node, _ in roles], tokenizer, max_length, texts)
    producers = {output: node for node in graph.node for output in node.output}
    nodes: list[Any] = []
    divisors: dict[str, Any] = {}  # node name -> 1/s still to apply to its input
    for node, role in roles:
        if role == "ffn2":
            continue
        tensor = weights[node.input[1]]
        weight = numpy_helper.to_array(tensor).astype(np.float32)
        alpha = SMOOTH_ALPHA[role]
        peak = np.maximum(peaks[node.input[0]], 1e-5)
        scale = (peak**alpha / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(weight * scale[:, None], tensor.name))
        divisors[node.name] = (1.0 / scale).astype(np.float32)
    for node, role in roles:
        producer = producers.get(node.input[0])
        if role == "attention_output" and producer is not None and producer.op_type == "Attention":
            _fold_into_v(producer, divisors.pop(node.name), weights)
    for node in graph.node:
        if node.name in divisors:
            divisor = numpy_helper.from_array(divisors.pop(node.name), f"{node.name}_smooth")
            graph.initializer.append(divisor)
            smoothed = f"{node.input[0]}_smooth_{node.name}"
            nodes.append(onnx.helper.make_node("Mul", [node.input[0], divisor.name], [smoothed], name=divisor.name))
            node.input[0] = smoothed
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target))
    return [node.name for node, role in roles if role == "ffn2"]


def _roles(graph: Any, weights: dict[str, Any]) -> list[tuple[Any, str]]:
    """The operators with constant weights: fused attention ("qkv"), and each MatMul with a 2-D weight by its
    shape: square ("attention_output"), widening ("ffn1") or narrowing ("ffn2", the post-GELU input)."""
    roles = []
    for node in graph.node:
        if node.op_type in ("Attention", "MatMul") and not node.name:
            raise ValueError(f"an unnamed {node.op_type} operator: smoothing needs every operator named")
        if node.op_type == "Attention" and node.input[1] in weights:
            roles.append((node, "qkv"))
        elif node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in weights:
            dims = list(weights[node.input[1]].dims)
            if len(dims) == 2:
                rows, cols = dims
                roles.append((node, "attention_output" if rows == cols else "ffn1" if cols > rows else "ffn2"))
    return roles


def _input_peaks(
    model: Any, nodes: Sequence[Any], tokenizer: Path, max_length: int, texts: Sequence[str]
) -> dict[str, Any]:
    """max|X_j| per input channel of each node's first input, over every position of `texts` (each run alone,
    padded to `CALIBRATION_TOKENS`), from the fp32 graph with those inputs added as outputs."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto
    from tokenizers import Tokenizer

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(dict.fromkeys(node.input[0] for node in nodes))
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    encoder = Tokenizer.from_file(str(tokenizer))
    encoder.enable_truncation(max_length)
    padding = encoder.padding or {"pad_id": 0, "pad_token": "[PAD]"}
    encoder.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"], length=CALIBRATION_TOKENS)
    peaks: dict[str, Any] = {}
    for text in texts:
        ids = np.array([encoder.encode(text).ids], dtype=np.int64)
        values = session.run(names, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        for name, value in zip(names, values, strict=True):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def _fold_into_v(attention: Any, divisor: Any, weights: dict[str, Any]) -> None:
    """Divide the V part of a fused Attention's QKV weight columns and bias by `divisor`: its output is then
    the attention output divided by it, channel by channel (heads concatenate V's columns in order)."""
    from onnx import numpy_helper

    hidden = divisor.shape[0]
    for name in attention.input[1:3]:
        tensor = weights[name]
        value = numpy_helper.to_array(tensor).copy()
        value[..., 2 * hidden :] *= divisor
        tensor.CopyFrom(numpy_helper.from_array(value, name))


# GELU (erf form) is never below -0.16997: adding this makes its output non-negative, so each token's uint8
# codes span [0, its own maximum] with zero point 0 (the integer kernels take one zero point per tensor; a
# symmetric int8 scale would spend half its codes on negatives that reach only -0.17: 0.99884 mean cosine to
# fp32 against 0.99913 shifted, eval/README.md). The shift times the weight's column sums is a constant
# taken off the output.
GELU_FLOOR = 0.17
_GELU_OPS = ("Gelu", "BiasGelu")


def quantise_per_token(source: Path, target: Path, names: Sequence[str], weight_peak: int | None = None) -> None:
    """Rewrite the MatMuls named `names` (each with a constant 2-D weight, input from a GELU) as uint8
    activations with one scale per token (row) times int8 weights with one scale per output column:
    `MatMulIntegerToFloat`, ONNX Runtime's u8s8 integer GEMM, then the row scales. `source` may be `target`.

    `quantize_dynamic` gives a tensor one activation scale, so a single outlier token (BERT's [CLS] holds
    each text's largest values after GELU) coarsens every other token's codes; one scale per row does not,
    and makes a text's vector independent of the texts padded into its batch at these operators. `weight_peak`:
    the largest weight code, 127, or 63 where int8 products saturate (`int8_weight_peak`, the default)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from vmcp_opt.optimizer.cpu import int8_weight_peak

    peak_code = float(weight_peak if weight_peak is not None else int8_weight_peak())
    model = onnx.load(str(source))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    opset = next(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx"))
    wanted = set(names)
    replaced: set[str] = set()  # the fp32 weights the int8 codes replace
    nodes: list[Any] = []
    for node in graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        wanted.discard(node.name)
        tensor = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if tensor is None or len(tensor.dims) != 2:
            raise ValueError(f"{node.name}: per-token int8 needs a MatMul with a constant 2-D weight")
        producer = producers.get(node.input[0])
        if producer is None or producer.op_type not in _GELU_OPS:
            raise ValueError(f"{node.name}: per-token int8 needs a GELU input (its floor makes the codes unsigned)")
        replaced.add(tensor.name)
        weight = numpy_helper.to_array(tensor).astype(np.float32)
        column = (np.maximum(np.abs(weight).max(axis=0), 1e-12) / peak_code).astype(np.float32)
        codes = np.clip(np.round(weight / column), -peak_code, peak_code).astype(np.int8)
        # The correction uses the weights the kernel multiplies (dequantised), so it cancels the shift exactly.
        correction = (-GELU_FLOOR * (codes.astype(np.float32) * column).sum(axis=0)).astype(np.float32)
        constants = {
            "floor": np.array(GELU_FLOOR, np.float32),
            "levels": np.array(255.0, np.float32),
            "one": np.array(1.0, np.float32),
            "zero_u8": np.array(0, np.uint8),
            "zero_s8": np.array(0, np.int8),
            "codes": codes,
            "column_scale": column / np.float32(255.0),  # the row's peak / 255 comes after the GEMM
            "correction": correction,
        }
        if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
            constants["axes"] = np.array([-1], np.int64)
        graph.initializer.extend(
            numpy_helper.from_array(value, f"{node.name}_pt_{key}") for key, value in constants.items()
        )
        nodes.extend(_per_token_nodes(node.name, node.input[0], node.output[0], opset))
    if wanted:
        raise ValueError(f"no operator named {sorted(wanted)} to quantise per token")
    for name in replaced:
        graph.initializer.remove(weights[name])
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))


def _per_token_nodes(name: str, source: str, output: str, opset: int) -> list[Any]:
    """y = (codes(x + floor) x codes(W)) * column scale * row peak + correction, where each row's codes are
    round((x + floor) * 255 / row peak), row peak = max over the row of x + floor (> 0 after GELU)."""
    from onnx import helper

    def value(key: str) -> str:
        return f"{name}_pt_{key}"

    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        peak = helper.make_node("ReduceMax", [value("shifted"), value("axes")], [value("peak")], keepdims=1)
    else:
        peak = helper.make_node("ReduceMax", [value("shifted")], [value("peak")], axes=[-1], keepdims=1)
    peak.name = value("peak")
    return [
        helper.make_node("Add", [source, value("floor")], [value("shifted")], name=value("shift")),
        peak,
        helper.make_node("Div", [value("levels"), value("peak")], [value("inverse")], name=value("inverse")),
        helper.make_node("Mul", [value("shifted"), value("inverse")], [value("scaled")], name=value("scaled")),
        helper.make_node(
            "QuantizeLinear", [value("scaled"), value("one"), value("zero_u8")], [value("q")], name=value("quantise")
        ),
        helper.make_node(
            "MatMulIntegerToFloat",
            [value("q"), value("codes"), value("one"), value("column_scale"), value("zero_u8"), value("zero_s8")],
            [value("product")],
            name=value("gemm"),
            domain="com.microsoft",
        ),
        helper.make_node("Mul", [value("product"), value("peak")], [value("rows")], name=value("rows")),
        helper.make_node("Add", [value("rows"), value("correction")], [output], name=value("unshift")),
    ]
