"""Random but valid GGUF weight blocks, the test data of the kernel tests (tests/test_ggml_*.py,
test_linear.py, test_loaders.py) and of the kernel benchmarks here (kernels.py, draft_kernels.py)."""
from __future__ import annotations

import gguf
import numpy as np


def random_blocks(qtype: str, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Valid [n, k] weights as GGUF bytes: gguf quantizes Q8_0, Q5_0 and Q4_0 itself; for the
    K-quants (which it only dequantizes) every quant and sub-scale bit pattern is random and the
    fp16 super-block scales are sane, some of them subnormal and some negative."""
    rng = np.random.default_rng(seed)
    t = gguf.GGMLQuantizationType[qtype]
    if qtype in ("Q8_0", "Q5_0", "Q4_0"):
        return gguf.quants.quantize(rng.standard_normal((n, k), dtype=np.float32), t)
    block, size = gguf.GGML_QUANT_SIZES[t]
    raw = rng.integers(0, 256, (n, k // block, size), dtype=np.uint8)
    count = 2 if qtype == "Q4_K" else 1  # Q4_K: d and dmin first; Q6_K: d last
    d = rng.uniform(-1e-2, 1e-2, (n, k // block, count)).astype(np.float16)
    d.flat[::7] = np.float16(3e-6)
    at = 0 if qtype == "Q4_K" else size - 2
    raw[..., at:at + 2 * count] = d.view(np.uint8)
    return raw.reshape(n, -1)
