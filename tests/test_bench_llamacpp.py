"""bench/llamacpp.py: parsing llama.cpp's logs (captured samples; no llama.cpp binary needed)
and the runner's error paths and row shapes (with a fake binary directory)."""
import json
import os
import stat
import textwrap

import pytest

from ssdecode.bench import llamacpp as L

# llama-completion stderr tail (llama.cpp 0c1e570, Qwen2.5-Coder-1.5B Q4_K_M, 2 threads)
COMPLETION_LOG = textwrap.dedent("""\
    main: llama threadpool init, n_threads = 2
    system_info: n_threads = 2 (n_threads_batch = 2) / 2 | CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 |

    sampler seed: 0
    generate: n_ctx = 2048, n_batch = 2048, n_predict = 128, n_keep = 0

    common_perf_print:    sampling time =      30.41 ms
    common_perf_print:    samplers time =      12.30 ms /   255 tokens
    common_perf_print:        load time =     598.12 ms
    common_perf_print: prompt eval time =    1203.55 ms /   127 tokens """
    """(    9.48 ms per token,   105.52 tokens per second)
    common_perf_print:        eval time =    7012.40 ms /   127 runs   """
    """(   55.22 ms per token,    18.11 tokens per second)
    common_perf_print:       total time =    8301.77 ms /   254 tokens
    common_perf_print: unaccounted time =      55.41 ms /   0.7 %      (total - sampling - prompt eval - eval) / (total)
    common_perf_print:    graphs reused =        126
    llama_memory_breakdown_print: | memory breakdown [MiB] | """
    """total   free    self   model   context   compute    unaccounted |
    """)

# llama-speculative-simple stderr tail
SPEC_LOG = textwrap.dedent("""\
    encoded  127 tokens in    1.250 seconds, speed:  101.600 t/s
    decoded  131 tokens in    4.100 seconds, speed:   31.951 t/s

    n_draft   = 5
    n_predict = 131
    n_drafted = 140
    n_accept  = 103
    accept    = 73.571%

    draft:

    common_speculative_print_stats: statistics draft: #calls(b,g,a) = 1 28 28, #gen drafts = 28, #acc drafts = 27, """
    """#gen tokens = 140, #acc tokens = 103, dur(b,g,a) = 0.003, 1300.112, 0.110 ms

    target:

    common_perf_print:    sampling time =      40.00 ms
    common_perf_print:    samplers time =      20.00 ms /   131 tokens
    common_perf_print:        load time =     700.00 ms
    common_perf_print: prompt eval time =    5000.00 ms /   295 tokens """
    """(   16.95 ms per token,    59.00 tokens per second)
    common_perf_print:        eval time =      60.00 ms /     1 runs   """
    """(   60.00 ms per token,    16.67 tokens per second)
    common_perf_print:       total time =    6000.00 ms /   296 tokens
    """)

# real llama-completion stderr lines (timestamped log format; stdlib prompt 2, -n 64, 2 threads on
# a busy shared CPU with the default spinning OpenMP barrier: hence the slow eval)
COMPLETION_LOG_REAL = ("""\
0.06.993.796 I generate: n_ctx = 2048, n_batch = 2048, n_predict = 64, n_keep = 0
3.02.289.884 I common_perf_print:    sampling time =      72.88 ms
3.02.289.886 I common_perf_print:    samplers time =      25.55 ms /   110 tokens
3.02.289.887 I common_perf_print:        load time =    6099.34 ms
3.02.289.889 I common_perf_print: prompt eval time =    6575.54 ms /    46 tokens """
"""(  142.95 ms per token,     7.00 tokens per second)
3.02.289.892 I common_perf_print:        eval time =  168569.49 ms /    63 runs   """
"""( 2675.71 ms per token,     0.37 tokens per second)
3.02.289.893 I common_perf_print:       total time =  175302.42 ms /   109 tokens
3.02.289.895 I common_perf_print: unaccounted time =      84.51 ms /   0.0 %      """
"""(total - sampling - prompt eval - eval) / (total)
3.02.289.895 I common_perf_print:    graphs reused =         62
""")

BENCH_JSON = """[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "Intel(R) Xeon(R) Platinum",
    "model_type": "qwen2 1.5B Q4_K - Medium",
    "model_size": 1117320736,
    "n_batch": 2048,
    "n_threads": 2,
    "type_k": "f16",
    "n_prompt": 0,
    "n_gen": 128,
    "test_time": "2026-12-01T02:30:00Z",
    "avg_ns": 6100000000,
    "stddev_ns": 20000000,
    "avg_ts": 20.98,
    "stddev_ts": 0.07,
    "samples_ns": [6080000000, 6120000000],
    "samples_ts": [21.05, 20.91]
  }
]
"""


def test_parse_perf():
    p = L.parse_perf(COMPLETION_LOG)
    assert p == {"prompt_tokens": 127, "prompt_ms": 1203.55, "eval_runs": 127, "eval_ms": 7012.40,
                 "load_ms": 598.12}


def test_parse_perf_real_log():
    p = L.parse_perf(COMPLETION_LOG_REAL)
    assert (p["prompt_tokens"], p["prompt_ms"], p["eval_runs"], p["eval_ms"], p["load_ms"]) == \
        (46, 6575.54, 63, 168569.49, 6099.34)


def test_parse_perf_missing():
    with pytest.raises(L.LlamaCppError, match="prompt eval"):
        L.parse_perf("llama_model_load: error loading model\n")


def test_parse_speculative():
    s = L.parse_speculative(SPEC_LOG)
    assert s["prompt_tokens"] == 127 and s["prompt_s"] == 1.25
    assert s["tokens"] == 131 and s["decode_s"] == 4.1
    assert (s["n_draft"], s["n_drafted"], s["n_accept"]) == (5, 140, 103)
    assert s["accept_pct"] == pytest.approx(73.571)


def test_parse_speculative_with_log_prefixes():
    # builds with timestamps/prefixes in the log still parse
    prefixed = "\n".join(("0.01.234.567 I " + line) if line else line for line in SPEC_LOG.splitlines())
    s = L.parse_speculative(prefixed)
    assert (s["tokens"], s["n_drafted"], s["n_accept"]) == (131, 140, 103)


def test_parse_speculative_missing():
    with pytest.raises(L.LlamaCppError, match="encoded"):
        L.parse_speculative(COMPLETION_LOG)


def test_parse_bench_json():
    rows = L.parse_bench_json("some warning\n" + BENCH_JSON)
    assert rows == [{"model_type": "qwen2 1.5B Q4_K - Medium", "model_size": 1117320736, "n_threads": 2,
                     "n_prompt": 0, "n_gen": 128, "avg_ts": 20.98, "stddev_ts": 0.07,
                     "samples_ts": [21.05, 20.91], "build_commit": "0c1e570", "build_number": 1,
                     "cpu_info": "Intel(R) Xeon(R) Platinum", "type_k": "f16", "n_batch": 2048}]
    with pytest.raises(L.LlamaCppError):
        L.parse_bench_json("error: failed to load model\n")


def test_generated_text():
    prompt = "def f(x):\n"
    assert L.generated_text("\n\n" + prompt + "    return x\n\n\n\n", prompt) == "    return x"  # speculative
    assert L.generated_text("    return x\n\n", prompt) == "    return x"  # --no-display-prompt
    assert L.generated_text("\n\n" + prompt + "    return x", "\n" + prompt) == "\n\n" + prompt + "    return x"


def test_missing_bin_dir(tmp_path):
    with pytest.raises(L.LlamaCppError, match="does not exist"):
        L.LlamaCpp(tmp_path / "nope")


def test_missing_binary(tmp_path):
    (tmp_path / "llama-bench").write_text("")
    lc = L.LlamaCpp(tmp_path)
    with pytest.raises(L.LlamaCppError, match="llama-completion not found"):
        lc.binary("llama-completion")
    with pytest.raises(L.LlamaCppError, match="not found"):  # present but not executable
        lc.binary("llama-bench")


def _script(path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(os.name != "posix", reason="shell-script fake binaries")
def test_crash_is_reported(tmp_path):
    _script(tmp_path / "llama-completion", "echo 'llama_model_load: error loading model' >&2\nexit 1\n")
    lc = L.LlamaCpp(tmp_path)
    with pytest.raises(L.LlamaCppError, match=r"(?s)exit status 1.*error loading model"):
        lc.ar("m.gguf", "hi", 8)
    _script(tmp_path / "llama-completion", "kill -SEGV $$\n")
    with pytest.raises(L.LlamaCppError, match="signal 11"):
        lc.ar("m.gguf", "hi", 8)


@pytest.mark.skipif(os.name != "posix", reason="shell-script fake binaries")
def test_run_llamacpp_rows(tmp_path):
    gguf = tmp_path / "t.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "log_ar").write_text(COMPLETION_LOG)
    (tmp_path / "log_sd").write_text(SPEC_LOG)
    (tmp_path / "bench.json").write_text(BENCH_JSON)
    _script(tmp_path / "llama-completion", f"printf '    return x\\n'\ncat {tmp_path}/log_ar >&2\n")
    _script(tmp_path / "llama-speculative-simple",
            'case "$*" in *--help*) printf -- "--spec-draft-n-max N\\n--spec-type TYPES\\n"; exit 0;; esac\n'
            f"printf '\\n\\nP    return x\\n\\n\\n\\n'\ncat {tmp_path}/log_sd >&2\n")
    _script(tmp_path / "llama-bench", f"cat {tmp_path}/bench.json\n")
    _script(tmp_path / "llama-bench", f"echo $OMP_WAIT_POLICY >&2\ncat {tmp_path}/bench.json\n")
    assert L.LlamaCpp(tmp_path, omp_wait_policy="PASSIVE").run(
        [str(tmp_path / "llama-bench")], "bench").stderr.strip() == "PASSIVE"
    res = L.run_llamacpp(tmp_path, str(gguf), str(gguf), {"set": ["P", "P"]}, max_tokens=128, ks=(5,))
    assert res["llama_bench"]["tests"][0]["avg_ts"] == 20.98
    ar, sd = res["bench"]
    assert ar["system"] == "llamacpp-ar" and ar["prompts"] == "set"
    assert ar["tokens"] == 2 * 128
    assert ar["tokens_per_s"] == pytest.approx(256 / (2 * (1.20355 + 7.0124)), abs=1e-3)
    assert ar["decode_tokens_per_s"] == pytest.approx(256 / (2 * 7.0124), abs=1e-3)
    assert sd["system"] == "llamacpp-sd-k5" and sd["draft_k"] == 5
    assert sd["acceptance"] == pytest.approx(103 / 140, abs=1e-4)
    assert sd["mean_accepted_len"] == pytest.approx(1 + 103 / (131 - 103), abs=1e-4)
    assert sd["tokens_per_s"] == pytest.approx(131 / 5.35, abs=1e-3)
    assert sd["speedup_vs_ar"] == pytest.approx(sd["tokens_per_s"] / ar["tokens_per_s"], abs=1e-3)
    assert sd["matches_ar"] == 1.0
    cmd = sd["commands"][0]
    assert cmd[cmd.index("--spec-draft-n-max") + 1] == "5" and "--ignore-eos" in cmd
    assert cmd[cmd.index("--temp") + 1] == "0"
    assert cmd[cmd.index("--spec-type") + 1] == "draft-simple"
    json.dumps(res)  # plain JSON


@pytest.mark.skipif(os.name != "posix", reason="shell-script fake binaries")
def test_main_with_fake_binaries(tmp_path, capsys):
    bins = tmp_path / "build" / "bin"
    bins.mkdir(parents=True)
    gguf = tmp_path / "t.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "log_ar").write_text(COMPLETION_LOG)
    (tmp_path / "log_sd").write_text(SPEC_LOG)
    _script(bins / "llama-completion", f"printf 'x\\n'\ncat {tmp_path}/log_ar >&2\n")
    _script(bins / "llama-speculative-simple", f"printf 'x\\n'\ncat {tmp_path}/log_sd >&2\n")
    out = tmp_path / "res.json"
    assert L.main(["--bin", str(tmp_path), "--target", str(gguf), "--draft", str(gguf), "--prompts", "stdlib",
                   "--num-prompts", "1", "--k", "4,6", "--no-llama-bench", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["bench"]
    assert [r["system"] for r in rows] == ["llamacpp-ar", "llamacpp-sd-k4", "llamacpp-sd-k6"]
    assert "llamacpp-sd-k6" in capsys.readouterr().out
    # a missing binary: a clear error, exit status 1
    (bins / "llama-speculative-simple").unlink()
    assert L.main(["--bin", str(bins), "--target", str(gguf), "--draft", str(gguf), "--prompts", "stdlib",
                   "--num-prompts", "1", "--no-llama-bench"]) == 1
    assert "llama-speculative-simple not found" in capsys.readouterr().out


def test_render_prompts():
    from ssdecode.bench.prompts import Prompt

    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<|im_start|>user\n{messages[0]['content']}<|im_end|>\n<|im_start|>assistant\n"

    out = L.render_prompts([Prompt("hi", True), Prompt("def f():\n", False)], Tok())
    assert out == ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "def f():\n"]
