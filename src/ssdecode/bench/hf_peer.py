"""The peer most users would reach for on this hardware: Transformers ``generate``, plain and
with ``assistant_model`` (assisted generation), on the same weights as ours."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


class HFPeer:
    def __init__(self, target_dir, draft_dir=None, device: str = "cpu"):
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype).to(device).eval()
        self.draft = None
        if draft_dir is not None:
            self.draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=dtype).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_tokens: int, assisted: bool,
                 stop_at_eos: bool = False) -> list[int]:
        """Greedy generation; ``max_tokens`` exactly unless ``stop_at_eos``."""
        ids = torch.tensor([prompt_ids], device=self.device)
        extra = {"assistant_model": self.draft} if assisted else {}
        if not stop_at_eos:
            extra["min_new_tokens"] = max_tokens
        out = self.target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=max_tokens, pad_token_id=0, **extra)
        return out[0, len(prompt_ids):].tolist()
