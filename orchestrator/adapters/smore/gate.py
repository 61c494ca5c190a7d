"""The router of one S'MoRE module: top-down, a token picks f_{L-1} experts of the top level, and
each picked node picks f_l children of level l, conditioned on the keys of its ancestors
(spec 2.4). Routing reads only the token and the keys, so it all runs before propagation.

Shapes: N tokens; P = F_{l+1} parent nodes per token at level l; s = s_l experts; f = f_l
children per parent; g = g_l router input width; k = key width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    ids: list[torch.Tensor]  # per level l (bottom first): [N, F_{l+1}, f_l] int64 expert ids
    weights: list[torch.Tensor]  # per level l: [N, F_{l+1}, f_l] float32 router weights beta
    aux: torch.Tensor | None = None  # sum over levels of rho * balance loss (sparse gates)


class RouterLevel(nn.Module):
    """Level l's query network MLP_l (Linear g->k, ReLU, Linear k->k), its keys K_l [s, k]
    (U(0, 1)) and, for the noisy gate, the noise-scale projection Omega_l [s, g] (zero)."""

    def __init__(self, in_width: int, key_dim: int, n_experts: int, noisy: bool):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_width, key_dim), nn.ReLU(),
                                 nn.Linear(key_dim, key_dim))
        self.keys = nn.Parameter(torch.rand(n_experts, key_dim))  # [s, k]
        self.noise = nn.Parameter(torch.zeros(n_experts, in_width)) if noisy else None  # [s, g]


class SmoreRouter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kind, self.rho = config.gate, config.balance
        self.fan = config.fan()
        self.levels = nn.ModuleList(
            RouterLevel(g, config.key_dim, s, config.gate == "noisy_topk")
            for g, s in zip(config.router_inputs(), config.experts))
        self.forced: list[int] | None = None

    def force(self, path: list[int] | None) -> None:
        """Pin every node to one child, expert path[l] at level l, with weight 1 (checks and
        ablations: the tree becomes a single path); None restores learned routing."""
        if path is not None:
            sizes = [lv.keys.shape[0] for lv in self.levels]
            if len(path) != len(sizes) or any(not 0 <= e < s for e, s in zip(path, sizes)):
                raise ValueError(f"forced path {path} does not fit levels of {sizes} experts")
        self.forced = path

    def forward(self, xd: torch.Tensor, valid: torch.Tensor | None = None,
                aux: bool = False) -> Routing:  # xd [N, d_down]; valid [N] bool
        n = xd.shape[0]
        depth = len(self.levels)
        ids: list[torch.Tensor | None] = [None] * depth
        weights: list[torch.Tensor | None] = [None] * depth
        total = None
        inputs = xd.unsqueeze(1)  # R_{L-1}: [N, 1, d_down]
        for lvl in reversed(range(depth)):
            level = self.levels[lvl]
            query = level.mlp(inputs)  # [N, P, k]
            keys = level.keys  # [s, k]
            if self.kind == "noisy_topk":
                query, keys = F.normalize(query, dim=-1), F.normalize(keys, dim=-1)
            logits = query @ keys.T  # [N, P, s]
            if self.forced is not None:
                index = torch.full((*logits.shape[:-1], 1), self.forced[lvl], device=xd.device)
                weight, loss = torch.ones(index.shape, device=xd.device), None
            elif self.kind == "dense":
                index = torch.arange(logits.shape[-1], device=xd.device).expand(logits.shape)
                weight, loss = logits.softmax(-1, dtype=torch.float32), None
            elif self.kind == "switch":
                index, weight, loss = _switch(logits, self.fan[lvl], valid, self.rho if aux else None)
            else:
                index, weight, loss = _noisy(logits, inputs, level.noise, self.fan[lvl], valid,
                                             self.rho if aux else None, self.training)
            ids[lvl], weights[lvl] = index, weight  # [N, P, f]
            if loss is not None:
                total = loss if total is None else total + loss
            if lvl > 0:  # each chosen node routes its children with its ancestors' keys
                chosen = keys[index]  # [N, P, f, k]
                inputs = torch.cat([inputs.unsqueeze(2).expand(*index.shape, inputs.shape[-1]),
                                    chosen], dim=-1).reshape(n, -1, inputs.shape[-1] + chosen.shape[-1])
                # R_{l-1}: [N, P * f, g + k]
        return Routing(ids, weights, total)


def _valid_rows(tensor: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """[N, P, ...] -> [M, ...]: the routing decisions of non-padding tokens, flattened."""
    if valid is not None and valid.shape[0] == tensor.shape[0]:
        tensor = tensor[valid]
    return tensor.reshape(-1, *tensor.shape[2:])


def _switch(logits, fan: int, valid, rho):
    """Softmax over all experts, top-f; weights renormalised when f > 1, the raw probability
    when f = 1 (as the official code). Aux: rho * s * sum_e T_e Pi_e (spec 2.4.2 a)."""
    probs = logits.softmax(-1, dtype=torch.float32)  # [N, P, s]
    top, index = probs.topk(fan, dim=-1)  # [N, P, f]
    weight = top / top.sum(-1, keepdim=True) if fan > 1 else top
    loss = None
    if rho is not None:
        p, chosen = _valid_rows(probs, valid), _valid_rows(index, valid)  # [M, s], [M, f]
        s = probs.shape[-1]
        if p.shape[0]:
            share = torch.bincount(chosen.flatten(), minlength=s).float() / p.shape[0]  # T_e
            loss = rho * s * (share * p.mean(0)).sum()
    return index, weight, loss


def _noisy(logits, inputs, noise, fan: int, valid, rho, training: bool):
    """Noisy top-k (Shazeer et al. 2017) on cosine logits: the top f of the noisy logits; softmax
    weights when f > 1, the raw noisy logit when f = 1 (as the official code). Aux:
    rho * (CV^2(importance) + CV^2(load)), load smoothed by the normal CDF in training."""
    s = logits.shape[-1]
    sd = F.softplus(inputs @ noise.T) + 0.01 if training else None  # [N, P, s]
    noisy = logits + torch.randn_like(logits) * sd if training else logits
    top, order = noisy.topk(min(fan + 1, s), dim=-1)  # [N, P, f+1]
    index, chosen = order[..., :fan], top[..., :fan]  # [N, P, f]
    weight = chosen.softmax(-1, dtype=torch.float32) if fan > 1 else chosen.float()
    loss = None
    if rho is not None:
        importance = torch.zeros_like(logits, dtype=torch.float32).scatter(-1, index, weight)
        if training and fan < s:
            inside, outside = top[..., fan:fan + 1], top[..., fan - 1:fan]  # thresholds
            selected = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
            normal = torch.distributions.Normal(0.0, 1.0)
            load = torch.where(selected, normal.cdf((logits - inside) / sd),
                               normal.cdf((logits - outside) / sd))
        else:
            load = torch.zeros_like(importance).scatter(-1, index, 1.0)
        loss = rho * (_cv2(_valid_rows(importance, valid).sum(0))
                      + _cv2(_valid_rows(load, valid).sum(0)))
    return index, weight, loss


def _cv2(v: torch.Tensor) -> torch.Tensor:
    if v.numel() < 2:
        return v.new_zeros(())
    return v.float().var() / (v.float().mean() ** 2 + 1e-10)


def kaiming(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): kaiming_uniform_(a=sqrt(5)) on the last dimension."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)
