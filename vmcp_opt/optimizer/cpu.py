"""What the CPU offers the encoders, and so which engine the bulk child runs (optimizer/bulk_embed.py).

Kept apart from optimizer/embedding.py so the bulk child and the parent's `BulkEncoder` read it without the
gateway's config and model loading (`vmcp_opt.config` only for type checks).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmcp_opt.config import OptimizerConfig
    from vmcp_opt.optimizer.bulk_embed import BulkEngine


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (`/proc/cpuinfo`; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container's cpuset narrows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cpu_supports_bfloat16() -> bool:
    """True when the CPU has native bfloat16 matrix instructions (AMX or AVX-512 BF16)."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def int8_products_saturate(flags: frozenset[str] | None = None) -> bool:
    """True on x86 CPUs with AVX2 but no VNNI (AVX-512 VNNI or AVX-VNNI): ONNX Runtime's u8 x s8 kernels there
    multiply with `VPMADDUBSW`, whose pairwise sums saturate at 32,767, so 8-bit weights (±127) against
    activations up to 255 can overflow (2 x 255 x 127 = 64,770). Measured on a Zen 2: per-token int8 rows off by
    0.29 where 0.06 was the bound, the served int8 graph's cosine to torch 0.993. Weights of 7 bits (±63) cannot
    overflow (2 x 255 x 63 = 32,130); ONNX Runtime's `reduce_range` is the same remedy."""
    flags = cpu_flags() if flags is None else flags
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def int8_weight_peak(flags: frozenset[str] | None = None) -> int:
    """The largest int8 weight code the quantised graphs use on this CPU (`int8_products_saturate`)."""
    return 63 if int8_products_saturate(flags) else 127


def bulk_engine(config: OptimizerConfig, flags: frozenset[str] | None = None) -> BulkEngine:
    """What the bulk child runs: torch in bfloat16 where that was measured ahead of the serving ONNX graph, else
    the serving graph itself. With AMX the child built 10k documents in half the time ONNX Runtime fp32 took in
    process (61 s against 123 s, the same hour; 17.7 s since); with AVX-512 BF16 alone (Zen 4) torch bfloat16
    runs at twice float32's rate, but the int8 graph took ~20% less CPU than bfloat16 and half float32's
    (bench/README.md, "Fourteenth session")."""
    from vmcp_opt.optimizer.bulk_embed import torch_available

    flags = cpu_flags() if flags is None else flags
    if not config.bulk_bfloat16 or not torch_available():
        return "onnx"
    if "amx_bf16" in flags or ("avx512_bf16" in flags and config.precision == "fp32"):
        return "torch"
    return "onnx"
