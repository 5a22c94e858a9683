"""int8 versions of the exported fp32 graph (optimizer/onnx_export.py runs these in its child process).

- `quantise_blockwise` (served as `optimizer.precision: int8`): each plain MatMul's weights (attention
  output and both feed-forward layers) become 8-bit blocks of 32 input rows with a scale each, run by ONNX
  Runtime's `MatMulNBits` with `accuracy_level` 4 (int8 compute, the activations quantised per block of 32
  at run time). The fused attention's QKV weights stay fp32. Fine blocks keep the error small where
  `quantize_dynamic`'s one activation scale per tensor does not: cosine to fp32 ≈ 0.9998 against ≈ 0.99,
  and nDCG@10 within 0.5 of fp32 on every set of `vmcp eval run --dataset all` (eval/README.md).
- `quantise_dynamic`: ONNX Runtime's `quantize_dynamic` on every op (per-channel weights, one activation
  scale per tensor). Faster, but it loses 1.79 nDCG@10 on toolink; eval and bench keep it to compare.
"""

from __future__ import annotations

from pathlib import Path

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


def quantise_dynamic(source: Path, target: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights measured closest to fp32 (cosine ~0.98 against ~0.94 per tensor). The fused
    # operators have no shape inference, hence the default tensor type.
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
