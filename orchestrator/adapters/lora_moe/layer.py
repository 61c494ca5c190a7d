"""`LoraMoeLinear`: a frozen base Linear plus N frozen LoRA experts, mixed per token by a gate.

    y = W x + sum_{j < k} w_j * s_e(j) * B_e(j) A_e(j) x      (e(j): the j-th chosen expert)

Only the chosen experts are computed for a token. Two equivalent kernels:
- gather (decode, few tokens): the chosen experts' A and B are gathered per token and applied
  with two batched matmuls, [T, k, r, in] x [T, in] -> [T, k, r] -> [T, k, out];
- grouped (prefill, training): per expert, the tokens that chose it, [n_e, in] -> [n_e, r] ->
  [n_e, out], scattered back with index_add.
Null experts (indices >= N) compute nothing in the grouped kernel; the gather kernel multiplies
every slot (a null expert's zero matrices, a dropped slot by weight 0), which costs little at
decode sizes and saves the masking ops that dominate a decode step's overhead. Experts of
different ranks are zero-padded to the largest rank, which changes no output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .gate import LoraMoeGate, Routing, load_balance_loss

GATHER_MAX_PAIRS = 64  # token-expert pairs up to which the gather kernel is used


@dataclass
class RoutingContext:
    """State shared by all layers of one model: the token mask for the balance loss (training),
    whether to record choices (inspection) and to count computed pairs (tests)."""

    mask: torch.Tensor | None = None  # [T] bool, flattened attention mask
    record: bool = False  # keep every forward's choices (inspection; grows with the tokens)
    usage: bool = False  # count token slots per choice only (training logs)
    count: bool = False
    aux_losses: list[torch.Tensor] = field(default_factory=list)


class LoraMoeLinear(nn.Module):
    """`lora_a` [N, r, in], `lora_b` [N, out, r] and `scaling` [N] of the N LoRA experts. They are
    stored as [C, r, in] and [C, out, r] (C = N + null experts; a null expert's matrices are
    zero) with the scaling folded into B, in float32."""

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor,
                 scaling: torch.Tensor, gate: LoraMoeGate, context: RoutingContext, name: str = ""):
        super().__init__()
        n, rank, in_features = lora_a.shape
        if lora_b.shape != (n, base.out_features, rank) or in_features != base.in_features:
            raise ValueError(f"{name}: LoRA shapes A {tuple(lora_a.shape)} and B "
                             f"{tuple(lora_b.shape)} do not fit Linear({base.in_features}, "
                             f"{base.out_features})")
        nulls = gate.n_choices - n
        a = torch.cat([lora_a, lora_a.new_zeros(nulls, rank, in_features)])  # [C, r, in]
        b = torch.cat([lora_b * scaling[:, None, None],
                       lora_b.new_zeros(nulls, base.out_features, rank)])  # [C, out, r]
        self.base = base
        self.register_buffer("lora_A", a.float().contiguous(), persistent=False)
        self.register_buffer("lora_B", b.float().contiguous(), persistent=False)
        self.gate = gate
        self.context = context
        self.name, self.n_experts = name, n
        self.usage = torch.zeros(gate.n_choices, dtype=torch.long)  # [C] token slots, when recording
        # Per forward, when recording: ([T, k] chosen indices, -1 where dropped; [T, k] weights).
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pairs = 0  # token-expert pairs whose matrices were multiplied, when counting

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in]
        out = self.base(x)  # [..., out]
        flat = x.reshape(-1, x.shape[-1])  # [T, in]
        if flat.dtype != self.lora_A.dtype:
            flat = flat.to(self.lora_A.dtype)
        routing = self.gate(flat)
        self._observe(routing)
        pairs = routing.index.numel()
        kernel = self._gather if pairs <= GATHER_MAX_PAIRS else self._grouped
        delta = kernel(flat, routing)  # [T, out]
        return out + delta.to(out.dtype).view(out.shape)

    def _observe(self, routing: Routing) -> None:
        ctx = self.context
        if self.gate.training and torch.is_grad_enabled():
            ctx.aux_losses.append(load_balance_loss(routing.probs, routing.index, routing.weight,
                                                    ctx.mask))
        if ctx.record or ctx.usage:
            chosen = routing.index.masked_fill(routing.weight <= 0, -1)  # [T, k]
            weight = routing.weight
            if ctx.mask is not None and ctx.mask.shape[0] == chosen.shape[0]:
                chosen, weight = chosen[ctx.mask], weight[ctx.mask]
            chosen = chosen.detach().cpu()
            if ctx.record:
                self.records.append((chosen, weight.detach().cpu()))
            kept = chosen[chosen >= 0]
            self.usage += torch.bincount(kept, minlength=self.gate.n_choices)

    def _gather(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        index, weight = routing.index, routing.weight  # [T, k]; a dropped slot has weight 0
        h = torch.matmul(self.lora_A[index], x[:, None, :, None])  # [T, k, r, in] @ [T, 1, in, 1]
        h = h * weight[:, :, None, None].to(h.dtype)  # [T, k, r, 1]
        y = torch.matmul(self.lora_B[index], h)  # [T, k, out, r] @ [T, k, r, 1] -> [T, k, out, 1]
        if self.context.count:
            self.pairs += index.numel()  # every slot is multiplied here, null ones by zeros
        return y.sum(dim=1).squeeze(-1)  # [T, out]

    def _grouped(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        index, weight = routing.index, routing.weight  # [T, k]
        delta = x.new_zeros(x.shape[0], self.out_features)  # [T, out]
        for e in range(self.n_experts):  # null experts compute nothing
            rows, slots = torch.nonzero((index == e) & (weight > 0), as_tuple=True)  # [n_e]
            if rows.numel() == 0:
                continue
            h = x[rows] @ self.lora_A[e].T  # [n_e, r]
            h = h * weight[rows, slots].to(h.dtype).unsqueeze(-1)  # [n_e, r]
            delta.index_add_(0, rows, h @ self.lora_B[e].T)  # [n_e, out]
            if self.context.count:
                self.pairs += rows.numel()
        return delta
