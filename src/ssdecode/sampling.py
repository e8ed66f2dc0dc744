"""Sampling transforms shared by AR, SD and SSD, so all three sample one target distribution.

Exactness of speculative decoding (ssd-algorithm.md section 1) needs the verifier's p to be the
target distribution AFTER the request's transforms, and the draft's q to be exactly the
distribution its token was drawn from. Both sides therefore build distributions here:
``probs_from_logits`` (temperature, top-k, top-p, greedy one-hot), ``saguaro_reweight``
(section 5) and ``sample``.

Randomness: every draw is a float64 uniform in [0, 1) taken from the row's own
``torch.Generator``, a fixed number per row per call, and turned into a token by inverse-CDF
sampling. A row's tokens thus depend only on its seed and its call sequence, never on the other
rows of the batch. A generator of ``None`` marks a greedy row: it consumes no randomness and its
uniform is 0, which makes every sampling and acceptance decision of a one-hot row deterministic.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ssdecode.params import SamplingParams

# One generator for the whole batch (cheap, reproducible only for the same batch), or one per
# row (``None`` = greedy row, no randomness).
Generators = torch.Generator | Sequence[torch.Generator | None]


@dataclass(frozen=True)
class SamplingTensors:
    """Per-row sampling parameters on the device, plus host-side flags that pick fast paths.

    ``temperature`` [N] float32 (0 = greedy), ``top_k`` [N] long (0 = off), ``top_p`` [N] float32
    (1 = off). ``greedy[i]`` / ``filtered[i]`` are host copies: row i is greedy / row i is a
    sampling row using top-k or top-p. Deciding fast paths from them never syncs the device.
    """

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    greedy: tuple[bool, ...]
    filtered: tuple[bool, ...]

    @classmethod
    def from_params(cls, params: Sequence[SamplingParams], device: torch.device | str = "cpu"):
        def column(values, dtype):
            return to_device(torch.tensor(values, dtype=dtype), torch.device(device))

        return cls(
            temperature=column([p.temperature for p in params], torch.float32),
            top_k=column([p.top_k for p in params], torch.long),
            top_p=column([p.top_p for p in params], torch.float32),
            greedy=tuple(p.greedy for p in params),
            filtered=tuple(not p.greedy and (p.top_k > 0 or p.top_p < 1.0) for p in params),
        )

    def __len__(self) -> int:
        return len(self.greedy)

    @property
    def all_greedy(self) -> bool:
        return all(self.greedy)

    @property
    def any_greedy(self) -> bool:
        return any(self.greedy)

    @property
    def any_filtered(self) -> bool:
        return any(self.filtered)

    def rows(self, idx: Sequence[int]) -> SamplingTensors:
        """The rows ``idx`` (host ints, so the flags stay exact), in that order."""
        index = to_device(torch.tensor(list(idx), dtype=torch.long), self.temperature.device)
        return SamplingTensors(self.temperature[index], self.top_k[index], self.top_p[index],
                               tuple(self.greedy[i] for i in idx),
                               tuple(self.filtered[i] for i in idx))

    def repeat_interleave(self, n: int) -> SamplingTensors:
        """Each row repeated n times in place: row b becomes rows b*n .. b*n+n-1."""
        return SamplingTensors(
            self.temperature.repeat_interleave(n), self.top_k.repeat_interleave(n),
            self.top_p.repeat_interleave(n),
            tuple(g for g in self.greedy for _ in range(n)),
            tuple(f for f in self.filtered for _ in range(n)),
        )


def probs_from_logits(logits: torch.Tensor, st: SamplingTensors) -> torch.Tensor:
    """[N, *, V] logits -> float32 probabilities of the same shape; row n uses st's row n.

    Order: temperature, then top-k, then top-p. Greedy rows (temperature 0) are one-hot at the
    argmax (lowest index on ties). Top-k keeps the k best tokens; top-p then keeps the smallest
    prefix, in descending order of the top-k renormalized distribution, whose mass is >= top_p
    (the top token always). Ties in both are broken towards the lower token index (stable sort),
    so the kept set is deterministic. Middle dims (e.g. the K+1 verified positions) share the
    row's parameters, so no per-position expansion is needed.
    """
    logits = logits.float()
    if st.all_greedy:
        return _one_hot_argmax(logits)
    per_row = (-1,) + (1,) * (logits.dim() - 1)  # broadcast a row's parameters over [*, V]
    temperature = st.temperature.to(logits.device).view(per_row)
    greedy = temperature == 0
    # Greedy rows are overwritten below; divide them by 1 so they stay finite meanwhile.
    scaled = logits / torch.where(greedy, 1.0, temperature)
    if st.any_filtered:
        scaled = _filter_top_k_top_p(scaled, st.top_k.to(logits.device).view(per_row),
                                     st.top_p.to(logits.device).view(per_row))
    probs = scaled.softmax(-1)
    if st.any_greedy:
        probs = torch.where(greedy, _one_hot_argmax(logits), probs)
    return probs


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    # torch.argmax returns the first maximal index, i.e. the lowest token id on ties.
    out = torch.zeros_like(logits)
    return out.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)


def _filter_top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor,
                        top_p: torch.Tensor) -> torch.Tensor:
    vocab = scaled.shape[-1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(vocab, device=scaled.device)
    keep = rank < torch.where(top_k > 0, top_k, vocab)
    sorted_probs = sorted_logits.masked_fill(~keep, float("-inf")).softmax(-1)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # exactly 0 at rank 0, so the top stays
    # top_p == 1 must keep the whole (top-k) support even where the cumsum rounds up to 1.
    keep = keep & ((mass_before < top_p) | (top_p >= 1.0))
    mask = torch.empty_like(keep).scatter_(-1, order, keep)
    return scaled.masked_fill(~mask, float("-inf"))


def saguaro_reweight(probs: torch.Tensor, c: float,
                     fan_out: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Saguaro's draft distribution q' (ssd-algorithm.md section 5), [N, V] -> [N, V].

    Definition used by the whole project: with F = fan_out (per row, the number of forks cached
    at this position), the top-(F+1) tokens of q are scaled by c and the result renormalized:
    q'(v) proportional to c*q(v) if rank(v) < F+1 else q(v); F == 0 leaves the row unchanged.
    F+1, because the token sampled here is excluded from its own position's forks: when it is
    drawn from the top F+1 (the likely case), the F forks cached for a rejection here are exactly
    the other scaled tokens, where the residual max(0, p - q') now puts its extra mass.
    Ranks come from a stable descending sort (ties -> lower token id), like top-k; fork selection
    should break ties the same way so the reweighted and the cached sets agree.
    The draft must sample from q' AND hand q' to the verifier. One-hot rows stay one-hot.
    """
    if not 0.0 < c <= 1.0:
        raise ValueError(f"Saguaro constant c must be in (0, 1], got {c}")
    if c == 1.0:
        return probs
    num_rows, vocab = probs.shape
    if not isinstance(fan_out, torch.Tensor):
        fan_out = to_device(torch.tensor(fan_out, dtype=torch.long), probs.device)
    fan_out = fan_out.to(probs.device).expand(num_rows)
    top = torch.where(fan_out > 0, fan_out + 1, 0)
    order = probs.sort(dim=-1, descending=True, stable=True).indices
    in_top_sorted = torch.arange(vocab, device=probs.device) < top.unsqueeze(-1)
    in_top = torch.empty_like(in_top_sorted).scatter_(-1, order, in_top_sorted)
    weighted = probs * torch.where(in_top, c, 1.0)
    return weighted / weighted.sum(-1, keepdim=True)


STREAM_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: derived streams differ from seed's


def make_generator(params: SamplingParams, device: torch.device | str = "cpu",
                   stream: int = 0) -> torch.Generator | None:
    """A request's generator: seeded from ``params.seed`` (random when None); None for greedy.

    ``stream`` > 0 derives an independent, still reproducible stream from the same seed (the
    SSD draft worker samples with one of its own). CPU generators (the default) give the same
    tokens for a seed on every device; their uniforms travel to the accelerator in one pinned,
    non-blocking copy per call.
    """
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed if stream == 0 else (params.seed * STREAM_SEED_MIX + stream) % (1 << 63))
    return gen


def draw_uniforms(generators: Generators, num_rows: int, n: int, device: torch.device | str,
                  greedy: Sequence[bool] | None = None) -> torch.Tensor:
    """[num_rows, n] float64 uniforms in [0, 1): row b draws n values from its own generator.

    A single generator draws the whole block at once. ``None`` rows get zeros without consuming
    randomness; when ``greedy`` (host flags) is given, a ``None`` on a sampling row is an error.
    """
    if isinstance(generators, torch.Generator):
        u = torch.rand(num_rows, n, dtype=torch.float64, device=generators.device,
                       generator=generators)
        return to_device(u, torch.device(device))
    if len(generators) != num_rows:
        raise ValueError(f"{len(generators)} generators for {num_rows} rows")
    present = [g for g in generators if g is not None]
    source = present[0].device if present else torch.device(device)
    zeros = torch.zeros(n, dtype=torch.float64, device=source)
    rows = []
    for b, gen in enumerate(generators):
        if gen is None:
            if greedy is not None and not greedy[b]:
                raise ValueError(f"row {b} samples (temperature > 0) but has no generator")
            rows.append(zeros)
        else:
            rows.append(torch.rand(n, dtype=torch.float64, device=source, generator=gen))
    u = torch.stack(rows) if rows else zeros.new_zeros(0, n)
    return to_device(u, torch.device(device))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a small host tensor to ``device`` without a host synchronization."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        # A pageable copy would wait for the stream; a pinned one is just queued on it.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def sample_from_uniform(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: [N, V] non-negative weights (need not sum to 1), [N] u -> [N] long.

    Returns the first token whose float64 CDF exceeds u * total. Only tokens with positive weight
    can be returned, even if rounding makes the CDF non-monotone (GPU scans); u = 0 gives the
    first positive token, i.e. the argmax of a one-hot row.
    """
    positive = probs > 0
    cdf = probs.double().cumsum(-1)
    hit = (cdf > (u.double() * cdf[:, -1]).unsqueeze(-1)) & positive
    first = hit.to(torch.uint8).argmax(-1)  # argmax returns the first maximal index
    # u*total can round up to the total itself; then no CDF entry exceeds it: take the last
    # positive token.
    last = torch.where(positive, torch.arange(probs.shape[-1], device=probs.device), -1).amax(-1)
    # NaN weights (damaged model: the runner reports it) have no positive token: 0, not -1, so
    # the id stays a valid index until then.
    return torch.where(hit.any(-1), first, last).clamp_(min=0)


def sample(probs: torch.Tensor, generators: Generators) -> torch.Tensor:
    """One token per row of [N, V] probs -> [N] long, one uniform per sampling row.

    Rows whose generator is ``None`` return their argmax and consume no randomness.
    """
    u = draw_uniforms(generators, probs.shape[0], 1, probs.device).squeeze(-1)
    tokens = sample_from_uniform(probs, u)
    if isinstance(generators, torch.Generator) or all(g is not None for g in generators):
        return tokens
    greedy = to_device(torch.tensor([g is None for g in generators]), probs.device)
    return torch.where(greedy, probs.argmax(-1), tokens)
