"""A lean sentence encoder for BERT models with mean pooling (all-MiniLM-L6-v2 and its kind).

What sentence-transformers' `encode` does for one query, without its general machinery: the Rust
tokenizer straight into int64 tensors, a plain-torch BERT forward over weights taken from the loaded
model (one fused QKV product per layer, `scaled_dot_product_attention`, no attention-mask objects, no
output dataclasses), mean pooling over the attention mask and L2 normalisation. A search spends most of
its time here, and the general path costs several milliseconds of Python per call on this model.

`LeanEncoder.from_sentence_transformer` accepts only what it reproduces exactly — a `Transformer` (BERT,
absolute positions, GELU), `Pooling` in mean mode, optionally `Normalize` — and returns None for anything
else, so the caller keeps the general path for other models. Weights are shared with the loaded model,
not copied; with `dtype` bfloat16 the encoder layers are a converted copy (~21 MB for MiniLM) while the
embedding tables stay shared, and the hidden states turn bfloat16 after the embedding layer norm.

Bulk encoding in bfloat16 (`encode_bulk`, the bulk child of optimizer/bulk_embed.py) runs each linear layer
as one oneDNN call on weights packed once for it, with the bias, GELU or residual add fused in
(`_fused_layers`, +~21 MB): 20-25% less CPU than the plain layers for the forward passes measured alone,
though the whole bulk child's CPU did not measurably change (bench/README.md, "Cold build: where the time
went"). Queries keep the plain path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from vmcp_opt.optimizer.batching import batches_by_tokens, padded, tokenize_chunked


@dataclass(frozen=True)
class _Layer:
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    norm1: tuple[torch.Tensor, torch.Tensor]
    up_weight: torch.Tensor
    up_bias: torch.Tensor
    down_weight: torch.Tensor
    down_bias: torch.Tensor
    norm2: tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class _FusedLayer:
    """A layer's linear weights in oneDNN's packed layout (`torch.ops.mkldnn._reorder_linear_weight`)."""

    qkv: torch.Tensor
    out: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


# Rows (tokens) per product that the packed layout is chosen for: a bulk batch's size (optimizer/batching.py).
_PACK_ROWS = 4096


class LeanEncoder:
    """Texts -> L2-normalised float32 sentence vectors, as the source model's `encode` gives them."""

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        heads: int,
        eps: float,
        tokenizer: Any,
        max_length: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """`weights` are a BertModel's state dict (`embeddings.…`, `encoder.layer.<i>.…`)."""
        self.heads = heads
        self.eps = eps
        self.dtype = dtype
        # oneDNN compiles and caches a kernel per bfloat16 matrix shape (+230 MB over 300 queries of assorted
        # lengths, measured); padding lengths to a multiple of 16 bounds the shapes it sees.
        self.pad_to = 16 if dtype == torch.bfloat16 else 1

        def w(name: str) -> torch.Tensor:
            tensor = weights[name].detach()
            return tensor.to(dtype) if tensor.dtype != dtype else tensor

        # The embedding tables stay in the model's precision and shared with it (the word table is half
        # the model); everything after the embedding layer norm runs in `dtype`.
        self.word = weights["embeddings.word_embeddings.weight"].detach()
        # Token type 0 everywhere (single sentences): its row is folded into the position table.
        self.position = (
            weights["embeddings.position_embeddings.weight"] + weights["embeddings.token_type_embeddings.weight"][0]
        ).detach()
        self.norm0 = (weights["embeddings.LayerNorm.weight"].detach(), weights["embeddings.LayerNorm.bias"].detach())
        self.layers: list[_Layer] = []
        count = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer."))
        for i in range(count):
            p = f"encoder.layer.{i}."
            qkv = [f"{p}attention.self.{part}" for part in ("query", "key", "value")]
            self.layers.append(
                _Layer(
                    qkv_weight=torch.cat([w(f"{name}.weight") for name in qkv]),
                    qkv_bias=torch.cat([w(f"{name}.bias") for name in qkv]),
                    out_weight=w(f"{p}attention.output.dense.weight"),
                    out_bias=w(f"{p}attention.output.dense.bias"),
                    norm1=(w(f"{p}attention.output.LayerNorm.weight"), w(f"{p}attention.output.LayerNorm.bias")),
                    up_weight=w(f"{p}intermediate.dense.weight"),
                    up_bias=w(f"{p}intermediate.dense.bias"),
                    down_weight=w(f"{p}output.dense.weight"),
                    down_bias=w(f"{p}output.dense.bias"),
                    norm2=(w(f"{p}output.LayerNorm.weight"), w(f"{p}output.LayerNorm.bias")),
                )
            )
        # A private copy: truncation and padding are set on it, and the caller's tokenizer stays as it was.
        self._tokenizer = tokenizer.__class__.from_str(tokenizer.to_str())
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.no_padding()
        # A Rust tokenizer raises "Already borrowed" when two threads use it at once; it takes ~20 µs.
        self._lock = threading.Lock()
        # oneDNN-packed weights per layer for bulk encoding in bfloat16 (`_fused_layers`): built on first use.
        self._fused: list[_FusedLayer] | None = None
        self._fused_tried = False

    @classmethod
    def from_sentence_transformer(cls, model: Any, dtype: torch.dtype = torch.float32) -> LeanEncoder | None:
        """The lean path for a loaded SentenceTransformer it reproduces exactly, else None."""
        modules = list(model)
        names = [type(module).__name__ for module in modules]
        if names not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
            return None
        transformer, pooling = modules[0], modules[1]
        auto = getattr(transformer, "auto_model", None)
        config = getattr(auto, "config", None)
        tokenizer = getattr(getattr(model, "tokenizer", None), "backend_tokenizer", None)
        # sentence-transformers 6 names the mode ("mean", or a tuple of modes); older releases had flags.
        mode = getattr(pooling, "pooling_mode", None)
        mean_only = mode in ("mean", ("mean",), ["mean"]) or (
            mode is None and getattr(pooling, "pooling_mode_mean_tokens", False) is True
        )
        if (
            auto is None
            or tokenizer is None
            or getattr(config, "model_type", None) != "bert"
            or getattr(config, "hidden_act", None) != "gelu"
            or getattr(config, "position_embedding_type", "absolute") != "absolute"
            or not mean_only
            or getattr(pooling, "include_prompt", True) is not True
        ):
            return None
        weights = auto.state_dict()  # shares the model's tensors
        heads, eps = int(getattr(config, "num_attention_heads", 0)), float(getattr(config, "layer_norm_eps", 1e-12))
        return cls(weights, heads, eps, tokenizer, int(model.max_seq_length), dtype)

    @classmethod
    def from_directory(cls, path: Path, max_length: int, dtype: torch.dtype = torch.float32) -> LeanEncoder | None:
        """The lean path straight from a sentence-transformers directory (safetensors weights, tokenizer.json),
        without importing transformers or sentence-transformers (~3-5 s of a bulk child's start); None when
        the directory holds anything it does not reproduce exactly."""

        def read(name: str) -> Any:
            file = path / name
            return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

        listed = read("modules.json") or []
        modules = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in listed]
        if modules not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
            return None
        pooling = read(f"{listed[1].get('path') or '1_Pooling'}/config.json") or {}
        modes = [key for key, on in pooling.items() if key.startswith("pooling_mode") and on is True]
        mode = pooling.get("pooling_mode")
        config = read("config.json") or {}
        if (
            not (mode == "mean" or (mode is None and modes == ["pooling_mode_mean_tokens"]))
            or pooling.get("include_prompt", True) is not True
            or config.get("model_type") != "bert"
            or config.get("hidden_act") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
            or not (path / "model.safetensors").is_file()
            or not (path / "tokenizer.json").is_file()
        ):
            return None
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        weights = {k.removeprefix("bert."): v for k, v in load_file(str(path / "model.safetensors")).items()}
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        heads, eps = int(config["num_attention_heads"]), float(config.get("layer_norm_eps", 1e-12))
        return cls(weights, heads, eps, tokenizer, max_length, dtype)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One batch: float32 (len(texts), d), each row L2-normalised. Texts are padded to the longest."""
        return self.encode_ids(self.tokenize(texts))

    def encode_ids(self, token_ids: Sequence[Sequence[int]], *, fused: bool = False) -> np.ndarray:
        """`encode` of already tokenized texts (`tokenize`), one batch; `fused` as `forward` takes it."""
        ids, mask = padded(token_ids, self.pad_to)
        with torch.inference_mode():
            vectors = self.forward(torch.from_numpy(ids), None if mask is None else torch.from_numpy(mask), fused=fused)
        return vectors.numpy()

    def encode_bulk(
        self, texts: Sequence[str], batch_size: int, advance: Callable[[int], object] = lambda n: None
    ) -> np.ndarray:
        """Many texts: tokenized once, batched by token count (optimizer/batching.py), in input order; in
        bfloat16 through oneDNN's fused linear layers where torch has them (`forward`)."""
        return self.encode_bulk_ids(tokenize_chunked(self.tokenize, texts), batch_size, advance)

    def encode_bulk_ids(
        self, token_ids: Sequence[np.ndarray], batch_size: int, advance: Callable[[int], object] = lambda n: None
    ) -> np.ndarray:
        """`encode_bulk` of texts already tokenized by `tokenize_chunked(self.tokenize, …)`."""
        out = np.empty((len(token_ids), self.position.shape[1]), dtype=np.float32)
        for rows in batches_by_tokens(token_ids, batch_size, self.pad_to):
            out[rows] = self.encode_ids([token_ids[i] for i in rows], fused=True)
            advance(len(rows))
        return out

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with [CLS] and [SEP], truncated to the model's maximum sequence length."""
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        return [encoding.ids for encoding in encodings]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None, *, fused: bool = False) -> torch.Tensor:
        """BERT encoder, mean pooling over real tokens, L2 normalisation (in float32). With `fused`, in
        bfloat16 and where torch has oneDNN, each linear layer is one oneDNN call on pre-packed weights
        with its bias, GELU or residual add fused in (`_fused_layers`)."""
        packed = self._fused_layers() if fused else None
        if packed is not None:
            return self._pool(self._forward_fused(ids, mask, packed), mask)
        batch, length = ids.shape
        hidden, attn_mask = self._embedded(ids, mask)
        width = hidden.shape[-1]
        head_dim = width // self.heads
        for layer in self.layers:
            qkv = F.linear(hidden, layer.qkv_weight, layer.qkv_bias)
            q, k, v = qkv.view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            context = context.transpose(1, 2).reshape(batch, length, width)
            hidden = F.layer_norm(
                F.linear(context, layer.out_weight, layer.out_bias) + hidden, (width,), *layer.norm1, self.eps
            )
            up = F.gelu(F.linear(hidden, layer.up_weight, layer.up_bias))
            hidden = F.layer_norm(
                F.linear(up, layer.down_weight, layer.down_bias) + hidden, (width,), *layer.norm2, self.eps
            )
        return self._pool(hidden, mask)

    def _embedded(self, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embedding layer's output in the compute dtype, and the attention mask: padding keys get -inf
        before the softmax, as BERT's extended attention mask does."""
        hidden = F.embedding(ids, self.word) + self.position[: ids.shape[1]]
        hidden = F.layer_norm(hidden, (hidden.shape[-1],), *self.norm0, self.eps).to(self.dtype)
        return hidden, None if mask is None else mask[:, None, None, :].bool()

    def _forward_fused(self, ids: torch.Tensor, mask: torch.Tensor | None, packed: list[_FusedLayer]) -> torch.Tensor:
        """`forward`'s encoder layers on oneDNN's fused linear operators (the same arithmetic, bfloat16)."""
        linear = torch.ops.mkldnn._linear_pointwise
        batch, length = ids.shape
        hidden, attn_mask = self._embedded(ids, mask)
        width = hidden.shape[-1]
        head_dim = width // self.heads
        for layer, weights in zip(self.layers, packed, strict=True):
            qkv = linear(hidden, weights.qkv, layer.qkv_bias, "none", [], "")
            q, k, v = qkv.view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            context = context.transpose(1, 2).reshape(batch, length, width)
            hidden = linear.binary(context, hidden, weights.out, layer.out_bias, "add")
            hidden = F.layer_norm(hidden, (width,), *layer.norm1, self.eps)
            up = linear(hidden, weights.up, layer.up_bias, "gelu", [], "none")
            hidden = linear.binary(up, hidden, weights.down, layer.down_bias, "add")
            hidden = F.layer_norm(hidden, (width,), *layer.norm2, self.eps)
        return hidden

    def _fused_layers(self) -> list[_FusedLayer] | None:
        """The linear weights packed for oneDNN (bfloat16 only), or None where torch lacks the fused operators
        or they disagree with `F.linear` on a probe (then `forward` takes the plain path). Packed once, on the
        first bulk encoding: +~21 MB for MiniLM. The plain layers' addmm copied its bias into each output
        (12% of a forward, profiled) and GELU was its own pass over the 1,536-wide activations (16%); fused,
        the forward passes of 2,000 catalogue documents took 20-25% less CPU (bench/README.md, "Cold build:
        where the time went")."""
        if self._fused_tried:
            return self._fused
        self._fused_tried = True
        if self.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            return None
        try:
            pack = torch.ops.mkldnn._reorder_linear_weight
            linear = torch.ops.mkldnn._linear_pointwise
            first = self.layers[0]
            probe = torch.linspace(-1, 1, 3 * first.up_weight.shape[1]).reshape(3, -1).to(self.dtype)
            with torch.inference_mode():
                packed = [
                    _FusedLayer(
                        qkv=pack(layer.qkv_weight, _PACK_ROWS),
                        out=pack(layer.out_weight, _PACK_ROWS),
                        up=pack(layer.up_weight, _PACK_ROWS),
                        down=pack(layer.down_weight, _PACK_ROWS),
                    )
                    for layer in self.layers
                ]
                got = linear(probe, packed[0].up, first.up_bias, "gelu", [], "none").float()
                want = F.gelu(F.linear(probe, first.up_weight, first.up_bias)).float()
        except (AttributeError, RuntimeError, NotImplementedError):
            return None
        if not torch.allclose(got, want, rtol=0.05, atol=0.05):
            return None
        self._fused = packed
        return packed

    @staticmethod
    def _pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Mean over real tokens and L2 normalisation, in float32."""
        hidden = hidden.float()
        if mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)
