"""Weight formats for the native models' matrix products.

- ``dense``: ``F.linear`` on the stored weight; any device and dtype.
- ``packed``: the weight reordered once, at load time, into oneDNN's blocked layout (CPU, fp32).
  Decode-shaped products (1-16 rows against a large weight) run about 2x faster than
  ``F.linear``'s, and a K+1-row verification costs little more than one row (measured in
  docs/lab/benchmarks.md). The default for fp32 on CPU.
- ``int8``: weight-only int8, one scale per output channel, run by fbgemm's dynamic-quantized
  product (activations quantized per call). A quarter of the bytes per token; meant for DRAFT
  models: speculation stays exact whatever the draft outputs, because the verifier uses the q the
  draft actually sampled from. Opt-in (``--draft-weights int8``); CPU only.
- ``int4``: 4-bit blocks of 32 with a scale each (GGML's Q4_0 rule) made from the fp32 weight,
  with the activations rounded to int8 per row: integer dot products by our own kernel
  (``kernels/int4.py``), half int8's bytes. For DRAFT models only, as ``int8``; CPU only.
- ``q4k``: GGML's Q4_K blocks made from the fp32 weight (``kernels/q4k.py``), run interleaved with
  int8 activations (``kernels/ggml_q8il.h``): 4.5 bits a weight and 1.6x int4's speed for the
  demo draft's step. For DRAFT models only, as ``int8``; needs AVX-512 VNNI.
- ``gguf``: a GGUF file's quantized tensors run as stored (``kernels/ggml.py``: Q4_K, Q6_K, Q8_0,
  Q5_0, Q4_0; other types are dequantized at load), read by
  ``models/gguf_weights.py``; fp32 activations on CPU. The same model as its fp32 conversion at a
  fraction of the bytes per token (issue 11).
- ``gguf-a8``: as ``gguf``, but the Q4_K and Q6_K products of decode and verification round each
  activation row to int8 per 256 values, as llama.cpp does (a prompt's prefill stays fp32). About
  1.5x faster per token where fp32 activations are bound by instructions; the logits move by about
  what llama.cpp's do (docs/lab/benchmarks.md section 11). With AVX-512 VNNI the prefill is int8 too
  (the interleaved kernel takes every row count, so a prompt computes what decode would). This is
  the GGUF file's model as llama.cpp computes it, and speculative decoding is exact to it.

``auto`` is ``gguf-a8`` for a model that came from a GGUF (on CPU in fp32, where the kernels build:
the loader decides, as only it knows where a model came from), else ``dequant``: the fp32
conversion, ``packed`` on CPU in fp32 and ``dense`` elsewhere.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ssdecode.config.formats import FORMATS, GGUF_FORMATS
from ssdecode.kernels import ggml, int4, q4k

_QUANT_CHUNK = 1 << 22  # elements quantized at a time


class Linear:
    """``y = x W^T + b`` on a dense weight ``[out, in]``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def parts(self) -> list | None:
        """This product for decode and verification rows as native kernels' ``layers.Part``s (one per
        output block), for the fused layers; None where it has no native kernel."""
        return None


class PackedLinear(Linear):
    """The weight in oneDNN's layout; the dense copy is dropped."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(torch.ops.mkldnn._reorder_linear_weight(weight, 1), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def __reduce__(self):
        # oneDNN tensors don't pickle. Ship the plain weight by value (a temporary tensor would go
        # through torch's fd-based shared memory and be freed before a spawned child reads it).
        return _repack, (self.weight.to_dense().numpy(), self.bias)


def _repack(weight, bias: torch.Tensor | None) -> PackedLinear:
    return PackedLinear(torch.from_numpy(weight), bias)


class Int8Linear(Linear):
    """Symmetric per-output-channel int8 weight, prepacked for fbgemm."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        w = weight.float()
        max_abs = torch.linalg.vector_norm(w, float("inf"), dim=1)  # no |w| temporary of the weight's size
        scale = (max_abs.clamp_min(1e-8) / 127).double()
        ints = torch.empty(w.shape, dtype=torch.int8)
        step = max(1, _QUANT_CHUNK // w.shape[1])  # rows at a time: float64 quotients are 2x the weight
        for i in range(0, w.shape[0], step):
            ints[i:i + step] = (w[i:i + step] / scale[i:i + step, None]).round_().clamp_(-127, 127)
        self._prepack(ints, scale, bias)

    def _prepack(self, ints: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        with warnings.catch_warnings():  # quantized tensors are deprecated upstream; torch is pinned
            warnings.simplefilter("ignore")
            q = torch._make_per_channel_quantized_tensor(ints, scale, torch.zeros_like(scale, dtype=torch.long), 0)
            self.weight = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.float())
        self.bias = None  # inside the packed params

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, so fbgemm's int16 pair sums cannot saturate on AVX2
        return torch.ops.quantized.linear_dynamic(x, self.weight, True)

    def __reduce__(self):  # by value, as PackedLinear's
        q, bias = torch.ops.quantized.linear_unpack(self.weight)
        return _int8, (q.int_repr().numpy(), q.q_per_channel_scales().numpy(),
                       None if bias is None else bias.numpy())


class QuantizedLinear(Linear):
    """A GGML-quantized weight as stored: ``blocks`` uint8 ``[n, row_bytes]`` of ``qtype``, ``[n, k]``,
    held reordered as the kernel streams it (``ggml.pack``: the same bytes, interleaved where
    ``ggml.interleaves``; ``packed``: already so, ``interleaved`` or not)."""

    def __init__(self, blocks: torch.Tensor, qtype: str, n: int, k: int, bias: torch.Tensor | None = None,
                 packed: bool = False, activations: str = "fp32", interleaved: bool | None = None):
        if not blocks.is_cpu:
            raise ValueError(f"{qtype} weights run on the CPU only, not on {blocks.device}")
        if not ggml.is_available():
            raise RuntimeError(f"{qtype} weights need the GGUF kernels, which do not build here (see the log)")
        if interleaved is None:
            interleaved = ggml.interleaves(qtype, activations)
        super().__init__(blocks if packed else ggml.pack(blocks, qtype, n, k, interleaved=interleaved), bias)
        self.qtype, self.n, self.k, self.activations, self.interleaved = qtype, n, k, activations, interleaved

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ggml.quantized_linear(x, self.weight, self.qtype, self.n, self.k, self.bias,
                                     activations=self.activations, interleaved=self.interleaved)

    def parts(self) -> list:
        return [ggml.decode_part(self.weight, self.qtype, self.n, self.k, self.bias, self.activations,
                                 self.interleaved)]

    def __reduce__(self):  # by value, as PackedLinear's
        return _quantized, (self.weight.numpy(), self.qtype, self.n, self.k, self.bias, self.activations,
                            self.interleaved)


def _quantized(packed, qtype: str, n: int, k: int, bias: torch.Tensor | None, activations: str,
               interleaved: bool) -> QuantizedLinear:
    return QuantizedLinear(torch.from_numpy(packed), qtype, n, k, bias, packed=True, activations=activations,
                           interleaved=interleaved)


class Q4KLinear(QuantizedLinear):
    """The weight as Q4_K blocks made at load (``kernels.q4k``), run interleaved with int8 activations."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        n, k = weight.shape
        super().__init__(q4k.quantize(weight), "Q4_K", n, k, None if bias is None else bias.float().contiguous(),
                         activations="int8", interleaved=True)


class SplitLinear(Linear):
    """Parts that cannot be fused (q/k/v of different GGML types), outputs concatenated: the
    copy costs little next to the products (2-3 us against ~400 us at 1-5 rows, 1536 -> 2048)."""

    def __init__(self, parts: list[Linear]):
        super().__init__(None)
        self.linears = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.linears], dim=-1)

    def parts(self) -> list | None:
        each = [p.parts() for p in self.linears]
        return None if None in each else [part for ps in each for part in ps]


class Int4Linear(Linear):
    """The weight in 4-bit blocks (``kernels.int4.quantize_weight``), run by ``kernels.int4``."""

    def __init__(self, weight: torch.Tensor | int4.Int4Weight, bias: torch.Tensor | None = None):
        if isinstance(weight, torch.Tensor):
            weight = int4.quantize_weight(weight)
        super().__init__(weight, None if bias is None else bias.float().contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return int4.int4_linear(x, self.weight, self.bias)

    def parts(self) -> list:
        return [int4.decode_part(self.weight, self.bias)]

    def __reduce__(self):  # by value, as PackedLinear's
        w = self.weight
        return _int4, (w.nibbles.numpy(), w.scales.numpy(), w.k, None if self.bias is None else self.bias.numpy())


def _int4(nibbles, scales, k: int, bias) -> Int4Linear:
    return Int4Linear(int4.Int4Weight(torch.from_numpy(nibbles), torch.from_numpy(scales), k),
                      None if bias is None else torch.from_numpy(bias))


def _int8(ints, scale, bias) -> Int8Linear:
    lin = Int8Linear.__new__(Int8Linear)  # already quantized: skip __init__'s quantization
    lin._prepack(torch.from_numpy(ints), torch.from_numpy(scale), None if bias is None else torch.from_numpy(bias))
    return lin


def resolve_format(fmt: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete format for ``fmt`` on this device and dtype; refuses impossible pairs. ``auto``
    here, with no GGUF known, is ``dequant``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; use one of {', '.join(FORMATS)}")
    cpu_fp32 = device.type == "cpu" and dtype == torch.float32
    if fmt in ("auto", "dequant"):
        return "packed" if cpu_fp32 and torch.backends.mkldnn.is_available() else "dense"
    if fmt == "packed" and not (cpu_fp32 and torch.backends.mkldnn.is_available()):
        raise ValueError("weight format 'packed' needs fp32 on a CPU with oneDNN")
    if fmt in GGUF_FORMATS and not runs_gguf(device, dtype):
        raise ValueError(f"weight format {fmt!r} needs fp32 on a CPU where the GGUF kernels build")
    if fmt == "int4" and not (cpu_fp32 and int4.is_available()):
        raise ValueError("weight format 'int4' needs fp32 on a CPU where its kernel builds")
    if fmt == "q4k" and not (cpu_fp32 and ggml.is_available() and ggml.interleaves("Q4_K", "int8")):
        raise ValueError("weight format 'q4k' needs fp32 on a CPU with AVX-512 VNNI (else use int4)")
    if fmt == "int8" and not (cpu_fp32 and "fbgemm" in torch.backends.quantized.supported_engines):
        raise ValueError("weight format 'int8' needs fp32 on a CPU with fbgemm (x86)")
    return fmt


def runs_gguf(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether GGUF weights can run as stored here (the kernels are CPU code with fp32 activations)."""
    return device.type == "cpu" and dtype == torch.float32 and ggml.is_available()


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, fmt: str) -> Linear:
    """``fmt`` as returned by ``resolve_format``, other than gguf (whose weights are not dense)."""
    return {"dense": Linear, "packed": PackedLinear, "int8": Int8Linear, "int4": Int4Linear,
            "q4k": Q4KLinear}[fmt](weight, bias)
