"""The weight formats a user chooses between (their kernels: ``models/linear.py``)."""
from __future__ import annotations

from ssdecode.params import InvalidParams

# Weight formats (models/linear.py). A target is computed from the weights a user gives, so its
# choices keep that model: as stored (gguf, gguf-a8) or its fp32 conversion (dequant). A draft may
# also be re-quantized (speculation stays exact whatever the draft computes).
TARGET_FORMATS = ("auto", "gguf", "gguf-a8", "dequant")
DRAFT_FORMATS = TARGET_FORMATS + ("q4k", "int4", "int8")
COMPARISON_FORMATS = ("dense", "packed")  # dequant's two layouts, named for benchmarks and tests
FORMATS = DRAFT_FORMATS + COMPARISON_FORMATS
GGUF_FORMATS = ("gguf", "gguf-a8")  # the GGUF's tensors as stored


def check_format(fmt: str, what: str) -> None:
    if fmt not in FORMATS:
        raise InvalidParams(f"{what} weight format must be one of {', '.join(FORMATS)}, got {fmt!r}")
