"""Helpers for the engine-core tests: a core over a strategy, and a Tracker that steps it and
checks every output against what came before."""
from __future__ import annotations

from ssd_support import CONTEXT
from ssdecode.engine.core import EngineCore
from ssdecode.params import SamplingParams
from tiny import tiny_tokenizer

VOCAB, K = 24, 3


def make_core(strategy, max_num_seqs: int = 3, max_model_len: int = 48, eos=(), tokenizer=None,
              context: int = CONTEXT, vocab: int = VOCAB) -> EngineCore:
    return EngineCore(strategy, tokenizer or tiny_tokenizer(vocab), set(eos), context, vocab, max_num_seqs,
                      max_model_len)


class Tracker:
    """Steps a core and checks every output against what came before: no output after a request
    finished (or was aborted), token and text deltas that add up to the request's ids and text."""

    def __init__(self, core: EngineCore):
        self.core = core
        self.ids: dict[int, list[int]] = {}  # request id -> concatenated new_token_ids
        self.text: dict[int, str] = {}  # request id -> concatenated text deltas
        self.finished: dict[int, object] = {}  # request id -> Request
        self.aborted: set[int] = set()
        self.first_step: dict[int, int] = {}  # request id -> step of its first output
        self.keys: dict = {}  # run()'s schedule keys -> request ids
        self.steps = 0

    def add(self, prompt, params) -> int:
        return self.core.add_request(list(prompt), params)

    def abort(self, rid: int) -> bool:
        ok = self.core.abort(rid)
        if ok:
            self.aborted.add(rid)
        return ok

    def step(self) -> list:
        outputs = self.core.step()
        assert len({o.request_id for o in outputs}) == len(outputs)
        assert self.core.num_running <= self.core.max_num_seqs
        assert self.core.num_running + self.core.num_free_slots == self.core.max_num_seqs
        for o in outputs:
            rid = o.request_id
            assert rid not in self.finished and rid not in self.aborted, f"output for finished request {rid}"
            self.first_step.setdefault(rid, self.steps)
            self.ids.setdefault(rid, []).extend(o.new_token_ids)
            self.text[rid] = self.text.get(rid, "") + o.text
            assert o.new_token_ids, "an output without tokens"
            if o.finished:
                req = o.request
                assert self.ids[rid] == req.output_ids and self.text[rid] == req.text
                assert o.finish_reason == req.finish_reason in ("stop", "length")
                self.finished[rid] = req
        self.steps += 1
        return outputs

    def run(self, schedule: dict[int, list] | None = None, max_steps: int = 1000) -> None:
        """Step until idle; ``schedule``: steps from now -> [(prompt, params, key)] added
        before that step; each key maps to its request id in ``self.keys``."""
        schedule = dict(schedule or {})
        start = self.steps
        while schedule or self.core.has_unfinished():
            for prompt, params, key in schedule.pop(self.steps - start, []):
                self.keys[key] = self.add(prompt, params)
            self.step()
            assert self.steps - start < max_steps
        assert self.core.num_free_slots == self.core.max_num_seqs and self.core.num_waiting == 0

    def output(self, key) -> list[int]:
        return self.finished[self.keys[key]].output_ids


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, **kw)
