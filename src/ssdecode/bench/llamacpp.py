"""llama.cpp as a peer (issue 11): its AR and its speculative decoding on the same GGUF files.

Runs llama.cpp's own binaries (built separately, never shipped with ssdecode) and parses their
logs:

- ``llama-bench -o json``: the llama-bench tg figure (a synthetic prompt, decode only);
- ``llama-completion`` per real prompt, greedy, ``--ignore-eos``, ``-n max_tokens``: AR tokens/s
  on the prompts our bench decodes;
- ``llama-speculative-simple`` (or ``llama-speculative``) per real prompt, greedy, a draft of
  ``k`` tokens a step (``--spec-draft-n-max k --spec-draft-p-min 0``: no confidence cut, as our
  fixed-K SD): tokens/s and
  acceptance.

Every per-prompt run is a process of its own (model load not timed: the numbers come from
llama.cpp's own timers). ``tokens_per_s`` counts prompt processing plus decoding, like our runner
(which times the whole ``generate``); ``decode_tokens_per_s`` is llama.cpp's decode-only figure.
Rows are shaped like ``SystemResult.row`` (system, prompts, tokens_per_s, speedup_vs_ar,
acceptance, mean_accepted_len, matches_ar) so they merge into ``ssdecode bench``'s table and
JSON; ``matches_ar`` here compares the generated *text* with llama.cpp's own AR.

Prompts are strings fed to llama.cpp as they are (special tokens parsed): chat prompts must be
rendered through the chat template first (:func:`render_prompts` does it as ``LLM.encode``).

Seen with llama.cpp 0c1e570 (llama-cpp-python 0.3.36's vendored tree) on the demo pair:

- speculative decoding needs ``--spec-type draft-simple`` (no default type; without it
  "failed to initialize speculative decoding");
- its output is not always token-identical to its own AR: batched verification rounds
  differently from one-token decoding and near-ties flip (once at the second generated token,
  with K=7 and 8), so ``matches_ar`` can be below 1;
- on 2 busy cores it was slower than its AR at every K (4..8) despite 65-84% acceptance: a
  5-token verify cost ~3.3 single-token steps and a 0.5B draft token ~half a 1.5B one;
- ``-march=native`` on a CPU reporting AMX built kernels that die with SIGILL (``tilezero``) in
  this VM: build with ``-DGGML_NATIVE=OFF`` and the AVX-512 options, AMX off;
- with the default (spinning) OpenMP wait, 2 threads on a CPU shared with busy processes were
  ~10x slower than 1 thread; ``omp_wait_policy="PASSIVE"`` avoids that.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ssdecode.bench.prompts import load_prompts
from ssdecode.engine.llm import clean_text
from ssdecode.models.loader import load_tokenizer

log = logging.getLogger(__name__)

AR_BINARY = "llama-completion"
BENCH_BINARY = "llama-bench"
SPEC_BINARIES = ("llama-speculative-simple", "llama-speculative")
DEFAULT_CTX = 2048
DEFAULT_TIMEOUT_S = 900.0


class LlamaCppError(RuntimeError):
    """A llama.cpp binary is missing, crashed, timed out, or printed nothing we could parse."""


# ----------------------------------------------------------------------------- parsing

_FLOAT = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|nan|inf|-nan)"
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*" + _FLOAT + r" ms /\s*(\d+) tokens")
_EVAL = re.compile(r"(?<!prompt )eval time =\s*" + _FLOAT + r" ms /\s*(\d+) runs")
_LOAD = re.compile(r"load time =\s*" + _FLOAT + r" ms")
_ENCODED = re.compile(r"encoded\s+(\d+) tokens in\s+" + _FLOAT + r" seconds")
_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+" + _FLOAT + r" seconds")
_KV = re.compile(r"\b(n_draft|n_predict|n_drafted|n_accept)\s*=\s*(\d+)\s*$", re.M)
_ACCEPT = re.compile(r"accept\s*=\s*" + _FLOAT + "%")


def _f(s: str) -> float:
    return float("nan") if "nan" in s else float(s)


def parse_perf(log_text: str) -> dict:
    """The context perf block of a llama.cpp run (``llama-completion``, ``llama-simple``): the
    *first* ``prompt eval``/``eval`` lines (a speculative run prints the target's first).

    Returns prompt_tokens, prompt_ms, eval_runs, eval_ms, load_ms. ``eval_runs`` counts decode
    calls; the generated tokens are one more (the first comes from the prompt's logits)."""
    pe, ev = _PROMPT_EVAL.search(log_text), _EVAL.search(log_text)
    if not pe or not ev:
        raise LlamaCppError("no 'prompt eval time' / 'eval time' lines in the llama.cpp log")
    load = _LOAD.search(log_text)
    return {"prompt_tokens": int(pe.group(2)), "prompt_ms": _f(pe.group(1)),
            "eval_runs": int(ev.group(2)), "eval_ms": _f(ev.group(1)),
            "load_ms": _f(load.group(1)) if load else None}


def parse_speculative(log_text: str) -> dict:
    """The summary a ``llama-speculative(-simple)`` run prints at its end: prompt tokens and
    seconds, generated tokens and seconds, draft size, drafted and accepted draft tokens."""
    enc, dec = _ENCODED.search(log_text), _DECODED.search(log_text)
    if not enc or not dec:
        raise LlamaCppError("no 'encoded ... / decoded ...' lines in the llama-speculative log")
    kv = {k: int(v) for k, v in _KV.findall(log_text)}
    if "n_drafted" not in kv or "n_accept" not in kv:
        raise LlamaCppError("no 'n_drafted' / 'n_accept' lines in the llama-speculative log")
    acc = _ACCEPT.search(log_text)
    return {"prompt_tokens": int(enc.group(1)), "prompt_s": _f(enc.group(2)),
            "tokens": int(dec.group(1)), "decode_s": _f(dec.group(2)),
            "n_draft": kv.get("n_draft"), "n_drafted": kv["n_drafted"], "n_accept": kv["n_accept"],
            "accept_pct": _f(acc.group(1)) if acc else None}


def parse_bench_json(stdout: str) -> list[dict]:
    """``llama-bench -o json`` output: one dict per test with n_prompt, n_gen, n_threads, avg_ts,
    stddev_ts, samples_ts, model_type, build_commit (whatever llama-bench wrote)."""
    start = stdout.find("[")
    if start < 0:
        raise LlamaCppError("no JSON array in the llama-bench output")
    try:
        rows = json.loads(stdout[start:stdout.rindex("]") + 1])
    except ValueError as e:
        raise LlamaCppError(f"llama-bench output is not JSON: {e}") from e
    keep = ("model_type", "model_size", "n_threads", "n_prompt", "n_gen", "avg_ts", "stddev_ts",
            "samples_ts", "build_commit", "build_number", "cpu_info", "type_k", "n_batch")
    return [{k: r[k] for k in keep if k in r} for r in rows]


def generated_text(stdout: str, prompt: str) -> str:
    """The generated text in a run's stdout: llama.cpp echoes the prompt (speculative: after two
    newlines) and ends with blank lines. Trailing newlines are dropped on both sides, so the text
    compares between binaries (not with newlines a generation itself ended with)."""
    text = stdout
    if text.startswith("\n\n") and not prompt.startswith("\n"):
        text = text[2:]
    if text.startswith(prompt):
        text = text[len(prompt):]
    return text.rstrip("\n")


# ----------------------------------------------------------------------------- running

@dataclass
class Run:
    cmd: list[str]
    stdout: str
    stderr: str
    wall_s: float


@dataclass
class LlamaCpp:
    """The built binaries of one llama.cpp tree (``bin_dir``, e.g. ``build/bin``)."""
    bin_dir: Path
    threads: int = 2
    ctx: int = DEFAULT_CTX
    timeout_s: float = DEFAULT_TIMEOUT_S
    # OMP_WAIT_POLICY for the runs (None: llama.cpp's default, spinning). "PASSIVE" makes waiting
    # threads sleep: on a CPU shared with other busy processes, spinning at ggml's per-op barriers
    # made 2-thread decoding ~10x slower than 1 thread here (a waiter holds a core the thread it
    # waits for needs).
    omp_wait_policy: str | None = None
    _help: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.bin_dir = Path(self.bin_dir).expanduser()
        if not self.bin_dir.is_dir():
            raise LlamaCppError(f"llama.cpp binary directory {self.bin_dir} does not exist")

    def binary(self, name: str) -> Path:
        path = self.bin_dir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            have = sorted(p.name for p in self.bin_dir.glob("llama-*"))
            raise LlamaCppError(f"{name} not found (or not executable) in {self.bin_dir}; "
                                f"it has: {', '.join(have) or 'no llama-* binaries'}. Build it with "
                                f"`cmake --build BUILD --target {name}`")
        return path

    def run(self, cmd: list[str], what: str) -> Run:
        log.debug("llama.cpp %s: %s", what, " ".join(cmd))
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout_s,
                               env=self.env())
        except subprocess.TimeoutExpired as e:
            raise LlamaCppError(f"{what} timed out after {self.timeout_s:.0f} s: {' '.join(cmd)}") from e
        except OSError as e:
            raise LlamaCppError(f"{what} could not start ({e}): {' '.join(cmd)}") from e
        wall = time.perf_counter() - t0
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        if p.returncode != 0:
            how = f"signal {-p.returncode}" if p.returncode < 0 else f"exit status {p.returncode}"
            tail = "\n".join(err.strip().splitlines()[-15:])
            raise LlamaCppError(f"{what} failed ({how}): {' '.join(cmd)}\n--- stderr tail ---\n{tail}")
        return Run(cmd, out, err, wall)

    def env(self) -> dict:
        env = {**os.environ, "LC_ALL": "C"}
        if self.omp_wait_policy:
            env["OMP_WAIT_POLICY"] = self.omp_wait_policy
        return env

    def has_flag(self, name: str, flag: str) -> bool:
        """Whether ``name --help`` lists ``flag`` (flags were renamed across llama.cpp versions)."""
        if name not in self._help:
            try:
                p = subprocess.run([str(self.binary(name)), "--help"], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=60)
                self._help[name] = (p.stdout + p.stderr).decode("utf-8", "replace")
            except (OSError, subprocess.TimeoutExpired):
                self._help[name] = ""
        return re.search(re.escape(flag) + r"(?![-\w])", self._help[name]) is not None

    # -- commands

    def bench_cmd(self, model: str, n_gen: int, reps: int, n_prompt: int = 0) -> list[str]:
        return [str(self.binary(BENCH_BINARY)), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen),
                "-t", str(self.threads), "-r", str(reps), "-o", "json"]

    def ar_cmd(self, model: str, prompt: str, max_tokens: int) -> list[str]:
        return [str(self.binary(AR_BINARY)), "-m", str(model), "-p", prompt, "-n", str(max_tokens),
                "-t", str(self.threads), "-c", str(self.ctx), "--temp", "0", "--top-k", "1", "--ignore-eos",
                "-no-cnv", "--no-display-prompt", "--seed", "0"]

    def spec_cmd(self, binary: str, target: str, draft: str, prompt: str, max_tokens: int, k: int,
                 p_min: float = 0.0) -> list[str]:
        if self.has_flag(binary, "--spec-draft-n-max"):
            kflags = ["--spec-draft-n-max", str(k), "--spec-draft-n-min", "0",
                      "--spec-draft-p-min", str(p_min), "--spec-draft-threads", str(self.threads)]
            if self.has_flag(binary, "--spec-type"):  # no default type: init fails without it
                kflags += ["--spec-type", "draft-simple"]
        else:  # older llama.cpp
            kflags = ["--draft-max", str(k), "--draft-min", "0", "--draft-p-min", str(p_min),
                      "-td", str(self.threads)]
        return [str(self.binary(binary)), "-m", str(target), "-md", str(draft), "-p", prompt,
                "-n", str(max_tokens), "-t", str(self.threads), "-c", str(self.ctx), "--temp", "0",
                "--top-k", "1", "--ignore-eos", "--seed", "0", *kflags]

    # -- measurements

    def bench(self, model: str, n_gen: int = 128, reps: int = 3, n_prompt: int = 0) -> dict:
        """llama-bench's tg``n_gen`` (and pp``n_prompt`` when > 0): mean tokens/s over ``reps``."""
        r = self.run(self.bench_cmd(model, n_gen, reps, n_prompt), BENCH_BINARY)
        return {"tests": parse_bench_json(r.stdout), "command": r.cmd}

    def ar(self, model: str, prompt: str, max_tokens: int) -> dict:
        """One greedy completion of ``prompt``; ``max_tokens`` exactly (EOS banned)."""
        r = self.run(self.ar_cmd(model, prompt, max_tokens), AR_BINARY)
        perf = parse_perf(r.stderr)
        tokens = perf["eval_runs"] + 1
        return {**perf, "tokens": tokens, "seconds": (perf["prompt_ms"] + perf["eval_ms"]) / 1e3,
                "decode_s": perf["eval_ms"] / 1e3, "text": generated_text(r.stdout, prompt), "command": r.cmd}

    def speculative(self, target: str, draft: str, prompt: str, max_tokens: int, k: int,
                    binary: str = SPEC_BINARIES[0], p_min: float = 0.0) -> dict:
        """One greedy speculative completion of ``prompt`` with ``k`` draft tokens a step.
        llama.cpp may overshoot ``max_tokens`` by up to ``k`` (its loop stops after the step that
        passes it); ``tokens`` is what it generated and timed."""
        r = self.run(self.spec_cmd(binary, target, draft, prompt, max_tokens, k, p_min), binary)
        s = parse_speculative(r.stderr)
        return {**s, "seconds": s["prompt_s"] + s["decode_s"], "text": generated_text(r.stdout, prompt),
                "command": r.cmd}


def _aggregate(system: str, set_name: str, runs: list[dict], baseline: list[dict] | None) -> dict:
    tokens = sum(r["tokens"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    decode_s = sum(r["decode_s"] for r in runs)
    row = {"system": system, "prompts": set_name,
           "tokens_per_s": round(tokens / seconds, 3) if seconds else 0.0,
           "decode_tokens_per_s": round(tokens / decode_s, 3) if decode_s else 0.0,
           "tokens": tokens, "seconds": round(seconds, 3),
           "per_prompt_tokens_per_s": [round(r["tokens"] / r["seconds"], 3) if r["seconds"] else 0.0
                                       for r in runs],
           "acceptance": None, "mean_accepted_len": None, "hit_rate": None, "e_hit": None}
    if "n_drafted" in runs[0]:
        drafted = sum(r["n_drafted"] for r in runs)
        accepted = sum(r["n_accept"] for r in runs)
        row["acceptance"] = round(accepted / drafted, 4) if drafted else None
        k = runs[0]["n_draft"]
        # verify steps = tokens - accepted (each step yields its accepted drafts plus one)
        steps = tokens - accepted
        row["mean_accepted_len"] = round(1 + accepted / steps, 4) if steps > 0 else None
        row["draft_k"] = k
    if baseline is not None:
        same = sum(_prefix_match(r["text"], b["text"]) for r, b in zip(runs, baseline))
        row["matches_ar"] = round(same / len(runs), 3)
    row["commands"] = [r["command"] for r in runs]
    return row


def _prefix_match(a: str, b: str) -> bool:
    """Same greedy text up to the shorter one (a speculative run may overshoot by a few tokens)."""
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def run_llamacpp(bin_dir, target: str, draft: str, prompt_sets: dict[str, list[str]], max_tokens: int = 128,
                 threads: int = 2, ks=(5,), spec_binaries=(SPEC_BINARIES[0],), bench_reps: int = 3,
                 ctx: int = DEFAULT_CTX, p_min: float = 0.0, with_bench: bool = True,
                 omp_wait_policy: str | None = None) -> dict:
    """llama.cpp's AR and speculative decoding on the same prompts, as ``ssdecode bench`` rows.

    ``prompt_sets`` maps a set name to prompt strings, already chat-templated where that applies
    (:func:`render_prompts`). For each set: ``llamacpp-ar`` (llama-completion) and one row per
    speculative binary and K (``llamacpp-sd-k{K}``, ``llamacpp-specsimple``'s rows unprefixed;
    ``llamacpp-spec-sd-k{K}`` for ``llama-speculative``). Prompts run one after another, systems
    interleaved per prompt as our runner does. Returns ``{"bench": rows, "llama_bench": ...,
    "threads", "max_tokens", "bin_dir"}``; raises :class:`LlamaCppError` on a missing binary or
    a failed run."""
    lc = LlamaCpp(Path(bin_dir), threads=threads, ctx=ctx, omp_wait_policy=omp_wait_policy)
    for name in [AR_BINARY, *spec_binaries] + ([BENCH_BINARY] if with_bench else []):
        lc.binary(name)  # fail before any run
    for path in (target, draft):
        if not Path(path).is_file():
            raise LlamaCppError(f"GGUF file {path} not found")
    out: dict = {"bench": [], "max_tokens": max_tokens, "threads": threads, "bin_dir": str(lc.bin_dir),
                 "target": str(target), "draft": str(draft), "omp_wait_policy": omp_wait_policy,
                 "loadavg_start": _loadavg()}
    if with_bench:
        out["llama_bench"] = lc.bench(target, max_tokens, bench_reps)
        log.info("llama-bench: %s", [(t.get("n_gen"), t.get("avg_ts")) for t in out["llama_bench"]["tests"]])
    systems = [("llamacpp-ar", None, None)] + [(_spec_name(b, k), b, k) for b in spec_binaries for k in ks]
    for set_name, prompts in prompt_sets.items():
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in systems}
        for i, prompt in enumerate(prompts):
            for name, binary, k in systems:
                r = (lc.ar(target, prompt, max_tokens) if binary is None
                     else lc.speculative(target, draft, prompt, max_tokens, k, binary, p_min))
                runs[name].append(r)
                log.info("[%s %d/%d] %s: %d tokens in %.2f s (%.2f tok/s)%s", set_name, i + 1, len(prompts),
                         name, r["tokens"], r["seconds"], r["tokens"] / r["seconds"] if r["seconds"] else 0,
                         f", accept {r['n_accept']}/{r['n_drafted']}" if binary else "")
        base = _aggregate("llamacpp-ar", set_name, runs["llamacpp-ar"], None)
        base["speedup_vs_ar"] = 1.0
        base["matches_ar"] = 1.0
        out["bench"].append(base)
        for name, binary, _ in systems[1:]:
            row = _aggregate(name, set_name, runs[name], runs["llamacpp-ar"])
            row["speedup_vs_ar"] = (round(row["tokens_per_s"] / base["tokens_per_s"], 3) if base["tokens_per_s"]
                                    else None)
            row["binary"] = binary
            out["bench"].append(row)
    out["loadavg_end"] = _loadavg()
    return out


def _spec_name(binary: str, k: int) -> str:
    return f"llamacpp-sd-k{k}" if binary == SPEC_BINARIES[0] else f"llamacpp-{binary[len('llama-'):]}-k{k}"


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def render_prompts(prompts, tokenizer) -> list[str]:
    """``Prompt`` objects (bench.prompts) as the strings ``LLM.encode`` tokenizes: chat prompts as
    one user message through ``tokenizer``'s chat template, raw ones as they are (text cleaned the
    same way)."""

    out = []
    for p in prompts:
        if p.chat and getattr(tokenizer, "chat_template", None):
            out.append(tokenizer.apply_chat_template([{"role": "user", "content": clean_text(p.text)}],
                                                     tokenize=False, add_generation_prompt=True))
        else:
            out.append(clean_text(p.text))
    return out


def find_bin_dir(root) -> Path:
    """``root`` itself when it holds the binaries, else ``root/bin`` or ``root/build/bin``."""
    root = Path(root).expanduser()
    for d in (root, root / "bin", root / "build" / "bin"):
        if (d / AR_BINARY).exists() or (d / BENCH_BINARY).exists():
            return d
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ssdecode.bench.llamacpp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="directory of the llama.cpp binaries (or its build dir)")
    ap.add_argument("--target",
                    default=str(Path("~/.cache/ssdecode/gguf/qwen2.5-coder-1.5b-instruct.gguf").expanduser()))
    ap.add_argument("--draft",
                    default=str(Path("~/.cache/ssdecode/gguf/qwen2.5-coder-0.5b-instruct.gguf").expanduser()))
    ap.add_argument("--tokenizer", default=None, help="model whose chat template renders chat prompts "
                    "(default: --target through ssdecode's loader)")
    ap.add_argument("--prompts", default="humaneval,stdlib")
    ap.add_argument("--num-prompts", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", default="5", help="comma list of draft sizes")
    ap.add_argument("--spec-binary", default=SPEC_BINARIES[0], help="comma list: " + ", ".join(SPEC_BINARIES))
    ap.add_argument("--p-min", type=float, default=0.0, help="llama.cpp's draft confidence cut (0 = always draft K)")
    ap.add_argument("--bench-reps", type=int, default=3)
    ap.add_argument("--no-llama-bench", action="store_true")
    ap.add_argument("--omp-wait-policy", default=None, help="OMP_WAIT_POLICY for llama.cpp (PASSIVE helps on a "
                    "shared, busy CPU; default: llama.cpp's own)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")


    tokenizer = None
    names = args.prompts.split(",")
    sets = {n: load_prompts(n, args.num_prompts) for n in names}
    if any(p.chat for ps in sets.values() for p in ps):
        tokenizer = load_tokenizer(args.tokenizer or args.target)
    texts = {n: render_prompts(ps, tokenizer) for n, ps in sets.items()}
    try:
        res = run_llamacpp(find_bin_dir(args.bin), args.target, args.draft, texts, args.max_tokens, args.threads,
                           [int(k) for k in args.k.split(",")], args.spec_binary.split(","), args.bench_reps,
                           p_min=args.p_min, with_bench=not args.no_llama_bench,
                           omp_wait_policy=args.omp_wait_policy)
    except LlamaCppError as e:
        print(f"error: {e}")
        return 1
    for t in res.get("llama_bench", {}).get("tests", []):
        print(f"llama-bench pp{t.get('n_prompt')} tg{t.get('n_gen')} t={t.get('n_threads')}: "
              f"{t.get('avg_ts'):.2f} ± {t.get('stddev_ts'):.2f} tok/s")
    cols = ["system", "prompts", "tokens_per_s", "decode_tokens_per_s", "speedup_vs_ar", "acceptance",
            "mean_accepted_len", "matches_ar"]
    print(" | ".join(f"{c:>19}" for c in cols))
    for r in res["bench"]:
        print(" | ".join(f"{'-' if r.get(c) is None else r.get(c)!s:>19}" for c in cols))
    print(f"loadavg start {res['loadavg_start']} / end {res['loadavg_end']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
