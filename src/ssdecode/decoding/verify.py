"""Exact batched verification of draft tokens (ssd-algorithm.md section 1), shared by SD and SSD.

A pure function of tensors: no model, no host synchronization, so SD, SSD hits and SSD misses
(point-mass proposals of a backup speculator) all go through the same few lines, and tests can
check exactness on CPU without a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssdecode.sampling import Generators, SamplingTensors, draw_uniforms, probs_from_logits, sample_from_uniform


@dataclass(frozen=True)
class VerifyResult:
    accepted: torch.Tensor  # [B] long: k, the number of draft tokens accepted (0..num_draft[b])
    next_token: torch.Tensor  # [B] long: recovery token if k < num_draft[b], else the bonus token
    target_probs: torch.Tensor  # [B, K+1, V] float32: transformed target distributions p_1..p_{K+1}


def verify(target_logits: torch.Tensor, draft_tokens: torch.Tensor,
           draft_probs: torch.Tensor | None, st: SamplingTensors, generators: Generators,
           point_mass: torch.Tensor | None = None,
           num_draft: torch.Tensor | None = None) -> VerifyResult:
    """Accept draft tokens s_i w.p. min(1, p_i(s_i)/q_i(s_i)) left to right; sample the next token.

    target_logits [B, K+1, V] (row i scores the token after s_1..s_i); draft_tokens [B, K] long;
    draft_probs [B, K, V] = the exact q_i each s_i was drawn from, or None when every row is a
    point mass; point_mass [B] bool marks rows whose proposals were not drawn from draft_probs;
    num_draft [B] long: only the first num_draft[b] proposals of row b are real (default K).
    st holds one row per sequence; generators: one per row (or one shared), each consumes K+1
    uniforms per call (greedy rows with a None generator consume none and reduce to argmax
    matching, because their p is one-hot).
    """
    batch, positions, vocab = target_logits.shape
    k_max, device = positions - 1, target_logits.device
    p = probs_from_logits(target_logits, st)
    u = draw_uniforms(generators, batch, positions, device, greedy=st.greedy)  # K accepts + 1 draw
    n = torch.full((batch,), k_max, device=device) if num_draft is None else num_draft.to(device)
    rows = torch.arange(batch, device=device)
    all_point = draft_probs is None

    # A point mass delta_s has q(s) = 1 and residual max(0, p - delta_s) = p with s zeroed.
    s = draft_tokens.unsqueeze(-1)
    p_s = p[:, :k_max].gather(-1, s).squeeze(-1)
    q_s = torch.ones_like(p_s) if all_point else draft_probs.float().gather(-1, s).squeeze(-1)
    if point_mass is not None and not all_point:
        q_s = q_s.masked_fill(point_mass.unsqueeze(-1), 1.0)
    # u < p/q written as u*q < p: no division, and q(s) > 0 since s was drawn from q.
    ok = (u[:, :k_max] * q_s < p_s) & (torch.arange(k_max, device=device) < n.unsqueeze(-1))
    accepted = ok.long().cumprod(-1).sum(-1)

    dist = p[rows, accepted]  # p_{k+1}: the bonus distribution when all real proposals passed
    if k_max > 0:
        j = accepted.clamp(max=k_max - 1)
        q_j = torch.zeros_like(dist).scatter_(-1, draft_tokens[rows, j].unsqueeze(-1), 1.0)
        if not all_point:
            drafted = draft_probs[rows, j].float()
            if point_mass is not None:
                drafted = torch.where(point_mass.unsqueeze(-1), q_j, drafted)
            q_j = drafted
        residual = (dist - q_j).clamp_min(0.0)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, dist)
        dist = torch.where((accepted < n).unsqueeze(-1), residual, dist)
    return VerifyResult(accepted, sample_from_uniform(dist, u[:, k_max]), p)
