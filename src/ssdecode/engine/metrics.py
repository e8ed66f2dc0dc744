"""Per-request and per-run decoding metrics (vLLM's definitions where they exist).

mean accepted length = 1 + accepted / verifications: tokens committed per target verification.
SSD adds cache hits and misses per round, tokens per round on hit and on miss, and the time the
target waited for the draft.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    generated: int = 0
    verifications: int = 0  # target verification forwards (rounds) for this request
    draft_proposed: int = 0
    draft_accepted: int = 0
    accepted_by_pos: list[int] = field(default_factory=list)  # [i] = rounds accepting >= i+1
    hits: int = 0  # SSD: rounds whose speculation came from the speculation cache
    misses: int = 0
    tokens_on_hit: int = 0  # tokens committed by rounds that followed a hit
    tokens_on_miss: int = 0
    time_draft: float = 0.0  # seconds the target side spent drafting or waiting for the draft
    time_verify: float = 0.0
    time_prefill: float = 0.0
    time_queue: float = 0.0  # seconds waiting for a slot before prefill
    time_total: float = 0.0  # prefill start to finish

    def record_round(self, proposed: int, accepted: int) -> None:
        self.verifications += 1
        self.draft_proposed += proposed
        self.draft_accepted += accepted
        if len(self.accepted_by_pos) < proposed:
            self.accepted_by_pos.extend([0] * (proposed - len(self.accepted_by_pos)))
        for i in range(accepted):
            self.accepted_by_pos[i] += 1

    def record_speculation(self, hit: bool, tokens: int) -> None:
        """SSD: a round whose speculation came from the cache (hit) or the backup, and the
        tokens it committed."""
        self.hits += hit
        self.misses += not hit
        if hit:
            self.tokens_on_hit += tokens
        else:
            self.tokens_on_miss += tokens

    def summary(self) -> dict:
        """Derived numbers for --stats, benchmarks and the server's usage block."""
        out = {
            "generated_tokens": self.generated,
            "verifications": self.verifications,
            "draft_proposed": self.draft_proposed,
            "draft_accepted": self.draft_accepted,
            "acceptance_rate": _ratio(self.draft_accepted, self.draft_proposed),
            "mean_accepted_length": 1 + _ratio(self.draft_accepted, self.verifications)
            if self.verifications else None,
            "acceptance_by_position": [_ratio(c, self.verifications) for c in self.accepted_by_pos],
            "time_queue_s": round(self.time_queue, 4),
            "time_prefill_s": round(self.time_prefill, 4),
            "time_draft_s": round(self.time_draft, 4),
            "time_verify_s": round(self.time_verify, 4),
            "time_other_s": round(max(0.0, self.time_total - self.time_prefill - self.time_draft
                                      - self.time_verify), 4),
            "time_total_s": round(self.time_total, 4),
            "decode_tokens_per_s": _ratio(max(self.generated - 1, 0),
                                          self.time_total - self.time_prefill),
        }
        if self.hits or self.misses:
            out.update({
                "hit_rate": _ratio(self.hits, self.hits + self.misses),
                "hits": self.hits,
                "misses": self.misses,
                "e_hit": _ratio(self.tokens_on_hit, self.hits),
                "e_miss": _ratio(self.tokens_on_miss, self.misses),
            })
        return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None
