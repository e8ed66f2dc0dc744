"""The Python API: ``LLM(target=..., mode=...).generate(prompts, SamplingParams(...))``.

Loads the models once, applies the chat template, picks the strategy, and builds the persistent
engine core (engine/core.py) that ``generate`` and ``stream`` drive: a thin client that adds its
requests and steps the core until they finish. AR, SD and SSD share everything but the strategy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ssdecode.engine.core import DEFAULT_MAX_NUM_SEQS, EngineCore, check_limits
from ssdecode.engine.request import Request
from ssdecode.models.base import CausalLM
from ssdecode.params import MODES, InvalidParams, SamplingParams

log = logging.getLogger(__name__)

DEFAULT_TARGET, DEFAULT_DRAFT = "demo-target", "demo-draft"
DEFAULT_K = 5


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated ids only
    finish_reason: str
    prompt_tokens: int
    stats: dict = field(default_factory=dict)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_settings(mode: str, k: int, ssd, min_confidence: float | None) -> None:
    """The decoding settings, checked without any model (InvalidParams names the bad one)."""
    if mode not in MODES:
        raise InvalidParams(f"mode must be one of {MODES}, got {mode!r}")
    if min_confidence is not None and not 0.0 < min_confidence < 1.0:
        raise InvalidParams(f"draft confidence threshold must be in (0, 1), got {min_confidence}")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise InvalidParams(f"K (draft tokens per round) must be an integer >= 1, got {k!r}")
    if mode in ("ssd", "auto"):  # auto may pick SSD
        from ssdecode.decoding.ssd.strategy import ssd_settings

        ssd_settings(k or DEFAULT_K, ssd)


def clean_text(text: str) -> str:
    """Prompt text as the tokenizer can take it: lone surrogates (bytes that were not UTF-8, as
    Python's command line or a JSON escape delivers them) become U+FFFD, like a lenient decode."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def encode_prompt(tokenizer, prompt: str, chat: bool = True) -> list[int]:
    """Token ids of a prompt: one user message through the chat template (when the model has one
    and ``chat``), else the raw text."""
    if chat and tokenizer.chat_template:
        return encode_chat(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer.encode(clean_text(prompt))


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation through the chat template, ready for the reply."""
    messages = [{**m, "content": clean_text(m["content"])} if isinstance(m.get("content"), str) else m
                for m in messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


class LLM:
    def __init__(self, target: str = DEFAULT_TARGET, draft: str | None = None, mode: str = "ar",
                 k: int | None = None, device: str | None = None, dtype: torch.dtype | None = None,
                 ssd=None, min_confidence: float | None = None, draft_weights: str = "auto",
                 max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, max_model_len: int | None = None,
                 weights: str = "auto", cuda_graphs: bool | None = None):
        """Load ``target`` (and ``draft`` for sd/ssd, default the demo draft) by spec: an alias
        (demo-target, demo-draft), an HF folder, a .gguf file or a hub id. ``weights`` and
        ``draft_weights``: the matmul weight formats (``models/linear.py``; auto runs a GGUF
        model's tensors as stored; a draft's ``int8`` or ``int4`` keeps decoding exact, since the verifier
        uses the q the draft sampled from).
        ``max_num_seqs`` requests run at once (more wait), each up to ``max_model_len`` tokens.
        ``cuda_graphs``: run decode, verification and the draft's steps with static shapes, as
        CUDA graphs on CUDA (runtime/graphs.py); None = on CUDA only; False = eager addressing."""
        from ssdecode.models.loader import load_model, load_tokenizer

        check_settings(mode, k, ssd, min_confidence)  # bad options fail before the slow load
        check_limits(max_num_seqs, max_model_len)
        device = device or default_device()
        tokenizer = load_tokenizer(target)
        target_model = load_model(target, device=device, dtype=dtype, weights=weights)
        draft_model = draft_tokenizer = None
        # auto without a draft speculates with the demo draft only for the demo target: another
        # target's tokenizer would not match it
        if draft is not None or mode in ("sd", "ssd") or (mode == "auto" and target == DEFAULT_TARGET):
            draft = draft or DEFAULT_DRAFT
            draft_tokenizer = load_tokenizer(draft)
            draft_model = load_model(draft, device=device, dtype=dtype, weights=draft_weights)
            if mode == "auto" and draft_weights == "auto":
                from ssdecode.plan.auto import pick_draft

                draft_model, draft_weights = pick_draft(target_model, draft_model, draft)
        self._attach(tokenizer, target_model, draft_model, draft_tokenizer, draft, draft_weights,
                     max_num_seqs, max_model_len, cuda_graphs)
        self.configure(mode, k, ssd, min_confidence)

    @classmethod
    def from_models(cls, tokenizer, target: CausalLM, draft: CausalLM | None = None, mode: str = "ar",
                    k: int | None = None, ssd=None, draft_tokenizer=None, draft_spec: str | None = None,
                    min_confidence: float | None = None, draft_weights: str = "auto",
                    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, max_model_len: int | None = None,
                    cuda_graphs: bool | None = None) -> "LLM":
        """An LLM over already-built models (tests, embedding in another program)."""
        llm = cls.__new__(cls)
        llm._attach(tokenizer, target, draft, draft_tokenizer or tokenizer, draft_spec, draft_weights,
                    max_num_seqs, max_model_len, cuda_graphs)
        llm.configure(mode, k, ssd, min_confidence)
        return llm

    def _attach(self, tokenizer, target: CausalLM, draft: CausalLM | None, draft_tokenizer,
                draft_spec: str | None, draft_weights: str, max_num_seqs: int,
                max_model_len: int | None, cuda_graphs: bool | None) -> None:
        from ssdecode.decoding.vocab import check_compatible

        if draft is not None:
            check_compatible(tokenizer, draft_tokenizer, target, draft)
        self.tokenizer, self.target, self.draft, self.draft_spec = tokenizer, target, draft, draft_spec
        self.draft_weights = draft_weights  # what a worker process loading ``draft_spec`` uses
        self.device = target.device
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.backend = None if cuda_graphs is None else "static" if cuda_graphs else "eager"
        self.strategy = self.core = None

    def configure(self, mode: str, k: int | None = None, ssd=None, min_confidence: float | None = None) -> None:
        """Switch decoding strategy, keeping the loaded models (benchmarks compare modes so).
        Builds a new engine core; requests still in the old one are dropped. ``k``: draft tokens
        per round (default 5), for auto the most it may pick (default 8).

        ``min_confidence`` (sd): stop a round's drafting after a token the draft is less sure of
        (K is then the most drafted per round)."""
        from ssdecode.decoding.autoregressive import ARStrategy
        from ssdecode.decoding.speculative import SDStrategy
        from ssdecode.decoding.vocab import align_draft

        check_settings(mode, k, ssd, min_confidence)
        if mode in ("sd", "ssd") and self.draft is None:
            raise InvalidParams(f"mode {mode!r} needs a draft model; this LLM was loaded without one")
        if self.core is not None:
            self.core.close()
        if mode in ("ssd", "auto") and (ssd is None or isinstance(ssd, dict)):
            ssd = dict(ssd or {})  # a worker process loads the draft like this LLM did
            ssd["draft_weights"] = ssd.get("draft_weights") or self.draft_weights
        self.choice = ""  # auto: what it picked and why
        if mode == "ar" or self.draft is None:
            self.strategy = ARStrategy(self.target)
            self.choice = "" if mode == "ar" else "ar: no draft model (pass one with --draft to speculate)"
        elif mode == "sd":
            self.strategy = SDStrategy(self.target, align_draft(self.draft, self.target), k or DEFAULT_K,
                                       min_confidence)
        elif mode == "auto":
            from ssdecode.plan.auto import build_auto_strategy

            self.strategy, self.choice = build_auto_strategy(
                self.target, align_draft(self.draft, self.target), self.draft_spec, k, ssd, min_confidence)
        else:
            from ssdecode.decoding.ssd.strategy import build_ssd_strategy

            self.strategy = build_ssd_strategy(self.target, align_draft(self.draft, self.target),
                                               self.draft_spec, k or DEFAULT_K, ssd)
        self.strategy.backend = self.backend
        self.mode = mode
        try:
            self.core = EngineCore(self.strategy, self.tokenizer, self._eos_ids(), self.target.max_context,
                                   self.target.vocab_size, self.max_num_seqs, self.max_model_len)
        except BaseException:
            self.strategy.close()
            raise

    @property
    def mode_label(self) -> str:
        """The mode, and for auto what it picked and why (the server's usage reports it)."""
        return f"auto: {self.choice}" if self.choice else self.mode

    def _eos_ids(self) -> set[int]:
        config = getattr(self.target, "config", None)
        ids = set(config.eos_token_ids) if config is not None else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    def encode(self, prompt: str, chat: bool = True) -> list[int]:
        """Token ids of a prompt (``encode_prompt``)."""
        return encode_prompt(self.tokenizer, prompt, chat)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation (``encode_chat``)."""
        return encode_chat(self.tokenizer, messages)

    def generate(self, prompts: str | list[str] | list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 chat: bool = True) -> list[Completion]:
        """Generate for a batch; rows finish independently (more than ``max_num_seqs`` rows
        queue for a slot). Token-id prompts skip templating."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [p if isinstance(p, list) else self.encode(p, chat) for p in prompts]
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(ids)
        if len(plist) != len(ids):
            raise InvalidParams(f"{len(plist)} SamplingParams for {len(ids)} prompts")
        for p in ids:  # refuse a bad prompt before any is queued
            self.core.check_prompt(p)
        rids = [self.core.add_request(p, sp) for p, sp in zip(ids, plist)]
        done: dict[int, Request] = {}
        try:
            while len(done) < len(rids):
                for out in self.core.step():
                    if out.finished:
                        done[out.request_id] = out.request
        except BaseException:
            self._abort(set(rids) - set(done))
            raise
        return [self._completion(done[r]) for r in rids]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None,
               chat: bool = True) -> Iterator[str | Completion]:
        """Yield text deltas as rounds commit tokens, then the final Completion."""
        ids = prompt if isinstance(prompt, list) else self.encode(prompt, chat)
        rid = self.core.add_request(ids, params or SamplingParams())
        try:
            while True:
                for out in self.core.step():
                    if out.request_id != rid:
                        continue
                    if out.text:
                        yield out.text
                    if out.finished:
                        yield self._completion(out.request)
                        return
        finally:  # a consumer that stops early (or an error) frees the slot
            self._abort({rid})

    def _abort(self, rids) -> None:
        for rid in rids:
            self.core.abort(rid)

    @staticmethod
    def _completion(req: Request) -> Completion:
        return Completion(req.text, list(req.output_ids), req.finish_reason, len(req.seq.prompt_ids),
                          req.metrics.summary())

    def close(self) -> None:
        self.core.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
