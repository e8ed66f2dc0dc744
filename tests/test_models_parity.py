"""Native Llama-family models and the Transformers fallback against Transformers itself.

Every family is a tiny random HF model saved as safetensors and reloaded natively; the reference
is always one plain HF forward over the whole sequence (no cache), so cache writes, rollback,
ragged batches and tree masks are all checked against the same ground truth.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from ssdecode.kv.cache import ContextOverflow
from ssdecode.models.hf_fallback import HFCausalLM
from ssdecode.models.llama import LlamaModel
from ssdecode.runtime.runner import ModelRunner

TOL = 1e-4
VOCAB = 97
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
FAMILIES = {
    "llama": lambda: tf.LlamaConfig(**COMMON),
    "llama3_rope": lambda: tf.LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE),
    "qwen2": lambda: tf.Qwen2Config(**COMMON),
    "qwen3": lambda: tf.Qwen3Config(**COMMON, head_dim=24, tie_word_embeddings=True),
    "mistral": lambda: tf.MistralConfig(**COMMON),
}


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """HF init zeroes biases and sets norms to one; perturb all so every weight is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(HF eager model, native model loaded from the saved folder) for one family."""
    torch.manual_seed(0)
    cfg = FAMILIES[request.param]()
    hf = randomize(tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager"))
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    assert list(folder.glob("*.safetensors"))
    return hf, LlamaModel.from_folder(folder)


def ref_logits(hf, tokens: list[int]) -> torch.Tensor:
    """HF logits [len(tokens), V] of one uncached forward."""
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def step(runner, slot: int, tokens: list[int], start_pos: int, **kw) -> torch.Tensor:
    """One single-row forward; returns logits [T, V] (or [1, V] with last_only)."""
    ids = torch.tensor([tokens])
    pos = torch.arange(start_pos, start_pos + len(tokens))[None]
    return runner.forward(ids, pos, [slot], **kw)[0]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() < tol


def linear_decoding(hf, model, backend: str = "eager") -> None:
    """Prefill 7, three decode steps, a 3-token chunk, rollback to 8 and a different decode."""
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, VOCAB, (13,), generator=g).tolist()
    ref = ref_logits(hf, seq)
    runner = ModelRunner(model, 2, backend=backend)
    assert close(step(runner, 1, seq[:7], 0), ref[:7])
    for i in range(7, 10):
        assert close(step(runner, 1, seq[i:i + 1], i), ref[i:i + 1])
    assert close(step(runner, 1, seq[10:13], 10), ref[10:13])
    assert runner.cache.lengths == [0, 13]
    runner.cache.truncate(1, 8)
    other = [(t + 5) % VOCAB for t in seq[8:11]]
    ref2 = ref_logits(hf, seq[:8] + other)
    assert close(step(runner, 1, other[:1], 8), ref2[8:9])
    assert close(step(runner, 1, other[1:], 9, last_only=True), ref2[10:11])
    assert runner.cache.lengths == [0, 11]


@pytest.fixture(params=["eager", "static"])
def backend(request):
    """The runner's attention backend: static is what CUDA graphs capture, run eagerly here."""
    return request.param


def test_linear_decoding_matches_hf(pair, backend):
    linear_decoding(*pair, backend)


def test_ragged_batch_matches_unbatched(pair, backend):
    hf, model = pair
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 12))
    ref_a, ref_b = ref_logits(hf, a), ref_logits(hf, b)
    runner = ModelRunner(model, 3, backend=backend)
    # ragged prefill on empty slots given in non-consecutive order: row 0 has 2 padding tokens
    ids = torch.tensor([a[:5] + [0, 0], b[:7]])
    out = runner.forward(ids, torch.arange(7).expand(2, 7), [2, 0], num_new=[5, 7])
    assert close(out[0, :5], ref_a[:5]) and close(out[1], ref_b[:7])
    assert runner.cache.lengths == [7, 0, 5]
    # rows at different lengths, ragged again, last-token logits only
    ids = torch.tensor([a[5:9], b[7:10] + [0]])
    pos = torch.tensor([[5, 6, 7, 8], [7, 8, 9, 10]])
    out = runner.forward(ids, pos, [2, 0], num_new=[4, 3], last_only=True)
    assert close(out[:, 0], torch.stack([ref_a[8], ref_b[9]]))
    # batched single-token decode with unequal lengths, slots in consecutive order
    out = runner.forward(torch.tensor([[b[10]], [0]]), torch.tensor([[10], [0]]), [0, 1])
    assert close(out[0], ref_b[10:11]) and runner.cache.lengths == [11, 1, 9]


def test_tree_mask_matches_separate_branches(pair, backend):
    hf, model = pair
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, VOCAB, (5,), generator=g).tolist()
    br_a, br_b = [11, 12], [21, 22]
    runner = ModelRunner(model, 1, backend=backend)
    step(runner, 0, prefix, 0)
    # rows 0-4 prefix; a1,a2 at rows 5,6; b1,b2 at rows 7,8; branch-local positions 5,6
    mask = torch.zeros(1, 4, 9, dtype=torch.bool)
    mask[0, :, :5] = True
    for q, visible in enumerate([[5], [5, 6], [7], [7, 8]]):
        mask[0, q, visible] = True
    out = runner.forward(torch.tensor([br_a + br_b]), torch.tensor([[5, 6, 5, 6]]), [0],
                        attn_mask=mask)[0]
    assert close(out[:2], ref_logits(hf, prefix + br_a)[5:])
    assert close(out[2:], ref_logits(hf, prefix + br_b)[5:])
    # drop the tree, then decode branch b linearly: the scratch rows must not leak
    runner.cache.truncate(0, 5)
    assert close(step(runner, 0, br_b, 5), ref_logits(hf, prefix + br_b)[5:])


def test_context_overflow(pair, backend):
    _, model = pair
    runner = ModelRunner(model, 1, 8, backend=backend)
    step(runner, 0, list(range(7)), 0)
    with pytest.raises(ContextOverflow):
        step(runner, 0, [1, 2], 7)
    assert runner.cache.lengths == [7]
    step(runner, 0, [1], 7)
    with pytest.raises(ContextOverflow):
        step(runner, 0, [1], 8)


def test_bad_mask_shape_rejected(pair, backend):
    _, model = pair
    runner = ModelRunner(model, 1, backend=backend)
    with pytest.raises(ValueError):
        runner.forward(torch.tensor([[1, 2]]), torch.tensor([[0, 1]]), [0],
                      attn_mask=torch.ones(1, 2, 3, dtype=torch.bool))


@pytest.fixture(scope="module", params=["gpt2", "gpt_neox"])
def fallback_pair(request):
    torch.manual_seed(0)
    if request.param == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64)
    else:
        cfg = tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=64)
    hf = randomize(tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager"))
    return hf, HFCausalLM(hf)


def test_fallback_linear_decoding_matches_hf(fallback_pair):
    hf, model = fallback_pair
    assert model.max_context == 64 and not model.supports_tree_mask
    linear_decoding(hf, model)


def test_fallback_ragged_batch_and_tree_refusal(fallback_pair):
    hf, model = fallback_pair
    a, b = [3, 1, 4, 1, 5, 9], [2, 7, 1, 8]
    runner = ModelRunner(model, 2)
    ids = torch.tensor([a[:3] + [0], b])
    out = runner.forward(ids, torch.arange(4).expand(2, 4), [1, 0], num_new=[3, 4])
    assert close(out[0, :3], ref_logits(hf, a)[:3]) and close(out[1], ref_logits(hf, b))
    out = runner.forward(torch.tensor([a[3:6], [6, 0, 0]]), torch.tensor([[3, 4, 5], [4, 5, 6]]),
                         [1, 0], num_new=[3, 1], last_only=True)
    assert close(out[:, 0], torch.stack([ref_logits(hf, a)[5], ref_logits(hf, b + [6])[4]]))
    runner.cache.reset(1)
    assert close(step(runner, 1, b, 0), ref_logits(hf, b))
    with pytest.raises(ValueError, match="native model"):
        runner.forward(torch.tensor([[1]]), torch.tensor([[4]]), [1],
                      attn_mask=torch.ones(1, 1, 5, dtype=torch.bool))
