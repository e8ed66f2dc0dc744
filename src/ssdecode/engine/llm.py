"""The Python API: ``LLM(target=..., mode=...).generate(prompts, SamplingParams(...))``.

Loads the models once, applies the chat template, picks the strategy once, and drives the
engine loop. AR, SD and SSD share everything here but the strategy object.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ssdecode.decoding.base import Strategy
from ssdecode.engine.engine import Engine
from ssdecode.engine.stopping import StopChecker
from ssdecode.params import InvalidParams, SamplingParams

log = logging.getLogger(__name__)

MODES = ("ar", "sd", "ssd")
DEFAULT_TARGET, DEFAULT_DRAFT = "demo-target", "demo-draft"


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated ids only
    finish_reason: str
    prompt_tokens: int
    stats: dict = field(default_factory=dict)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class LLM:
    def __init__(self, target: str = DEFAULT_TARGET, draft: str | None = None, mode: str = "ar",
                 k: int = 5, device: str | None = None, dtype: torch.dtype | None = None,
                 ssd=None):
        from ssdecode.models.loader import load_model, load_tokenizer

        if mode not in MODES:
            raise InvalidParams(f"mode must be one of {MODES}, got {mode!r}")
        if k < 1:
            raise InvalidParams(f"K (draft tokens per round) must be >= 1, got {k}")
        self.mode, self.device = mode, device or default_device()
        self.tokenizer = load_tokenizer(target)
        self.target = load_model(target, device=self.device, dtype=dtype)
        self.draft = self.draft_tokenizer = None
        if mode != "ar":
            draft = draft or DEFAULT_DRAFT
            self.draft_tokenizer = load_tokenizer(draft)
            self.draft = load_model(draft, device=self.device, dtype=dtype)
        self.strategy = self._build_strategy(mode, k, ssd, draft)
        self.engine = Engine(self.strategy, StopChecker(self.tokenizer, self._eos_ids(),
                                                        self.target.max_context),
                             self.target.max_context)

    def _build_strategy(self, mode: str, k: int, ssd, draft_spec: str | None) -> Strategy:
        from ssdecode.decoding.autoregressive import ARStrategy
        from ssdecode.decoding.speculative import SDStrategy
        from ssdecode.decoding.vocab import align_draft, check_compatible

        if mode == "ar":
            return ARStrategy(self.target)
        check_compatible(self.tokenizer, self.draft_tokenizer, self.target, self.draft)
        draft = align_draft(self.draft, self.target)
        if mode == "sd":
            return SDStrategy(self.target, draft, k)
        from ssdecode.decoding.ssd.strategy import build_ssd_strategy

        return build_ssd_strategy(self.target, draft, draft_spec, k, ssd)

    def _eos_ids(self) -> set[int]:
        ids = set(getattr(self.target, "config", None) and self.target.config.eos_token_ids or ())
        for tid in (self.tokenizer.eos_token_id,
                    self.tokenizer.convert_tokens_to_ids("<|im_end|>") if self._has("<|im_end|>") else None):
            if tid is not None:
                ids.add(int(tid))
        return ids

    def _has(self, token: str) -> bool:
        return token in self.tokenizer.get_vocab()

    def encode(self, prompt: str, chat: bool = True) -> list[int]:
        if chat and self.tokenizer.chat_template:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return self.tokenizer.encode(prompt)

    def generate(self, prompts: str | list[str] | list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 chat: bool = True) -> list[Completion]:
        """Generate for a batch; rows finish independently. Token-id prompts skip templating."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [p if isinstance(p, list) else self.encode(p, chat) for p in prompts]
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(ids)
        if len(plist) != len(ids):
            raise InvalidParams(f"{len(plist)} SamplingParams for {len(ids)} prompts")
        seqs = {}
        for seq, _ in self.engine.run(ids, plist):
            seqs[seq.seq_id] = seq
        return [self._completion(seqs[i]) for i in range(len(ids))]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None,
               chat: bool = True) -> Iterator[str | Completion]:
        """Yield text deltas as rounds commit tokens, then the final Completion."""
        ids = prompt if isinstance(prompt, list) else self.encode(prompt, chat)
        sent, seq = "", None
        for seq, new in self.engine.run([ids], [params or SamplingParams()]):
            text = self._text(seq)
            if seq.params.stop and not seq.finished:  # hold back what may start a stop string
                text = text[: len(text) - max(map(len, seq.params.stop)) + 1]
            if new and not text.endswith("\ufffd") and len(text) > len(sent):
                yield text[len(sent):]
                sent = text
        yield self._completion(seq)

    def _text(self, seq) -> str:
        if seq.stop_text is not None:
            return seq.stop_text
        return self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)

    def _completion(self, seq) -> Completion:
        return Completion(self._text(seq), list(seq.output_ids), seq.finish_reason,
                          len(seq.prompt_ids), seq.metrics.summary())

    def close(self) -> None:
        self.strategy.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
