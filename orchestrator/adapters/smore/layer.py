"""`SmoreLinear`: a frozen base Linear plus one S'MoRE module (spec 2.5-2.6).

    y = W0 x + b0 + P z_root + p
    node v at level l, expert i:  o(v) = phi( lam_l (U_{l,i} (A_{l,i} x + a_{l,i}) + u_{l,i})
                                              + C_l z(v) + c_l )        (no C term at l = 0)
    z(v) = sum over children u of beta(u) o(u);  z_root over the top-level nodes.

Dense-then-gather ("subgraph" mode of the official code): one matmul computes the router
projection E x and every expert's A x of every level together ([N, d_down + D_L]); per level
one batched matmul evaluates all s_l experts' U (...) for every token, one gather picks the
tree nodes' rows, C_l is one matmul over all nodes, and a batched matmul sums children by their
weights. No Python loop over experts or tokens; the loop over levels is L iterations.

Shapes: N tokens; s_l, r_l, D_l as in the config; F_l tree nodes per token at level l.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .gate import Routing, SmoreRouter, kaiming

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "identity": None}


@dataclass
class SmoreContext:
    """State shared by all S'MoRE layers of one model: the token mask for the balance loss,
    whether to collect it (training), and whether to record routing (inspection, usage)."""

    mask: torch.Tensor | None = None  # [N] bool, flattened attention mask
    collect_aux: bool = False
    aux_losses: list[torch.Tensor] = field(default_factory=list)
    record: bool = False  # keep every forward's routing (inspection)
    usage: bool = False  # count selections per expert per level


class SmoreLinear(nn.Module):
    """Parameters (all float32, trainable): `down` [d_down + D_L, d_in] and `down_bias`: rows
    0..d_down-1 are the router projection E, b_E; then level l's A_l [s_l, r_l, d_in] and a_l,
    level 0 first. `up[l]` U_l [s_l, D_{l+1}, r_l], `up_bias[l]` u_l [s_l, D_{l+1}];
    `carry[l-1]` C_l [D_{l+1}, D_l] and `carry_bias[l-1]` c_l for l >= 1; `proj` P [d_out, D_L],
    `proj_bias` p [d_out]; `router` (MLPs, keys, noise)."""

    def __init__(self, base: nn.Linear, config, context: SmoreContext, name: str = ""):
        super().__init__()
        self.base, self.context, self.name = base, context, name
        self.experts, self.rank, self.widths = list(config.experts), list(config.rank), config.widths()
        self.router_dim, self.scales = config.router_dim, config.scales()
        self.phi = ACTIVATIONS[config.activation]
        d_in, d_out, widths = base.in_features, base.out_features, self.widths
        self.down = nn.Parameter(torch.empty(self.router_dim + widths[-1], d_in))
        self.down_bias = nn.Parameter(torch.zeros(self.router_dim + widths[-1]))
        self.up = nn.ParameterList(nn.Parameter(torch.zeros(s, widths[lv + 1], r))
                                   for lv, (s, r) in enumerate(zip(self.experts, self.rank)))
        self.up_bias = nn.ParameterList(nn.Parameter(torch.zeros(s, widths[lv + 1]))
                                        for lv, s in enumerate(self.experts))
        self.carry = nn.ParameterList(nn.Parameter(torch.zeros(widths[lv + 1], widths[lv]))
                                      for lv in range(1, len(self.experts)))
        self.carry_bias = nn.ParameterList(nn.Parameter(torch.zeros(widths[lv + 1]))
                                           for lv in range(1, len(self.experts)))
        self.proj = nn.Parameter(torch.zeros(d_out, widths[-1]))
        self.proj_bias = nn.Parameter(torch.zeros(d_out))
        self.router = SmoreRouter(config)
        self._init(config.init)
        self.usage = [torch.zeros(s, dtype=torch.long) for s in self.experts]  # selections
        self.records: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # per forward

    def _init(self, method: str) -> None:
        """Spec 3.2: A (and E) U(+-1/sqrt(d_in)), b_E as nn.Linear; then per `method`."""
        d_in, widths = self.base.in_features, self.widths
        kaiming(self.down, d_in)
        kaiming(self.down_bias.data[: self.router_dim], d_in)
        with torch.no_grad():
            for lv, (s, r) in enumerate(zip(self.experts, self.rank)):
                if method == "w_final_zero":
                    kaiming(self.up[lv], r)
                elif method == "eq_1_layer":  # expert i writes rows [i r, (i+1) r)
                    for i in range(s):
                        self.up[lv][i, i * r:(i + 1) * r] = torch.eye(r)
            for lv in range(1, len(self.experts)):
                c = self.carry[lv - 1]  # [D_{l+1}, D_l]
                if method == "eq_1_layer":  # identity in the last D_l rows
                    c[widths[lv + 1] - widths[lv]:] = torch.eye(widths[lv])
                else:
                    kaiming(c, widths[lv])
            if method == "b_zero":
                kaiming(self.proj, widths[-1])

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def level_a(self, lvl: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of A_l [s_l, r_l, d_in] and a_l [s_l, r_l] inside `down`."""
        start = self.router_dim + self.widths[lvl]
        s, r = self.experts[lvl], self.rank[lvl]
        return (self.down[start:start + s * r].view(s, r, -1),
                self.down_bias[start:start + s * r].view(s, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., d_in]
        out = self.base(x)  # [..., d_out]
        flat = x.reshape(-1, x.shape[-1])  # [N, d_in]
        if flat.dtype != self.down.dtype:
            flat = flat.to(self.down.dtype)
        hidden = F.linear(flat, self.down, self.down_bias)  # [N, d_down + D_L]: E x, A x
        ctx = self.context
        valid = ctx.mask if ctx.mask is not None and ctx.mask.shape[0] == flat.shape[0] else None
        routing = self.router(hidden[:, : self.router_dim], valid, aux=ctx.collect_aux)
        if routing.aux is not None:
            ctx.aux_losses.append(routing.aux)
        if ctx.record or ctx.usage:
            self._observe(routing, valid)
        delta = self.propagate(hidden[:, self.router_dim:], routing)  # [N, d_out]
        return out + delta.to(out.dtype).view(out.shape)

    def propagate(self, low: torch.Tensor, routing: Routing) -> torch.Tensor:
        """low [N, D_L]: A_l x + a_l of every expert of every level; returns P z_root + p."""
        n, state = low.shape[0], None
        for lvl, (s, r) in enumerate(zip(self.experts, self.rank)):
            start, width = self.widths[lvl], self.widths[lvl + 1]
            h = low[:, start:start + s * r].view(n, s, r)  # [N, s, r]
            v = torch.einsum("nsr,sor->nso", h, self.up[lvl]) + self.up_bias[lvl]  # [N, s, D]
            if self.scales[lvl] != 1.0:
                v = v * self.scales[lvl]
            index, weight = routing.ids[lvl], routing.weights[lvl]  # [N, F_{l+1}, f]
            nodes = index.reshape(n, -1, 1).expand(-1, -1, width)  # [N, F_l, D]
            g = v.gather(1, nodes)  # [N, F_l, D_{l+1}]
            if lvl > 0:
                g = g + F.linear(state, self.carry[lvl - 1], self.carry_bias[lvl - 1])
            if self.phi is not None:
                g = self.phi(g)
            g = g.view(n, index.shape[1], index.shape[2], width)  # [N, F_{l+1}, f, D]
            state = (weight.to(g.dtype).unsqueeze(-2) @ g).squeeze(-2)  # [N, F_{l+1}, D]
        return F.linear(state.squeeze(1), self.proj, self.proj_bias)  # [N, d_out]

    def _observe(self, routing: Routing, valid: torch.Tensor | None) -> None:
        ids = [i.detach().cpu() for i in routing.ids]
        if self.context.record:
            self.records.append((ids, [w.detach().float().cpu() for w in routing.weights]))
        if self.context.usage:
            keep = valid.cpu() if valid is not None else None
            for lvl, index in enumerate(ids):
                rows = index[keep] if keep is not None else index
                self.usage[lvl] += torch.bincount(rows.flatten(), minlength=self.experts[lvl])


def parameter_numel(layer: SmoreLinear) -> int:
    return sum(p.numel() for name, p in layer.named_parameters() if not name.startswith("base."))
