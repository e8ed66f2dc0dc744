"""PNG plots of a ``ssdecode bench`` result (issue 12): tokens/s by system and prompt set,
acceptance by draft position, SSD miss rate against fan-out with the fitted power law, and
predicted against measured tokens/s. Drawn from the result's JSON only, so they show its numbers.

    python -m ssdecode.bench.plots RESULT.json DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def draw(summary: dict, out_dir: str | Path) -> list[Path]:
    """Write the plots that ``summary`` (bench JSON) has data for; returns their paths."""
    import matplotlib  # the bench extra: optional

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary["bench"]
    written = []
    for name, fn in (("tokens_per_s", _throughput), ("acceptance_by_position", _acceptance),
                     ("ssd_miss_vs_fanout", _misses), ("predicted_vs_measured", _predicted)):
        fig, ax = plt.subplots(figsize=(9, 5))
        if fn(ax, rows):
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=110)
            written.append(out / f"{name}.png")
        plt.close(fig)
    return written


def _sets(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["prompts"] for r in rows))


def _label(row: dict) -> str:
    return f"{row['system']} [{Path(row['prompts']).name}]"  # a prompt file: its name only


def _throughput(ax, rows: list[dict]) -> bool:
    systems, sets = list(dict.fromkeys(r["system"] for r in rows)), _sets(rows)
    width = 0.8 / len(sets)
    by = {(r["system"], r["prompts"]): r["tokens_per_s"] for r in rows}
    for i, s in enumerate(sets):
        xs = [j + i * width for j in range(len(systems))]
        bars = ax.bar(xs, [by.get((name, s), 0) for name in systems], width, label=Path(s).name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(sets) - 1) / 2 for j in range(len(systems))], systems, rotation=35, ha="right",
                  fontsize=8)
    ax.set_ylabel("tokens/s (batch 1, greedy)")
    ax.set_title("Tokens/s by system and prompt set (whole requests, prefill included)")
    ax.legend()
    return True


def _acceptance(ax, rows: list[dict]) -> bool:
    drawn = False
    for r in rows:
        by_pos = r.get("acceptance_by_position") or []
        if by_pos:
            ax.plot(range(1, len(by_pos) + 1), by_pos, marker="o", label=_label(r))
            drawn = True
    ax.set_xlabel("draft position")
    ax.set_ylabel("share of rounds accepting it")
    ax.set_ylim(0, 1.02)
    ax.set_title("Acceptance by draft position")
    if drawn:
        ax.legend(fontsize=7)
    return drawn


def _misses(ax, rows: list[dict]) -> bool:
    drawn = False
    for r in rows:
        st = r.get("strategy") or {}
        misses, power = st.get("miss_rate_by_fanout"), st.get("power_estimate")
        if not misses:
            continue
        fs = sorted(int(f) for f in misses)
        dots = ax.plot(fs, [misses[str(f)] if str(f) in misses else misses[f] for f in fs], "o",
                       label=f"{_label(r)} measured")
        if power:
            grid = [1 + i * (max(fs) - 1) / 50 for i in range(51)]
            ax.plot(grid, [g ** -power for g in grid], "--", color=dots[0].get_color(), label=f"F^-{power:.2f}")
        drawn = True
    ax.set_xlabel("fan-out F at the outcome's position")
    ax.set_ylabel("miss rate")
    ax.set_title("SSD cache misses against fan-out, with the fitted power law")
    if drawn:
        ax.legend(fontsize=7)
    return drawn


def _predicted(ax, rows: list[dict]) -> bool:
    pts = [(r["predicted_tokens_per_s"], r["decode_tokens_per_s"], _label(r))
           for r in rows if r.get("predicted_tokens_per_s") and r.get("decode_tokens_per_s")]
    if not pts:
        return False
    top = max(max(p, m) for p, m, _ in pts) * 1.1
    ax.plot([0, top], [0, top], "k-", lw=0.8, label="measured = predicted")
    ax.fill_between([0, top], [0, top * 0.85], [0, top * 1.15], color="grey", alpha=0.15, label="within 15%")
    for p, m, label in pts:
        ax.plot(p, m, "o")
        ax.annotate(label, (p, m), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("predicted decode tokens/s (calibration + the run's acceptance)")
    ax.set_ylabel("measured decode tokens/s (prefill excluded)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_title("Predicted against measured")
    ax.legend(fontsize=7)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for path in draw(json.loads(Path(args[0]).read_text()), args[1]):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
