"""The router of a LoRA-MoE layer: a token's hidden state -> which experts, with what weight.

Shapes: T tokens (batch x sequence, flattened), `in` features, C = LoRA experts + null experts,
k = top_k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    probs: torch.Tensor  # [T, C] softmax of the gate logits (float32)
    index: torch.Tensor  # [T, k] chosen experts, best first
    weight: torch.Tensor  # [T, k] mixing weights; 0 for a slot top_p dropped


class LoraMoeGate(nn.Module):
    """A bias-free linear router. A chosen expert's weight is its gate probability (Switch,
    AdaMoE: the gate learns from the LM loss even at top-1, and a token may use its experts at
    less than full strength), or, with `renormalize`, that probability divided by the chosen
    ones' sum (Mixtral). `force(i)` pins every token to expert i with weight 1 (for checks and
    ablations); `force(None)` restores learned routing."""

    def __init__(self, in_features: int, n_choices: int, *, top_k: int, top_p: float | None = None,
                 temperature: float = 1.0, renormalize: bool = False):
        super().__init__()
        self.proj = nn.Linear(in_features, n_choices, bias=False)  # weight [C, in]
        self.n_choices, self.top_k, self.top_p, self.temperature = n_choices, top_k, top_p, temperature
        self.renormalize = renormalize
        self.forced: int | None = None
        nn.init.normal_(self.proj.weight, std=0.02)

    def force(self, expert: int | None) -> None:
        if expert is not None and not 0 <= expert < self.n_choices:
            raise ValueError(f"expert index {expert} is outside 0..{self.n_choices - 1}")
        self.forced = expert

    def forward(self, x: torch.Tensor) -> Routing:  # x [T, in]
        if x.dtype != self.proj.weight.dtype:
            x = x.to(self.proj.weight.dtype)
        logits = self.proj(x)  # [T, C]
        if self.temperature != 1.0:
            logits = logits / self.temperature
        probs = logits.softmax(dim=-1, dtype=torch.float32)  # [T, C]
        if self.forced is not None:
            index = torch.full((x.shape[0], 1), self.forced, dtype=torch.long, device=x.device)
            return Routing(probs, index, torch.ones(x.shape[0], 1, device=x.device))
        top_w, index = probs.topk(self.top_k, dim=-1)  # [T, k], sorted descending
        if self.top_p is not None and self.top_k > 1:
            # Keep the fewest best experts whose mass reaches top_p; the first always stays.
            before = top_w.cumsum(dim=-1) - top_w  # [T, k] mass of the better-ranked slots
            top_w = top_w * (before < self.top_p)
        weight = top_w / top_w.sum(dim=-1, keepdim=True) if self.renormalize else top_w  # [T, k]
        return Routing(probs, index, weight)


def load_balance_loss(probs: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer auxiliary loss, C * sum_c f_c * P_c (1.0 when perfectly balanced):
    f_c the share of routed token slots that went to choice c, P_c its mean gate probability.
    `mask` [T] drops padding tokens."""
    n_choices = probs.shape[-1]
    if mask is not None:
        probs, index, weight = probs[mask], index[mask], weight[mask]
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    used = (weight > 0).float()  # [T, k]
    counts = torch.zeros(n_choices, device=probs.device).scatter_add_(
        0, index.flatten(), used.flatten())  # [C]
    share = counts / counts.sum().clamp(min=1.0)  # [C], no gradient (integer choices)
    return n_choices * (share * probs.mean(dim=0)).sum()
