"""A Llama-family model's decoder layers for decode and verification on CPU in one native call
(layer_cpu.c says what it computes and why). ``Part``s describe the products (made by the weight
formats' kernels: ``ggml.decode_part``, ``int4.decode_part``); ``plan`` gathers a model's layers
once; ``forward`` runs them over a few tokens."""
from __future__ import annotations

import functools
from ctypes import CDLL, POINTER, Structure, c_float, c_int, c_int64, c_void_p
from typing import Sequence

import torch

from ssdecode.kernels import attention
from ssdecode.kernels.build import loads, shared_library

MAX_PARTS = 3
GGML, GGML_Q8, INT4 = range(3)  # product kinds, as in layer_cpu.c
PRODUCTS = ("qkv", "o", "gate_up", "down")  # a layer's products, in Layer's field order


class Part(Structure):
    """One weight's product: kind, isa and qtype codes of its kernel, ``[n, k]`` (k padded to kp for
    int4), the addresses of its weight, int4 scales, bias and product function."""
    _fields_ = [("kind", c_int64), ("isa", c_int64), ("qtype", c_int64), ("n", c_int64), ("k", c_int64),
                ("kp", c_int64), ("w", c_void_p), ("scales", c_void_p), ("bias", c_void_p), ("fn", c_void_p)]


class Lin(Structure):
    _fields_ = [("parts", c_int64), ("n", c_int64), ("part", Part * MAX_PARTS)]


class Layer(Structure):
    _fields_ = [("in_norm", c_void_p), ("post_norm", c_void_p), ("q_norm", c_void_p), ("k_norm", c_void_p),
                ("qkv", Lin), ("o", Lin), ("gate_up", Lin), ("down", Lin)]


class Model(Structure):
    _fields_ = [("layers", c_int64), ("hidden", c_int64), ("heads", c_int64), ("kv_heads", c_int64),
                ("head_dim", c_int64), ("inter", c_int64), ("eps", c_float), ("cos", c_void_p), ("sin", c_void_p),
                ("layer", POINTER(Layer))]


@functools.cache
def _lib() -> CDLL:
    lib = shared_library("layers")
    lib.ssd_layers_forward.argtypes = [POINTER(Model), c_void_p, c_int, c_int, c_void_p, c_void_p, c_void_p,
                                       c_int64, c_void_p, c_void_p, c_void_p, c_int64, c_int]
    return lib


@functools.cache
def is_available() -> bool:
    """Whether the kernel compiles and loads here (the reason is logged when not)."""
    return loads(_lib, "fused layer kernel")


class Plan:
    """A model's layers as layer_cpu.c reads them: addresses of tensors the model keeps alive."""

    def __init__(self, model: Model, layers, positions: int):
        self.model, self.layers = model, layers  # layers: the array model points into, kept alive
        self.positions = positions  # rows of the RoPE tables


def _lin(parts: Sequence[Part]) -> Lin:
    lin = Lin(len(parts), sum(p.n for p in parts))
    for i, p in enumerate(parts):
        lin.part[i] = p
    return lin


def _address(t: torch.Tensor | None, shape: tuple[int, ...]) -> int | None:
    """The address of fp32 CPU ``t`` of ``shape`` (contiguous), None for None; ValueError otherwise."""
    if t is None:
        return None
    if t.dtype != torch.float32 or tuple(t.shape) != shape or not t.is_contiguous() or not t.is_cpu:
        raise ValueError(f"want a contiguous fp32 CPU tensor {shape}, got {t.dtype} {tuple(t.shape)}")
    return t.data_ptr()


def plan(config, layers: Sequence[dict], cos: torch.Tensor, sin: torch.Tensor) -> Plan | None:
    """The plan of ``layers``: per layer a dict of ``in_norm``, ``post_norm``, ``q_norm``, ``k_norm``
    (tensors or None) and ``qkv``, ``o``, ``gate_up``, ``down`` (lists of ``Part``); None when a
    product has no part (a format without a native kernel) or too many, or the kernel is missing."""
    if not is_available() or config.head_dim % 8:
        return None
    hid, d = config.hidden_size, config.head_dim
    array = (Layer * len(layers))()
    for i, ly in enumerate(layers):
        if any(not ly[n] or len(ly[n]) > MAX_PARTS for n in PRODUCTS):
            return None
        array[i] = Layer(_address(ly["in_norm"], (hid,)), _address(ly["post_norm"], (hid,)),
                         _address(ly["q_norm"], (d,)), _address(ly["k_norm"], (d,)),
                         *(_lin(ly[n]) for n in PRODUCTS))
    spec = Model(len(layers), hid, config.num_heads, config.num_kv_heads, d, config.intermediate_size,
                 config.rms_norm_eps, _address(cos, tuple(cos.shape)), _address(sin, tuple(sin.shape)), array)
    return Plan(spec, array, cos.shape[0])


def applies(h: torch.Tensor, is_causal: bool) -> bool:
    """Whether ``forward`` serves activations ``h [B, T, hidden]``: the calls the attention kernel
    serves (decode and verification: at most ``attention.MAX_TOKENS`` tokens, not a causal prefill)."""
    return (h.is_cpu and h.dtype == torch.float32 and h.shape[1] <= attention.MAX_TOKENS and not is_causal
            and attention.is_available())


def forward(p: Plan, h: torch.Tensor, positions: torch.Tensor, k_cache: Sequence[torch.Tensor],
            v_cache: Sequence[torch.Tensor], slots: Sequence[int], starts: Sequence[int],
            mask: torch.Tensor | None, span: int) -> torch.Tensor:
    """Run every layer over ``h [B, T, hidden]`` (in place; returned): token i of row r at
    ``positions[r, i]``, its K and V written to slot ``slots[r]`` row ``starts[r] + i`` of each
    layer's ``[slots, max_len, kv_heads, head_dim]`` cache (not past max_len); it attends over that
    slot's keys ``[0, span)`` where ``mask [B, T, span]`` (None: all)."""
    b, t, _ = h.shape
    if not h.is_contiguous():
        raise ValueError("want contiguous activations")
    pos = positions.to(torch.int64).contiguous()
    if pos.shape != (b, t) or (pos.numel() and not 0 <= int(pos.min()) <= int(pos.max()) < p.positions):
        raise IndexError(f"positions must be [{b}, {t}] in [0, {p.positions})")
    if len(slots) != b or len(starts) != b or not all(0 <= s < k_cache[0].shape[0] for s in slots):
        raise IndexError(f"want {b} slots in [0, {k_cache[0].shape[0]}) and {b} starts, got {slots}, {starts}")
    kc = torch.tensor([x.data_ptr() for x in k_cache], dtype=torch.int64)
    vc = torch.tensor([x.data_ptr() for x in v_cache], dtype=torch.int64)
    rows = torch.tensor([*slots, *starts], dtype=torch.int64)
    visible = attention.visible_bytes(mask, b, t, span)
    rc = _lib().ssd_layers_forward(p.model, h.data_ptr(), b, t, pos.data_ptr(), kc.data_ptr(), vc.data_ptr(),
                                   k_cache[0].shape[1], rows.data_ptr(), rows.data_ptr() + 8 * b,
                                   None if visible is None else visible.data_ptr(), span, torch.get_num_threads())
    if rc == -2:
        raise MemoryError("no memory for the layers' scratch")
    if rc:
        raise RuntimeError(f"a product failed with code {rc} (an instruction set this CPU lacks?)")
    return h

