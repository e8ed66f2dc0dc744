"""What the draft worker measures and the engine can't see: hit rate by outcome position k and by
batch size, tokens per round by where the speculation came from (hit, neural or fast backup), and
the time ratios of ssd-algorithm.md sections 6-7: T_p = glue+tree time / verification time and
T_b = backup time / verification time. The adaptive backup policy reads the same numbers.
"""
from __future__ import annotations

from collections import defaultdict


class _Mean:
    __slots__ = ("total", "count")

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, x: float, n: int = 1) -> None:
        self.total += x
        self.count += n

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


class WorkerStats:
    def __init__(self):
        self.hit_by_k: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # k -> [hits, rounds]
        self.hit_by_batch: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # batch size -> [hits, rows]
        self.tokens_by_source: dict[str, _Mean] = defaultdict(_Mean)  # "hit"|"neural"|"fast" -> tokens/round
        self.verify_time = _Mean()  # per round
        self.tree_time = _Mean()  # glue + fork + tree decode, per prepare
        self.backup_time: dict[str, _Mean] = defaultdict(_Mean)  # per round that ran it
        self.backup_rows: dict[str, int] = defaultdict(int)
        self.adaptive_choices: dict[str, int] = defaultdict(int)

    def record_row(self, k: int, tokens: int, source: str, next_hit: bool, batch: int) -> None:
        """A verified row: outcome position k, ``tokens`` committed by a speculation from
        ``source``; was the NEXT speculation a cache hit?"""
        self.hit_by_k[k][0] += next_hit
        self.hit_by_k[k][1] += 1
        self.hit_by_batch[batch][0] += next_hit
        self.hit_by_batch[batch][1] += 1
        self.tokens_by_source[source].add(tokens)

    def record_backup(self, policy: str, seconds: float, rows: int) -> None:
        self.backup_time[policy].add(seconds)
        self.backup_rows[policy] += rows

    @property
    def hit_rate(self) -> float | None:
        hits = sum(h for h, _ in self.hit_by_k.values())
        rounds = sum(n for _, n in self.hit_by_k.values())
        return hits / rounds if rounds else None

    def ratio(self, mean: _Mean) -> float | None:
        """A time as a multiple of one verification."""
        v = self.verify_time.value
        return mean.value / v if mean.value is not None and v else None

    @property
    def t_p(self) -> float | None:
        return self.ratio(self.tree_time)

    def t_b(self, policy: str) -> float | None:
        return self.ratio(self.backup_time[policy]) if policy in self.backup_time else None

    def expected_tokens(self, source: str) -> float | None:
        return self.tokens_by_source[source].value if source in self.tokens_by_source else None

    def summary(self) -> dict:
        rate = lambda cells: {key: round(h / n, 4) for key, (h, n) in sorted(cells.items()) if n}
        r = lambda x: None if x is None else round(x, 4)
        return {
            "hit_rate": r(self.hit_rate),
            "hit_rate_by_k": rate(self.hit_by_k),
            "rounds_by_k": {key: n for key, (_, n) in sorted(self.hit_by_k.items())},
            "hit_rate_by_batch_size": rate(self.hit_by_batch),
            "tokens_per_round_by_source": {s: r(m.value) for s, m in sorted(self.tokens_by_source.items())},
            "mean_verify_s": r(self.verify_time.value),
            "mean_tree_s": r(self.tree_time.value),
            "T_p": r(self.t_p),
            "T_b": {p: r(self.t_b(p)) for p in sorted(self.backup_time)},
            "backup_rows": dict(self.backup_rows),
            "adaptive_choices": dict(self.adaptive_choices),
        }
