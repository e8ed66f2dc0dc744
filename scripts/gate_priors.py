"""The confidence-gating priors of plan/planner.py's GATE_PRIORS: on the target's greedy output,
teacher-forced, the draft's probability of its own greedy token (its confidence) and whether that
token is the target's; per threshold c, the fraction u below c and the acceptance above and below.

PYTHONPATH=src python scripts/gate_priors.py [--draft-weights int8] [--num-prompts 3] [--max-tokens 96]
"""
import argparse
import json

import torch

from ssdecode.bench.prompts import load_prompts
from ssdecode.engine.llm import LLM
from ssdecode.params import SamplingParams

ap = argparse.ArgumentParser()
ap.add_argument("--draft-weights", default="int8")
ap.add_argument("--num-prompts", type=int, default=3)
ap.add_argument("--max-tokens", type=int, default=96)
args = ap.parse_args()
torch.set_num_threads(2)
llm = LLM(target="demo-target", draft="demo-draft", mode="ar", draft_weights=args.draft_weights)
pairs = []  # (draft confidence, draft token == target token)
for name in ("humaneval", "stdlib"):
    for p in load_prompts(name, args.num_prompts):
        ids = llm.encode(p.text, chat=p.chat)
        seq = ids + llm.generate([ids], SamplingParams(max_tokens=args.max_tokens, ignore_eos=True))[0].token_ids
        with torch.no_grad():
            logits = llm.draft.forward(torch.tensor([seq]), torch.arange(len(seq))[None],
                                       llm.draft.new_cache(1, len(seq)), [0])[0]
        conf, guess = torch.softmax(logits.float(), -1).max(-1)
        pairs += [(conf[j].item(), guess[j].item() == seq[j + 1]) for j in range(len(ids), len(seq) - 1)]
for c in (0.3, 0.5, 0.7):
    low, high = [m for q, m in pairs if q < c], [m for q, m in pairs if q >= c]
    print(json.dumps({"threshold": c, "tokens": len(pairs), "below": len(low), "accepted_below": sum(low),
                      "u": round(len(low) / len(pairs), 3), "a_conf": round(sum(high) / max(len(high), 1), 3),
                      "a_unconf": round(sum(low) / max(len(low), 1), 3)}))
