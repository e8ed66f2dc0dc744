"""Exactness of verify(): the committed tokens follow the target distribution for ANY proposal.

The "models" are Markov chains over a tiny vocabulary (next-token logits = a fixed random
transition matrix row of the previous token), so the exact distribution of the first two
committed tokens is enumerable, and 20000 independent rounds run as ONE batched verify call.
A deliberately wrong verifier must fail the same check, proving the check can fail.
"""
import pytest
import torch

from exactness import chi_square_check, distribution_distance, exact_sequence_distribution
from ssdecode.decoding.verify import VerifyResult, verify
from ssdecode.params import SamplingParams
from ssdecode.sampling import SamplingTensors, make_generator, probs_from_logits, saguaro_reweight, sample

V, ROWS, START = 6, 20000, 0
# Row x: the next-token logits after token x.
TARGET_LOGITS = 1.5 * torch.randn(V, V, generator=torch.Generator().manual_seed(10))
DRAFT_LOGITS = 1.5 * torch.randn(V, V, generator=torch.Generator().manual_seed(11))


def uniform_st(params: SamplingParams, n: int) -> SamplingTensors:
    return SamplingTensors.from_params([params] * n)


def draft_matrix(kind: str, params: SamplingParams) -> torch.Tensor:
    """[V, V] proposal distribution q(. | previous token) for each proposal kind."""
    target = probs_from_logits(TARGET_LOGITS, uniform_st(params, V))
    if kind == "same":
        return target
    if kind == "adversarial":  # mass exactly where the target has little
        return (-3.0 * TARGET_LOGITS).softmax(-1)
    if kind == "truncated":  # q = 0 on tokens p supports: the residual must cover them
        return probs_from_logits(DRAFT_LOGITS, uniform_st(SamplingParams(1.0, top_k=2), V))
    if kind == "saguaro":
        return saguaro_reweight(target, 0.3, 2)
    return DRAFT_LOGITS.softmax(-1)  # "poor", "point", "mixed": an unrelated random draft


def one_round(prev, k_max, kind, params, gen, verifier, random_num_draft):
    """Draft a K-token chain per row from q, verify it; return (draft_tokens, result)."""
    q_matrix = draft_matrix(kind, params)
    tokens, probs, last = [], [], prev
    for _ in range(k_max):
        q = q_matrix[last]
        last = torch.multinomial(q, 1, generator=gen).squeeze(-1)
        tokens.append(last)
        probs.append(q)
    draft_tokens = torch.stack(tokens, 1)
    draft_probs = torch.stack(probs, 1)
    point_mass = None
    if kind == "point":
        draft_probs = None
    elif kind == "mixed":  # half the rows: uniform random point-mass proposals, q ignored
        point_mass = torch.rand(len(prev), generator=gen) < 0.5
        random_tokens = torch.randint(0, V, draft_tokens.shape, generator=gen)
        draft_tokens = torch.where(point_mass.unsqueeze(1), random_tokens, draft_tokens)
    # Row i of the target scores the token after s_1..s_i: a function of s_i alone here.
    target_logits = TARGET_LOGITS[torch.cat([prev.unsqueeze(1), draft_tokens], 1)]
    num_draft = None
    if random_num_draft:
        num_draft = torch.randint(0, k_max + 1, (len(prev),), generator=gen)
    st = uniform_st(params, len(prev))
    return draft_tokens, verifier(target_logits, draft_tokens, draft_probs, st, gen,
                                  point_mass=point_mass, num_draft=num_draft)


def committed_pairs(kind, params, k_max, verifier=verify, random_num_draft=False, seed=0):
    """The first two committed tokens of ROWS independent generations from START."""
    gen = torch.Generator().manual_seed(seed)
    prev = torch.full((ROWS,), START)
    draft, r1 = one_round(prev, k_max, kind, params, gen, verifier, random_num_draft)
    # The last committed token of round 1 is always its next token: round 2 continues from it.
    draft2, r2 = one_round(r1.next_token, k_max, kind, params, gen, verifier, random_num_draft)
    k, t = r1.accepted, r1.next_token
    first = torch.where(k >= 1, draft[:, 0], t)
    r2_first = torch.where(r2.accepted >= 1, draft2[:, 0], r2.next_token)
    second = torch.where(k == 1, t, r2_first)
    if k_max >= 2:
        second = torch.where(k >= 2, draft[:, 1], second)
    return list(zip(first.tolist(), second.tolist()))


def exact_distribution(params, n_tokens):
    target = probs_from_logits(TARGET_LOGITS, uniform_st(params, V)).double()
    return exact_sequence_distribution(lambda seq: target[seq[-1]].tolist(), (START,), n_tokens)


def check_exact(pairs, params):
    chi_square_check([pair[:1] for pair in pairs], exact_distribution(params, 1))
    chi_square_check(pairs, exact_distribution(params, 2))


T1, T05 = SamplingParams(temperature=1.0), SamplingParams(temperature=0.5)
CASES = [  # (proposal kind, target sampling params, K, random num_draft per row)
    ("same", T1, 5, False),
    ("same", SamplingParams(temperature=0.5, top_p=0.9), 1, False),
    ("poor", T1, 1, False),
    ("poor", T1, 5, True),
    ("adversarial", T05, 5, False),
    ("adversarial", SamplingParams(temperature=1.0, top_k=3), 5, False),
    ("truncated", T1, 5, False),
    ("point", T1, 5, False),
    ("point", SamplingParams(temperature=0.5, top_p=0.9), 1, False),
    ("mixed", SamplingParams(temperature=1.0, top_p=0.7), 5, True),
    ("saguaro", T1, 5, False),
    ("saguaro", SamplingParams(temperature=0.5, top_k=4, top_p=0.9), 5, False),
]


@pytest.mark.parametrize("kind, params, k_max, random_num_draft", CASES)
def test_committed_tokens_follow_target(kind, params, k_max, random_num_draft):
    check_exact(committed_pairs(kind, params, k_max, random_num_draft=random_num_draft), params)


def argmax_match_verify(target_logits, draft_tokens, draft_probs, st, gen, **_):
    """The reference implementation's miss rule: accept iff s_i == argmax p_i, recover argmax."""
    best = target_logits.argmax(-1)
    accepted = (draft_tokens == best[:, :-1]).long().cumprod(-1).sum(-1)
    return VerifyResult(accepted, best[torch.arange(len(best)), accepted], target_logits)


def test_argmax_match_at_temperature_one_fails_the_check():
    pairs = committed_pairs("poor", T1, 5, verifier=argmax_match_verify)
    assert distribution_distance(pairs, exact_distribution(T1, 2))[0] < 1e-4
    with pytest.raises(AssertionError):
        check_exact(pairs, T1)


def greedy_expectation(target_logits, draft_tokens, num_draft):
    best = target_logits.argmax(-1)
    k_max = draft_tokens.shape[1]
    match = (draft_tokens == best[:, :-1]) & (torch.arange(k_max) < num_draft.unsqueeze(1))
    accepted = match.long().cumprod(-1).sum(-1)
    return accepted, best[torch.arange(len(best)), accepted]


@pytest.mark.parametrize("with_probs", [False, True])
def test_greedy_reduces_to_argmax_matching(with_probs):
    gen = torch.Generator().manual_seed(3)
    rows, k_max, vocab = 400, 5, 8
    # Rounded logits: some ties, which greedy breaks towards the lower token id.
    target_logits = torch.randn(rows, k_max + 1, vocab, generator=gen).round(decimals=1)
    best = target_logits.argmax(-1)[:, :-1]
    # Proposals match the argmax with probability 0.7 each, so every accepted count occurs.
    draft_tokens = torch.where(torch.rand(rows, k_max, generator=gen) < 0.7, best,
                               torch.randint(0, vocab, (rows, k_max), generator=gen))
    draft_probs = torch.rand(rows, k_max, vocab, generator=gen).softmax(-1) if with_probs else None
    num_draft = torch.randint(0, k_max + 1, (rows,), generator=gen)
    st = uniform_st(SamplingParams(), rows)
    expected = greedy_expectation(target_logits, draft_tokens, num_draft)
    for gens in ([None] * rows, torch.Generator().manual_seed(4)):  # with or without randomness
        got = verify(target_logits, draft_tokens, draft_probs, st, gens, num_draft=num_draft)
        assert torch.equal(got.accepted, expected[0]) and torch.equal(got.next_token, expected[1])
    assert set(expected[0].tolist()) == set(range(k_max + 1))


def test_rows_are_independent_and_reproducible():
    gen = torch.Generator().manual_seed(5)
    rows, k_max, vocab = 6, 4, 10
    target_logits = torch.randn(rows, k_max + 1, vocab, generator=gen)
    draft_probs = torch.randn(rows, k_max, vocab, generator=gen).softmax(-1)
    draft_tokens = torch.multinomial(draft_probs.view(-1, vocab), 1, generator=gen).view(rows, -1)
    params = [SamplingParams(temperature=0.8, seed=s) for s in range(rows - 1)] + [SamplingParams()]
    st = SamplingTensors.from_params(params)

    def run(idx):
        got = verify(target_logits[idx], draft_tokens[idx], draft_probs[idx], st.rows(idx),
                     [make_generator(params[b]) for b in idx])
        return list(zip(got.accepted.tolist(), got.next_token.tolist()))

    batched = run(list(range(rows)))
    assert run(list(range(rows))) == batched
    assert [run([b])[0] for b in range(rows)] == batched
    assert run([3, 0]) == [batched[3], batched[0]]
    with pytest.raises(ValueError, match="no generator"):
        verify(target_logits, draft_tokens, draft_probs, st, [None] * rows)


def test_no_proposals_samples_from_first_position():
    params = SamplingParams(temperature=1.0, top_k=4)
    target_logits = TARGET_LOGITS[torch.full((ROWS, 1), START)]
    no_proposals = torch.zeros(ROWS, 0, dtype=torch.long)
    got = verify(target_logits, no_proposals, None, uniform_st(params, ROWS),
                 torch.Generator().manual_seed(6))
    assert got.accepted.eq(0).all() and got.target_probs.shape == (ROWS, 1, V)
    chi_square_check([(t,) for t in got.next_token.tolist()], exact_distribution(params, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_never_syncs_and_matches_cpu():
    rows, k_max, vocab = 8, 4, 1000
    gen = torch.Generator().manual_seed(7)
    target_logits = 3 * torch.randn(rows, k_max + 1, vocab, generator=gen)
    draft_probs = (3 * torch.randn(rows, k_max, vocab, generator=gen)).softmax(-1)
    draft_tokens = torch.multinomial(draft_probs.view(-1, vocab), 1, generator=gen).view(rows, -1)
    params = [SamplingParams(temperature=0.8, top_k=50, seed=1), SamplingParams(),
              SamplingParams(temperature=1.0, top_p=0.9, seed=2),
              SamplingParams(temperature=0.6, seed=3)] * 2
    point_mass = torch.tensor([False, True] * 4)
    num_draft = torch.tensor([4, 3, 0, 4, 2, 4, 1, 4])
    args = (target_logits, draft_tokens, draft_probs)
    cpu = verify(*args, SamplingTensors.from_params(params), [make_generator(p) for p in params],
                 point_mass=point_mass, num_draft=num_draft)
    cuda_args = [a.cuda() for a in (*args, point_mass, num_draft)]
    st = SamplingTensors.from_params(params, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = verify(*cuda_args[:3], st, [make_generator(p) for p in params],
                     point_mass=cuda_args[3], num_draft=cuda_args[4])
        probs = probs_from_logits(cuda_args[0][:, 0], st)
        saguaro_reweight(probs, 0.5, [2] * rows)
        tokens = sample(probs, [make_generator(p) for p in params])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(got.accepted.cpu(), cpu.accepted)
    assert torch.equal(got.next_token.cpu(), cpu.next_token)
    assert torch.equal(tokens.cpu(), sample(probs.cpu(), [make_generator(p) for p in params]))
