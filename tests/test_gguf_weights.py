"""The gguf weight format: a GGUF's quantized tensors run as stored (issue 11) compute the same
model as its fp32 conversion: logits within 1e-4 of the largest (summation order only), greedy SD
equals AR, mixed-type q/k/v run unfused and types without a kernel are dequantized at load. The
embedding stays quantized (its lookup is the dequantized table's, bit for bit), weights are views
of the file's map, and a model pickles as the file's path (a spawned SSD draft worker maps it).

Hidden size 256: K-quant rows hold whole 256-weight super-blocks."""
from __future__ import annotations

import logging
import pickle
import shutil

import gguf
import pytest
import torch
import torch.nn.functional as F

from ssdecode.engine.llm import LLM
from ssdecode.kernels import ggml
from ssdecode.models.gguf_file import GGUFFile
from ssdecode.models.gguf_weights import MappedEmbedding, MappedLinear
from ssdecode.models.linear import QuantizedLinear, SplitLinear
from ssdecode.models.loader import ModelLoadError, load_model, load_tokenizer, resolve_model
from ssdecode.params import SamplingParams
from ssdecode.runtime.runner import ModelRunner
from test_loaders import tiny_model, write_gguf

Q = gguf.GGMLQuantizationType
SIZES = dict(hidden_size=256, intermediate_size=512)
pytestmark = pytest.mark.skipif(not ggml.is_available(), reason="the GGUF kernels do not build here")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path / "cache"))


def demo_like(name: str):
    """Q4_K_M-like: Q8_0 q/k/v, Q6_K down and embedding (tied head), Q4_K the rest."""
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
        return Q.Q8_0
    return Q.Q6_K if "down_proj" in name or "embed" in name else Q.Q4_K


def mixed(name: str):
    """q/k/v of three types (one without a kernel: Q5_1), gate/up apart."""
    return {"q_proj": Q.Q4_K, "k_proj": Q.Q8_0, "v_proj": Q.Q5_1, "gate_proj": Q.Q6_K}.get(
        name.split(".")[-2], Q.Q4_K)


def both(path):
    return load_model(path, weights="gguf"), load_model(path, weights="dense")


def logits(model) -> list[torch.Tensor]:
    """A 7-token prefill, then one decode step."""
    runner = ModelRunner(model, 1, 16)
    return [runner.forward(torch.tensor([[5, 17, 42, 3, 77, 9, 60]]), torch.arange(7)[None], [0]),
            runner.forward(torch.tensor([[11]]), torch.tensor([[7]]), [0])]


def assert_same_logits(stored, dense):
    for a, b in zip(logits(stored), logits(dense)):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("llama", False)])
def test_as_stored_equals_converted(arch, tied, tmp_path):
    stored, dense = both(write_gguf(tiny_model(arch, tied, **SIZES), tmp_path / "m.gguf", demo_like))
    layer = stored.layers[0]
    assert isinstance(layer.qkv, QuantizedLinear) and layer.qkv.qtype == "Q8_0"
    assert (layer.gate_up.qtype, layer.down.qtype, stored.lm_head.qtype) == ("Q4_K", "Q6_K", "Q6_K" if tied else "Q4_K")
    assert isinstance(stored.embed, MappedEmbedding) and isinstance(layer.gate_up, MappedLinear)  # adjacent: one map
    if tied:  # the head packs the embedding's blocks from the file (the lookup reads them in place)
        assert isinstance(stored.lm_head, MappedLinear) and stored.lm_head.offset == stored.embed.offset
    assert_same_logits(stored, dense)
    clone = pickle.loads(pickle.dumps(stored))  # the SSD transport pickles models
    assert clone.embed.file is clone.layers[0].gate_up.file  # one map of the file, not bytes
    assert_same_logits(clone, dense)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.Q5_0, Q.F16])
def test_embedding_lookup_is_the_dequantized_table(qtype, tmp_path):
    """Rows dequantized per lookup (any type gguf reads; F16 as a plain fp32 table) are the
    rows of the table the conversion dequantizes, bit for bit, repeats and batches included."""
    path = write_gguf(tiny_model("qwen2", **SIZES), tmp_path / "m.gguf", lambda n: qtype if "embed" in n else Q.Q8_0)
    stored, dense = both(path)
    ids = torch.tensor([[5, 17, 5, 95, 0], [3, 3, 77, 9, 60]])
    assert torch.equal(stored.embed(ids), F.embedding(ids, dense.embed.weight))
    assert isinstance(stored.embed, MappedEmbedding) == (qtype != Q.F16)


def test_header_index_is_ggufs_reader(tmp_path):
    """Our header parse (arrays skipped) finds gguf's tensors, data and scalar metadata."""
    path = write_gguf(tiny_model("llama", **SIZES), tmp_path / "m.gguf", mixed)
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    assert len(ours.tensors) == len(theirs.tensors)
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.name, a.tensor_type, a.shape.tolist(), a.n_bytes, a.data_offset) == (
            b.name, b.tensor_type, b.shape.tolist(), b.n_bytes, b.data_offset)
        assert a.data.dtype == b.data.dtype and (a.data == b.data).all()
    scalars = {k: f.contents() for k, f in theirs.fields.items()
               if not k.startswith("GGUF.") and f.types[0] != gguf.GGUFValueType.ARRAY}
    assert {k: f.contents() for k, f in ours.fields.items()} == scalars


def test_mixed_types_run_unfused(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ssdecode.models.gguf_weights"):
        stored, dense = both(write_gguf(tiny_model("llama", **SIZES), tmp_path / "m.gguf", mixed))
    assert caplog.text.count("no kernel for GGUF type Q5_1") == 1
    qkv, gate_up = stored.layers[1].qkv, stored.layers[1].gate_up
    assert isinstance(qkv, SplitLinear) and isinstance(gate_up, SplitLinear)
    assert [type(p).__name__ for p in qkv.linears][:2] == ["QuantizedLinear"] * 2
    assert not isinstance(qkv.linears[2], QuantizedLinear)  # Q5_1: dequantized at load
    assert_same_logits(stored, dense)


def test_greedy_sd_with_a_gguf_target_equals_ar(tmp_path):
    path = write_gguf(tiny_model("qwen2", True, **SIZES), tmp_path / "m.gguf", demo_like)
    assert_greedy_sd_equals_ar(path, load_model(path, weights="gguf"), load_model(path, weights="dense"))


def assert_greedy_sd_equals_ar(path, target, draft):
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    prompts = [[5, 17, 42], [3, 77, 9, 60, 1]]
    runs = {mode: LLM.from_models(load_tokenizer(path), target, draft, mode=mode, k=3).generate(prompts, params)
            for mode in ("ar", "sd")}
    assert [c.token_ids for c in runs["sd"]] == [c.token_ids for c in runs["ar"]]


def test_a_gguf_draft_travels_to_a_spawned_worker(tmp_path):
    """Greedy SSD with the gguf draft pickled into a worker process (which maps the file) equals AR."""
    path = write_gguf(tiny_model("llama", **SIZES), tmp_path / "m.gguf", demo_like)
    target, draft = load_model(path, weights="dense"), load_model(path, weights="gguf")
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    prompts = [[5, 17, 42], [3, 77, 9, 60, 1]]
    with LLM.from_models(load_tokenizer(path), target, draft) as llm:
        ar = llm.generate(prompts, params)
        llm.configure("ssd", k=3, ssd={"transport": "process", "draft_threads": 1})
        assert llm.strategy.deploy.transport == "process"
        assert [c.token_ids for c in llm.generate(prompts, params)] == [c.token_ids for c in ar]


def test_the_gguf_given_is_read(tmp_path):
    """A copy of a GGUF hits the cached conversion of the original, which records the original:
    the weights still come from the copy. A folder whose recorded GGUF is gone says so."""
    first = write_gguf(tiny_model("qwen2", True, **SIZES), tmp_path / "m.gguf", demo_like)
    folder = resolve_model(first)
    copy = shutil.copy(first, tmp_path / "copy.gguf")
    first.unlink()
    assert isinstance(load_model(copy, weights="gguf").lm_head, QuantizedLinear)
    with pytest.raises(ModelLoadError, match="gone or changed"):
        load_model(folder, weights="gguf")


@pytest.mark.real
def test_real_demo_draft_as_stored():
    """The demo draft (Q5_0 embedding and layers, Q8_0 head, some K-quants) as stored: logits of a
    prompt as its fp32 conversion's, within summation order. Loaded one after the other (~2.5 GB)."""
    ids = torch.tensor([[151644, 872, 198, 7985, 264, 10135, 729, 13, 151645, 198, 151644, 77091, 198]])
    stored = load_model("demo-draft", weights="gguf")
    assert isinstance(stored.embed, MappedEmbedding) and stored.embed.qtype == "Q5_0"
    got, rows = ModelRunner(stored, 1, 16).forward(ids, torch.arange(ids.shape[1])[None], [0]), stored.embed(ids)
    del stored
    dense = load_model("demo-draft", weights="dense")
    want = ModelRunner(dense, 1, 16).forward(ids, torch.arange(ids.shape[1])[None], [0])
    assert torch.equal(rows, F.embedding(ids, dense.embed.weight))
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_int8_activations_model_is_near_and_greedy_sd_equals_ar(tmp_path):
    """gguf-a8: the Q4_K and Q6_K products of decode round the activations (llama.cpp's way), so
    its logits are near the converted model's but not within fp32 rounding; speculative decoding is
    exact to it: greedy SD equals its AR, and a pickled copy (a worker's) rounds the same."""
    path = write_gguf(tiny_model("qwen2", True, **SIZES), tmp_path / "m.gguf", demo_like)
    a8, dense = load_model(path, weights="gguf-a8"), load_model(path, weights="dense")
    assert a8.weight_format == "gguf-a8" and a8.layers[0].gate_up.activations == "int8"
    assert a8.layers[0].qkv.activations == "fp32"  # Q8_0: no int8 kernel
    step_a8, step_dense = logits(a8)[1], logits(dense)[1]
    err = (step_a8 - step_dense).abs().max() / step_dense.abs().max()
    assert 1e-4 < err < 5e-2
    assert torch.equal(logits(pickle.loads(pickle.dumps(a8)))[1], step_a8)
    assert_greedy_sd_equals_ar(path, a8, dense)


def test_int8_activations_target_is_sampled_exactly(tmp_path):
    """SD against a gguf-a8 target (every product Q4_K or Q6_K, so int8 activations throughout):
    the first two tokens of 4000 rows follow the target's exact distribution (exactness.py's
    chi-square check, the reference from the target's own logits). Temperature 10: this random
    model's logits spread over ~40 nats; so tempered, ~27 two-token outcomes carry the mass."""
    from exactness import chi_square_check, exact_target_distribution
    from tiny import tiny_model as tiny_native

    path = write_gguf(tiny_model("qwen2", True, **SIZES), tmp_path / "m.gguf",
                      lambda n: Q.Q6_K if "down_proj" in n or "embed" in n else Q.Q4_K)
    target = load_model(path)  # the default for a GGUF model
    assert target.weight_format == "gguf-a8"
    draft = tiny_native(1, vocab=target.vocab_size)
    params, prompt, n = SamplingParams(temperature=10.0), [5, 17, 42], 4000
    llm = LLM.from_models(load_tokenizer(path), target, draft, mode="sd", k=3, max_num_seqs=n,
                          max_model_len=len(prompt) + 2)
    rows = [SamplingParams(temperature=10.0, max_tokens=2, ignore_eos=True, seed=1000 + i) for i in range(n)]
    samples = [tuple(c.token_ids) for c in llm.generate([prompt] * n, rows)]
    chi_square_check(samples, exact_target_distribution(target, params, prompt, 2))


@pytest.mark.parametrize("weights", ["gguf", "gguf-a8"])
def test_verification_keeps_decode_bits(weights, tmp_path):
    """Three decode steps and one three-token forward over the same tokens give the same logits,
    bit for bit, at every context from 90 to 130 (across 16-key boundaries, where SDPA's blocked
    sums differed): the products and the attention compute each token alone."""
    model = load_model(write_gguf(tiny_model("qwen2", True, **SIZES), tmp_path / "m.gguf", demo_like), weights=weights)
    runner = ModelRunner(model, 1, 200)
    g = torch.Generator().manual_seed(2)
    runner.forward(torch.randint(0, 90, (1, 90), generator=g), torch.arange(90)[None], [0])
    for start in range(90, 130):
        toks = torch.randint(0, 90, (1, 3), generator=g)
        steps = [runner.forward(toks[:, i:i + 1], torch.tensor([[start + i]]), [0])[0, 0] for i in range(3)]
        runner.cache.truncate(0, start)
        rows = runner.forward(toks, (start + torch.arange(3))[None], [0])[0]
        runner.cache.truncate(0, start + 1)
        assert all(torch.equal(steps[i], rows[i]) for i in range(3)), start
