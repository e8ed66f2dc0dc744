"""Statistical exactness harness: do sampled token sequences follow a known exact distribution?

Speculative decoding is only correct if it is lossless, and a bias hides easily in a rare branch,
so tests compare whole empirical distributions against exactly enumerated ones: a chi-square
goodness-of-fit test (with rare outcomes pooled so the chi-square approximation holds) plus the
total-variation distance as a readable effect size. A test module, not library code.

Two blind spots are closed here rather than in each test. A case whose binned test has fewer than
2 degrees of freedom (one likely outcome, e.g. a target that is deterministic at that
temperature) can detect nothing, so the check refuses it instead of passing it. And the
reference is built from the model's raw logits with the transforms written out below from
their definitions, not with ssdecode.sampling: a bug in the engine's transforms would otherwise
move the reference along with the samples.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

from scipy.stats import chi2

MIN_EXPECTED = 5.0  # the usual validity condition for Pearson's chi-square approximation
MIN_DOF = 2  # fewer: (almost) one outcome, the test cannot tell a biased engine from a correct one


def distribution_distance(samples: Sequence[tuple[int, ...]],
                          exact: dict[tuple, float]) -> tuple[float, float]:
    """(p_value, tv) of ``samples`` against ``exact`` (outcome -> probability, summing to 1).

    Outcomes with expected count < 5 are pooled into one bin, grown with the next rarest outcomes
    until it reaches 5 too. An observed outcome of exact probability 0 gives p_value 0. Asserts
    that the binned test has at least MIN_DOF degrees of freedom.
    """
    n = len(samples)
    if n == 0:
        raise ValueError("no samples")
    counts = Counter(tuple(s) for s in samples)
    cells = sorted((n * p, counts.get(o, 0)) for o, p in exact.items() if p > 0)
    pooled_exp, pooled_obs, i = 0.0, 0, 0
    while i < len(cells) and (cells[i][0] < MIN_EXPECTED or 0.0 < pooled_exp < MIN_EXPECTED):
        pooled_exp, pooled_obs, i = pooled_exp + cells[i][0], pooled_obs + cells[i][1], i + 1
    bins = cells[i:] + ([(pooled_exp, pooled_obs)] if pooled_exp > 0 else [])
    dof = len(bins) - 1
    assert dof >= MIN_DOF, (f"the case cannot detect anything: {dof} degree(s) of freedom (n = {n}, "
                            f"{len(exact)} outcomes); pick a prompt / temperature / length with spread")
    if any(exact.get(outcome, 0.0) <= 0.0 for outcome in counts):
        return 0.0, _tv(counts, exact, n)
    stat = sum((obs - e) ** 2 / e for e, obs in bins)
    return float(chi2.sf(stat, dof)), _tv(counts, exact, n)


def expected_tv(exact: dict[tuple, float], n: int) -> float:
    """Mean TV distance of n exact samples from ``exact`` (normal approximation, per outcome
    E|p_hat - p| = sqrt(2 p (1 - p) / (pi n)))."""
    return 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * n)) for p in exact.values())


def chi_square_check(samples: Sequence[tuple[int, ...]], exact: dict[tuple, float],
                     p_floor: float = 1e-4, tv_bound: float | None = None) -> tuple[float, float]:
    """Assert that ``samples`` follow ``exact``; return (p_value, tv).

    Fails when p_value < p_floor or tv > tv_bound. The default tv_bound, 3 * expected_tv + 0.005,
    scales with the sample size, so it guards against gross bias at any n while the chi-square
    test carries the sensitivity.
    """
    p_value, tv = distribution_distance(samples, exact)
    bound = 3 * expected_tv(exact, len(samples)) + 0.005 if tv_bound is None else tv_bound
    assert p_value >= p_floor and tv <= bound, (
        f"samples do not follow the exact distribution: chi-square p = {p_value:.3g} "
        f"(floor {p_floor:g}), TV = {tv:.4f} (bound {bound:.4f}), n = {len(samples)}"
    )
    return p_value, tv


def exact_sequence_distribution(next_probs_fn: Callable[[tuple[int, ...]], Sequence[float]],
                                prefix: Sequence[int],
                                n_tokens: int) -> dict[tuple[int, ...], float]:
    """All continuations of ``prefix`` with n_tokens tokens -> their exact probability.

    ``next_probs_fn(tokens)`` returns the (transformed) next-token distribution after the full
    token tuple (prefix included); zero-probability branches are pruned. Exponential in n_tokens,
    meant for tiny vocabularies.
    """
    dist: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(n_tokens):
        grown: dict[tuple[int, ...], float] = {}
        for seq, mass in dist.items():
            for token, p in enumerate(next_probs_fn(tuple(prefix) + seq)):
                if p > 0:
                    grown[seq + (token,)] = mass * float(p)
        dist = grown
    return dist


def reference_probs(logits: Sequence[float], temperature: float, top_k: int = 0,
                    top_p: float = 1.0) -> list[float]:
    """The next-token distribution of a request, from the definitions, in float64 Python.

    Temperature 0: all mass on the largest logit. Otherwise softmax(logits / temperature)
    restricted to the top_k largest logits (0 = all), then to the smallest set of most probable
    of those whose mass reaches top_p (1 = all), renormalized. Ties in the ranking go to the
    lower token id, the rule ssdecode.sampling documents; test_exactness_reference.py checks
    that both agree on random logits.
    """
    order = sorted(range(len(logits)), key=lambda v: (-logits[v], v))
    if temperature == 0:
        return [float(v == order[0]) for v in range(len(logits))]
    kept = order[:top_k] if top_k > 0 else order
    weights = [math.exp((logits[v] - logits[kept[0]]) / temperature) for v in kept]
    total = sum(weights)
    if top_p < 1.0:
        mass, n = 0.0, 0
        while mass < top_p * total:
            mass, n = mass + weights[n], n + 1
        kept, weights, total = kept[:n], weights[:n], mass
    probs = [0.0] * len(logits)
    for v, w in zip(kept, weights):
        probs[v] = w / total
    return probs


def exact_target_distribution(model, params, prompt: Sequence[int], n_tokens: int) -> dict[tuple[int, ...], float]:
    """The exact distribution of a CausalLM's next ``n_tokens`` after ``prompt`` under the
    request's sampling transforms (``reference_probs``), each prefix run from scratch."""
    import torch

    from ssdecode.runtime.runner import ModelRunner

    @lru_cache(maxsize=None)
    def next_probs(tokens: tuple[int, ...]):
        runner = ModelRunner(model, 1, len(tokens) + 1)
        ids = torch.tensor([tokens])
        logits = runner.forward(ids, torch.arange(len(tokens))[None], [0], last_only=True)[0, 0]
        return reference_probs(logits.double().tolist(), params.temperature, params.top_k, params.top_p)

    return exact_sequence_distribution(next_probs, prompt, n_tokens)


def _tv(counts: Counter, exact: dict[tuple, float], n: int) -> float:
    outcomes = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(o, 0) / n - exact.get(o, 0.0)) for o in outcomes)
