"""The vector arm's int8 first pass: fewer bytes read per search, the same results as float32.

An exact search reads every stored float32 vector once per search (15 MB at 10k tools, 147 MB at 100k),
and the query embedding that runs just before has pushed them out of the cache. This pass scores int8 copies
of the vectors instead (a quarter of the bytes) with ONNX Runtime's `MatMulIntegerToFloat`, whose packed
int8 kernels are several times faster than a float32 scan, then scores exactly, in float32, every row that
could still be among the best `depth`.

Why the rows it keeps hold the exact best `depth`: with the query and each row quantised as q' and v',
|q.v - q'.v'| <= |q - q'| |v| + |q'| |v - v'| <= E (Cauchy-Schwarz), one bound per query over all rows. The
`depth`-th largest approximate score s means `depth` rows score at least s - E exactly, so a row among the
exact best `depth` scores at least s - E exactly, and at least s - 2E approximately. Every row at or above
s - 2E is rescored; the ranking is the float32 one (to float rounding: scores within ~1e-7 of FAISS's).

The model is a single ONNX node written here as protobuf bytes: `onnx` costs a second and 15 MB to import,
and the gateway never imports it (it is read by the export only).
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

# ONNX TensorProto data types.
_FLOAT, _UINT8, _INT8 = 1, 2, 3
_ZERO_POINT = 128  # the query is shifted to uint8: MLAS's fast int8 kernels take uint8 x int8
# Float rounding of the approximate scores (int32 sums, then two float32 products) and of the exact ones.
_ROUNDING = 1e-5
_BLOCK_ROWS = 8192


class Int8FirstPass:
    """Int8 copies of (rows, dims) float32 vectors, L2-normalised or zero, and the session that scores them."""

    def __init__(self, vectors: np.ndarray) -> None:
        import onnxruntime as ort

        from vmcp_opt.optimizer.cpu import int8_weight_peak

        rows, dims = vectors.shape
        # 63 where the CPU's u8 x s8 products saturate (optimizer/cpu.py): there a saturated sum broke the error
        # bound, and rows that belonged in the top were never rescored. The bound below follows the codes' error.
        peak = np.float32(int8_weight_peak())
        codes_t = np.empty((dims, rows), dtype=np.int8)  # the model's layout: one column per row
        scale = np.empty(rows, dtype=np.float32)
        row_norm = row_error = 0.0
        for start in range(0, rows, _BLOCK_ROWS):  # bounded temporaries at 100k rows and more
            block = vectors[start : start + _BLOCK_ROWS]
            block_scale = np.maximum(np.abs(block).max(axis=1), 1e-30).astype(np.float32) / peak
            codes = np.rint(block / block_scale[:, None]).astype(np.int8)
            residual = block - codes.astype(np.float32) * block_scale[:, None]
            codes_t[:, start : start + len(block)] = codes.T
            scale[start : start + len(block)] = block_scale
            row_norm = max(row_norm, float(np.linalg.norm(block, axis=1).max(initial=0.0)))
            row_error = max(row_error, float(np.linalg.norm(residual, axis=1).max(initial=0.0)))
        self._row_norm, self._row_error = row_norm, row_error
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # runs on the searching thread, as FAISS's kernel did
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = scores_model(codes_t, scale)
        self._session: Any
        try:  # from a file: a session made from bytes keeps them for its lifetime (a second copy of the codes)
            with tempfile.NamedTemporaryFile(suffix=".onnx") as file:
                file.writelines(model)
                file.flush()
                self._session = ort.InferenceSession(file.name, options, providers=["CPUExecutionProvider"])
        except OSError:  # no writable temporary directory
            self._session = ort.InferenceSession(b"".join(model), options, providers=["CPUExecutionProvider"])

    def scores(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(queries, rows) approximate inner products, and each query's bound E on their error."""
        scale = np.float32(max(float(np.abs(queries).max(initial=0.0)), 1e-30) / 127)
        codes = np.rint(queries / scale)
        rounded = codes * scale
        query_error = np.linalg.norm(queries - rounded, axis=1)
        query_norm = np.linalg.norm(rounded, axis=1)
        feed = {"a": (codes + _ZERO_POINT).astype(np.uint8), "a_scale": np.array([scale], dtype=np.float32)}
        approximate: np.ndarray = self._session.run(None, feed)[0]
        bound = query_error * self._row_norm + query_norm * self._row_error + _ROUNDING
        return approximate, bound


def rows_to_rescore(approximate: np.ndarray, bound: float, depth: int) -> np.ndarray:
    """The rows whose exact score may be among the best `depth` (excluded rows scored -inf)."""
    depth = min(depth, len(approximate))
    kth = np.partition(approximate, len(approximate) - depth)[len(approximate) - depth]
    return np.flatnonzero(approximate >= kth - 2 * bound)


# -- the model's bytes ----------------------------------------------------------------------------------
# Protobuf as a list of pieces: the codes go to the file from their own memory, since copying ~40 MB of
# bytes together at 100k tools held the GIL (the event loop) for 70 ms.

Pieces = list[bytes | memoryview]


def scores_model(codes_t: np.ndarray, scale: np.ndarray) -> Pieces:
    """An ONNX model, in pieces: y (m, n) float = MatMulIntegerToFloat(a (m, d) uint8, codes_t (d, n) int8),
    with the rows' scales per column and the query's scale and zero point as inputs/constants."""
    dims, rows = codes_t.shape
    node = (
        b"".join(_string(1, name) for name in ("a", "b", "a_scale", "b_scale", "a_zero"))
        + _string(2, "y")
        + _string(4, "MatMulIntegerToFloat")
        + _string(7, "com.microsoft")
    )
    codes = np.ascontiguousarray(codes_t).data.cast("B")
    graph = [
        *_message(1, [node]),
        *_message(2, [b"int8_scores"]),
        *_message(5, _tensor("b", _INT8, (dims, rows), codes)),
        *_message(5, _tensor("b_scale", _FLOAT, (rows,), scale.astype("<f4").tobytes())),
        *_message(5, _tensor("a_zero", _UINT8, (1,), bytes([_ZERO_POINT]))),
        *_message(11, [_value_info("a", _UINT8, ("m", dims))]),
        *_message(11, [_value_info("a_scale", _FLOAT, (1,))]),
        *_message(12, [_value_info("y", _FLOAT, ("m", rows))]),
    ]
    opsets = _string(1, "") + _int(2, 13), _string(1, "com.microsoft") + _int(2, 1)
    return [_int(1, 8), *_message(8, [opsets[0]]), *_message(8, [opsets[1]]), *_message(7, graph)]  # ir_version 8


def _tensor(name: str, data_type: int, shape: tuple[int, ...], raw: bytes | memoryview) -> Pieces:
    head = b"".join(_int(1, size) for size in shape) + _int(2, data_type) + _string(8, name)
    return [head, *_message(9, [raw])]


def _value_info(name: str, elem_type: int, shape: tuple[int | str, ...]) -> bytes:
    dims = b"".join(_one(1, _int(1, d) if isinstance(d, int) else _string(2, d)) for d in shape)
    tensor_type = _int(1, elem_type) + _one(2, dims)
    return _string(1, name) + _one(2, _one(1, tensor_type))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _message(field: int, pieces: Pieces) -> Pieces:
    """A length-delimited field (a message, bytes or a string) around `pieces`, without joining them."""
    return [_varint(field << 3 | 2) + _varint(sum(len(piece) for piece in pieces)), *pieces]


def _one(field: int, value: bytes) -> bytes:
    return b"".join(_message(field, [value]))


def _string(field: int, value: str) -> bytes:
    return _one(field, value.encode())
