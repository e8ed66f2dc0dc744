"""Commit tokens to a request, stopping exactly at EOS, a stop string, max_tokens or the context.

Strategies may commit several tokens per round; everything after the stop is dropped here, so
no token past a stop is ever emitted. Stop strings are searched only in the text a token added
(plus the longest stop string's length before it), so checking is linear in the output.
"""
from __future__ import annotations

from ssdecode.engine.request import Request


class StopChecker:
    def __init__(self, eos_ids: set[int]):
        self.eos_ids = eos_ids

    def commit(self, req: Request, tokens: list[int], max_len: int) -> list[int]:
        """Append ``tokens`` up to the first stop (``max_len``: prompt + output limit); return
        the ones appended."""
        seq, params = req.seq, req.seq.params
        emitted = []
        for tok in tokens:
            if req.finished:
                break
            seq.output_ids.append(tok)
            emitted.append(tok)
            delta = req.detok.add(tok)
            if tok in self.eos_ids and not params.ignore_eos:
                self._finish(req, "stop")
            elif params.stop and (delta or req.detok.tail) and self._hit_stop_string(req, len(delta)):
                self._finish(req, "stop")
            elif len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= max_len:
                self._finish(req, "length")
        return emitted

    @staticmethod
    def _hit_stop_string(req: Request, new_chars: int) -> bool:
        """Search the text this token settled or left pending, with the longest stop string's
        length minus one before it (a stop string may start in earlier text)."""
        text = req.detok.full_text
        start = max(0, len(req.detok.text) - new_chars - max(map(len, req.seq.params.stop)) + 1)
        found = [i for i in (text.find(s, start) for s in req.seq.params.stop) if i >= 0]
        if not found:
            return False
        req.stop_cut = min(found)
        return True

    @staticmethod
    def _finish(req: Request, reason: str) -> None:
        req.finished = True
        req.finish_reason = reason
