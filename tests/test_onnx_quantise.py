"""Per-token int8 (optimizer/onnx_quantise.py, `quantise_per_token`) on small real graphs run by ONNX Runtime:
GELU then a MatMul, the shape of BERT's second feed-forward layer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vmcp_opt.optimizer.onnx_quantise import quantise_dynamic, quantise_per_token

HIDDEN, WIDE = 24, 96


def _graph(path: Path, weight: np.ndarray, *, activation: str = "Gelu", opset: int = 17) -> None:
    """x -> activation -> MatMul(weight) named "ffn2" -> y, saved to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    domain = "com.microsoft" if activation == "Gelu" else ""
    nodes = [
        helper.make_node(activation, ["x"], ["h"], name="act", domain=domain),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="ffn2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, WIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, HIDDEN])],
        [numpy_helper.from_array(weight, "w")],
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return np.asarray(0.5 * x * (1 + erf(x / math.sqrt(2))), dtype=np.float32)


@pytest.fixture
def weight() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 0.1, (WIDE, HIDDEN)).astype(np.float32)


@pytest.mark.parametrize("opset", [17, 18])
def test_per_token_int8_matches_fp32_within_its_quantisation_error(
    tmp_path: Path, weight: np.ndarray, opset: int
) -> None:
    _graph(tmp_path / "fp32.onnx", weight, opset=opset)
    quantise_per_token(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", ["ffn2"])
    x = np.random.default_rng(4).normal(0, 1.5, (2, 7, WIDE)).astype(np.float32)
    expected = _gelu(x) @ weight
    got = _run(tmp_path / "int8.onnx", x)
    assert got.shape == expected.shape
    # 8 bits each side: ~1% of the output's range; an error in the shift's correction or the scales is far more
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()
    assert not np.allclose(got, expected, atol=1e-7)  # it did quantise


def test_a_token_s_output_does_not_depend_on_an_outlier_token_beside_it(tmp_path: Path, weight: np.ndarray) -> None:
    """One scale per row: adding a token 50x larger than the rest leaves the others' outputs as they were;
    `quantize_dynamic`'s one scale per tensor coarsens them all (the [CLS] outlier of BERT's GELU output)."""
    _graph(tmp_path / "fp32.onnx", weight)
    quantise_per_token(tmp_path / "fp32.onnx", tmp_path / "per_token.onnx", ["ffn2"])
    quantise_dynamic(tmp_path / "fp32.onnx", tmp_path / "per_tensor.onnx", op_types=["MatMul"])
    rows = np.random.default_rng(5).normal(0, 1.0, (1, 6, WIDE)).astype(np.float32)
    with_outlier = np.concatenate([np.full((1, 1, WIDE), 50.0, np.float32), rows], axis=1)
    expected = _gelu(rows) @ weight
    alone = _run(tmp_path / "per_token.onnx", rows)
    beside = _run(tmp_path / "per_token.onnx", with_outlier)[:, 1:]
    assert np.array_equal(alone, beside)
    per_tensor = _run(tmp_path / "per_tensor.onnx", with_outlier)[:, 1:]
    assert np.abs(per_tensor - expected).max() > 5 * np.abs(beside - expected).max()


def test_a_matmul_whose_input_is_not_a_gelu_is_refused(tmp_path: Path, weight: np.ndarray) -> None:
    _graph(tmp_path / "relu.onnx", weight, activation="Relu")
    with pytest.raises(ValueError, match="needs a GELU input"):
        quantise_per_token(tmp_path / "relu.onnx", tmp_path / "out.onnx", ["ffn2"])
    assert not (tmp_path / "out.onnx").exists()


def test_an_unknown_operator_name_is_an_error(tmp_path: Path, weight: np.ndarray) -> None:
    _graph(tmp_path / "fp32.onnx", weight)
    with pytest.raises(ValueError, match="no operator named"):
        quantise_per_token(tmp_path / "fp32.onnx", tmp_path / "out.onnx", ["ffn9"])
