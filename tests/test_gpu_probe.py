"""The GPU probe (scripts/gpu_check.sh) on tiny shapes on the CPU: its rows, replayed acceptance,
the Transformers comparison and the JSON line the GPU run is read from."""
import json

import torch
from tools import gpu_probe
from tools.gpu_shapes import RandomWeights, next_token_map, shape_config


def test_probe_tiny_cpu(capsys):
    rc = gpu_probe.main(["--device", "cpu", "--target", "tiny", "--draft", "tiny", "--tokens", "48",
                         "--prompt", "32", "--reps", "1", "--max-verify-k", "2", "--agree", "0.8"])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])["gpu_probe"]
    assert rc == 0 and result["greedy_outputs_agree"]
    assert [(r["mode"], r["cuda_graphs"]) for r in result["rows"]] == [
        ("ar", None), ("ar", False), ("sd", None), ("ssd", None)]
    for key in ("floor_ms", "decode_step_ms", "decode_step_eager_ms", "decode_step_over_floor", "engine_decode_step_ms",
                "weight_bytes", "elapsed_s"):
        assert result[key] is not None
    assert set(result["verify_ms_by_k"]) == {"1", "2"}
    for r in result["rows"][2:]:
        assert r["agree"] == 0.8 and r["label"] == gpu_probe.LABEL
        assert 0.5 < r["acceptance_measured"] < 1
        assert r["over_transformers"] > 0
    hf = result["transformers"]
    assert hf["matches_ar"] and hf["tokens_per_s"] > 0
    assert "acceptance replayed, random weights" in out


def test_draft_disagrees_on_the_asked_fraction():
    pi, draft = next_token_map(1000), next_token_map(1000, agree=0.84, seed=1)
    assert int((pi == draft).sum()) == 840
    assert torch.equal(torch.sort(draft).values, torch.arange(1000))  # still a permutation


def test_weights_are_the_same_on_every_read():
    w = RandomWeights(shape_config("tiny", 512), "cpu", torch.float32, 0)
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(w[name], w[name]) and len(w) == len(list(w))
    assert w.nbytes() - w.nbytes(skip_embedding=True) == 512 * 64 * 4
