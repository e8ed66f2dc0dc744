"""``ssdecode bench --serve`` end to end on tiny Hugging Face folders: one server process per mode,
closed-loop streaming clients at each concurrency level, every request's tokens counted, and the
modes' greedy texts equal (they are exact)."""
from __future__ import annotations

import json

from server_support import save_tiny_pair
from ssdecode.cli import main


def test_serve_bench_runs_every_mode_and_level(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    target, draft = save_tiny_pair(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 w3\nw4 w5\nw6 w7 w8 w9\n")
    code = main(["bench", "--serve", "--modes", "ar,sd,ssd", "--target", str(target), "--draft", str(draft),
                 "--prompts", str(prompts), "--num-prompts", "3", "--max-tokens", "6", "--concurrency", "1,2",
                 "--threads", "1", "--sd-k", "2", "--k", "2", "--draft-threads", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = result["serve_bench"]
    assert [(r["mode"], r["concurrency"]) for r in rows] == [(m, n) for m in ("ar", "sd", "ssd") for n in (1, 2)]
    for r in rows:
        assert r["requests"] == 3 and r["output_tokens"] == 18 and r["output_tokens_per_s"] > 0
        assert r["ttft_p50_ms"] is not None and r["text_matches_first_mode"] == 1.0
    assert all(r["acceptance"] is not None for r in rows if r["mode"] != "ar")
    assert all(r["hit_rate"] is not None for r in rows if r["mode"] == "ssd")
