"""``ssdecode bench`` with auto, predictions and plots (issue 12) on the tiny pair: every system of
ours gets a prediction from the calibration, auto decodes greedily like AR, and the plots are
written from the result's numbers."""
from __future__ import annotations

import json

import pytest

from server_support import save_tiny_pair
from ssdecode.bench.predict import fitted_acceptance
from ssdecode.cli import main
from ssdecode.plan.theory import expected_tokens


@pytest.mark.parametrize("a,k", [(0.3, 2), (0.84, 5), (0.99, 8)])
def test_fitted_acceptance_inverts_the_expected_tokens(a, k):
    assert fitted_acceptance(expected_tokens(a, k), k) == pytest.approx(a, abs=1e-6)


def test_bench_predicts_and_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path / "cache"))
    target, draft = save_tiny_pair(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 w3\nw4 w5\n")
    out = tmp_path / "result.json"
    assert main(["bench", "--target", str(target), "--draft", str(draft), "--modes", "ar,sd,auto",
                 "--sd-k", "2", "--sd-confidence", "none,0.5", "--prompts", str(prompts), "--num-prompts", "2",
                 "--max-tokens", "8", "--no-hf", "--out", str(out), "--plot", str(tmp_path / "plots")]) == 0
    rows = {r["system"]: r for r in json.loads(out.read_text())["bench"]}
    assert set(rows) == {"ssdecode-ar", "ssdecode-sd-k2", "ssdecode-sd-k2-c0.5", "ssdecode-auto"}
    assert all(r["predicted_tokens_per_s"] > 0 and r["predicted_context"] > 3 for r in rows.values())
    assert 1 <= rows["ssdecode-sd-k2-c0.5"]["proposed_per_round"] <= 2
    assert rows["ssdecode-auto"]["matches_ar"] == 1.0 and rows["ssdecode-sd-k2"]["matches_ar"] == 1.0
    assert rows["ssdecode-auto"]["strategy"]["rounds_by_k"]
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"tokens_per_s.png", "acceptance_by_position.png", "predicted_vs_measured.png"} <= names
    assert "plot: " in capsys.readouterr().err
