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

from ssdecode.config.settings import DEFAULT_MAX_NUM_SEQS, DecodingSettings, EngineSettings
from ssdecode.decoding.base import Health
from ssdecode.decoding.build import Models, build_strategy
from ssdecode.decoding.vocab import check_compatible
from ssdecode.engine.core import EngineCore
from ssdecode.engine.request import Request
from ssdecode.models.base import CausalLM
from ssdecode.models.loader import load_model, load_tokenizer
from ssdecode.params import InvalidParams, SamplingParams
from ssdecode.plan.pick import pick_draft

log = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated ids only
    finish_reason: str
    prompt_tokens: int
    stats: dict = field(default_factory=dict)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
    def __init__(self, settings: EngineSettings | None = None, **kwargs):
        """Load the models of ``settings`` (or of keyword arguments, ``EngineSettings.build``'s:
        ``target``, ``draft``, ``mode``, ``k``, ``device``, ``weights``, ``draft_weights``, ``ssd``,
        ``max_num_seqs``, ...). A model is named by an alias (demo-target, demo-draft), an HF folder,
        a .gguf file or a hub id; its weights run in the format asked for (models/linear.py; auto
        runs a GGUF model's tensors as stored; a draft's ``int8``, ``int4`` or ``q4k`` keeps decoding
        exact, since the verifier uses the q the draft sampled from). Bad settings fail before the
        slow load."""
        if settings is None:
            settings = EngineSettings.build(**kwargs)
        elif kwargs:
            raise InvalidParams("pass EngineSettings or keyword arguments, not both")
        device = settings.device or default_device()
        tokenizer = load_tokenizer(settings.target)
        target = load_model(settings.target, device=device, dtype=settings.dtype, weights=settings.weights)
        draft = draft_tokenizer = None
        draft_source, draft_weights = settings.draft_source, settings.draft_weights
        if draft_source is not None:
            draft_tokenizer = load_tokenizer(draft_source)
            draft = load_model(draft_source, device=device, dtype=settings.dtype, weights=draft_weights)
            if settings.decoding.mode == "auto" and draft_weights == "auto":
                draft, draft_weights = pick_draft(target, draft, draft_source, settings.decoding.acceptance_prior)
        self._attach(tokenizer, Models(target, draft, draft_source, draft_weights), draft_tokenizer,
                     settings.max_num_seqs, settings.max_model_len)
        self.configure(settings.decoding)

    @classmethod
    def from_models(cls, tokenizer, target: CausalLM, draft: CausalLM | None = None,
                    decoding: DecodingSettings | None = None, draft_tokenizer=None, draft_source=None,
                    draft_weights: str = "auto", max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                    max_model_len: int | None = None, **kwargs) -> LLM:
        """An LLM over already-built models (tests, embedding in another program); ``decoding``,
        or keyword arguments for ``DecodingSettings.build`` (``mode``, ``k``, ``ssd``, ...)."""
        llm = cls.__new__(cls)
        llm._attach(tokenizer, Models(target, draft, draft_source, draft_weights), draft_tokenizer or tokenizer,
                    max_num_seqs, max_model_len)
        llm.configure(decoding, **kwargs)
        return llm

    def _attach(self, tokenizer, models: Models, draft_tokenizer, max_num_seqs: int,
                max_model_len: int | None) -> None:
        if models.draft is not None:
            check_compatible(tokenizer, draft_tokenizer, models.target, models.draft)
        self.tokenizer, self.models = tokenizer, models
        self.target, self.draft = models.target, models.draft
        self.device = models.target.device
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.strategy = self.core = None

    def configure(self, decoding: DecodingSettings | str | None = None, **kwargs) -> None:
        """Switch decoding strategy, keeping the loaded models (benchmarks compare modes so):
        ``decoding``, or a mode and keyword arguments for ``DecodingSettings.build`` (``k``,
        ``min_confidence``, ``ssd``, ``cuda_graphs``). Builds a new engine core; requests still
        in the old one are dropped."""
        if not isinstance(decoding, DecodingSettings):
            decoding = DecodingSettings.build(decoding or kwargs.pop("mode", "ar"), **kwargs)
        elif kwargs:
            raise InvalidParams("pass DecodingSettings or keyword arguments, not both")
        strategy, choice = build_strategy(decoding, self.models)
        if self.core is not None:
            self.core.close()
        self.strategy, self.choice, self.decoding, self.core = strategy, choice, decoding, None
        try:
            self.core = EngineCore(strategy, self.tokenizer, self._eos_ids(), self.target.max_context,
                                   self.target.vocab_size, self.max_num_seqs, self.max_model_len)
        except BaseException:
            strategy.close()
            raise

    @property
    def mode(self) -> str:
        return self.decoding.mode

    @property
    def strategy_name(self) -> str:
        """What runs the rounds: ar, sd, ssd or auto (auto that picked SSD runs ssd)."""
        return self.strategy.name

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

    def generate(self, prompts: str | list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None,
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

    def health(self) -> Health:
        """Whether every part of the strategy serves (SSD: its draft worker); exact either way."""
        return self.strategy.health()

    def poll(self) -> None:
        """The strategy's background work while idle (on the thread that drives the engine)."""
        self.strategy.poll()

    def stats(self) -> dict:
        """The strategy's own metrics (SSD: the worker's; on the thread that drives the engine)."""
        return self.strategy.stats()

    def close(self) -> None:
        self.core.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
