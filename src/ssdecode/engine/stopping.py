"""Commit tokens to a sequence, stopping exactly at EOS, a stop string, max_tokens or the context.

Strategies may commit several tokens per round; everything after the stop is dropped here, so
no token past a stop is ever emitted.
"""
from __future__ import annotations

from ssdecode.engine.sequence import Sequence


class StopChecker:
    def __init__(self, tokenizer, eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    def commit(self, seq: Sequence, tokens: list[int], max_context: int) -> list[int]:
        """Append ``tokens`` up to the first stop (``max_context``: prompt + output limit);
        return the ones appended."""
        emitted = []
        for tok in tokens:
            if seq.finished:
                break
            seq.output_ids.append(tok)
            emitted.append(tok)
            if tok in self.eos_ids and not seq.params.ignore_eos:
                self._finish(seq, "stop")
            elif seq.params.stop and self._hit_stop_string(seq):
                self._finish(seq, "stop")
            elif len(seq.output_ids) >= seq.params.max_tokens:
                self._finish(seq, "length")
            elif seq.num_tokens >= max_context:
                self._finish(seq, "length")
        return emitted

    def _hit_stop_string(self, seq: Sequence) -> bool:
        text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in seq.params.stop) if i >= 0), default=-1)
        if cut < 0:
            return False
        seq.stop_text = text[:cut]
        return True

    @staticmethod
    def _finish(seq: Sequence, reason: str) -> None:
        seq.finished = True
        seq.finish_reason = reason
