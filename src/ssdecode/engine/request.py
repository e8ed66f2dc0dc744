"""A request inside the engine: the strategy's ``Sequence`` plus what only the engine tracks
(text, stop state, timing, metrics), and the per-step output the engine reports for it."""
from __future__ import annotations

from dataclasses import dataclass, field

from ssdecode.decoding.sequence import Sequence
from ssdecode.engine.detokenizer import IncrementalDetokenizer
from ssdecode.engine.metrics import RequestMetrics


@dataclass
class Request:
    seq: Sequence
    detok: IncrementalDetokenizer
    arrival: float  # perf_counter() when added
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    finished: bool = False
    finish_reason: str | None = None  # "stop" (EOS or stop string) | "length" | "abort"
    stop_cut: int | None = None  # characters of text before the stop string that ended it
    sent: int = 0  # characters of text already handed out as deltas
    admitted: float | None = None  # perf_counter() at prefill

    @property
    def request_id(self) -> int:
        return self.seq.seq_id

    @property
    def output_ids(self) -> list[int]:
        return self.seq.output_ids

    @property
    def text(self) -> str:
        """The output text (with a trailing incomplete character as U+FFFD, as a full decode)."""
        text = self.detok.full_text
        return text if self.stop_cut is None else text[:self.stop_cut]

    def take_text(self) -> str:
        """Text not handed out yet. While running, hold back an incomplete character and what
        may be the start of a stop string (at most the longest stop string minus one character)."""
        text = self.text if self.finished else self.detok.text
        end = len(text)
        if not self.finished and self.seq.params.stop:
            end -= max(map(len, self.seq.params.stop)) - 1
        if end <= self.sent:
            return ""
        delta, self.sent = text[self.sent:end], end
        return delta


@dataclass
class RequestOutput:
    """What one engine step did for one request."""

    request_id: int
    new_token_ids: list[int]
    text: str  # new text (see Request.take_text)
    finished: bool
    finish_reason: str | None
    request: Request  # the whole request: ids, text so far, metrics
