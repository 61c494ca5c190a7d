"""`SmoreConfig`: the shape of an S'MoRE adapter and where it goes.

Saved next to the weights as `smore_config.json`. Level lists run bottom-up: index 0 is the
first-order level (tree leaves, propagated first), index L-1 the top level (routed first).
Notation as in the spec (../shared/reference/smore.md): s experts, fan-out f, rank r per level;
hidden widths D_0 = 0, D_{l+1} = D_l + s_l r_l; tree nodes per token F_l = f_{L-1} ... f_l.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ...config import StrictModel, validate_model
from ...errors import ConfigError

CONFIG_NAME = "smore_config.json"
GATES = ("switch", "noisy_topk", "dense")
FFN_MODULES = ["gate_proj", "up_proj", "down_proj"]


class SmoreConfig(StrictModel):
    """Choices the spec leaves open ([U]) and what we chose: tanh experts (the official example
    configs), the switch gate (the LLaMA example), `w_final_zero` init (P = 0: the model equals
    its base at step 0), d_down = 24 and k = 32 (the paper's inferred router widths), scale 1 per
    level unless `alpha` is given (then alpha_l / r_l). A dense gate takes all s_l experts as
    children, so `fan_out` must be left out or equal `experts`."""

    base_model: str = Field(description="the model reference the adapter was trained on")
    experts: list[int] = Field(default=[4, 4], min_length=1, max_length=6,
                               description="s_l, experts per level, bottom level first")
    fan_out: list[int] | None = Field(default=[2, 2], description="f_l, children per parent "
                                      "node (null with the dense gate)")
    rank: list[int] = Field(default=[8, 8], description="r_l, rank of each level-l expert")
    gate: Literal["switch", "noisy_topk", "dense"] = "switch"
    activation: Literal["tanh", "relu", "identity"] = "tanh"
    init: Literal["w_final_zero", "eq_1_layer", "b_zero"] = "w_final_zero"
    router_dim: int = Field(default=24, ge=1, le=1024, description="d_down: the router's "
                            "projection of the token")
    key_dim: int = Field(default=32, ge=1, le=1024, description="k: router key width and MLP "
                         "hidden width, every level")
    alpha: list[float] | None = Field(default=None, description="per-level scale alpha_l / r_l "
                                      "(null: scale 1)")
    balance: float = Field(default=0.01, ge=0.0, le=10.0, description="rho, the load-balance "
                           "coefficient of every router")
    target_modules: list[str] = Field(default_factory=lambda: list(FFN_MODULES), min_length=1)
    last_layers: int | None = Field(default=None, ge=1, description="adapt the top N decoder "
                                    "layers only (null: all)")
    system_prompt: str | None = Field(default=None, description="the system prompt the adapter "
                                      "was trained under; give the pool expert the same one")

    @model_validator(mode="after")
    def _consistent(self) -> SmoreConfig:
        n = len(self.experts)
        lists = {"rank": self.rank, "alpha": self.alpha}
        if self.gate != "dense":
            if self.fan_out is None:
                raise ValueError(f"the {self.gate} gate needs fan_out (children per node, one "
                                 "per level)")
            lists["fan_out"] = self.fan_out
        for name, values in lists.items():
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} levels (experts "
                                 f"{self.experts}); give one per level")
        if min(self.experts) < 1 or min(self.rank) < 1:
            raise ValueError(f"experts {self.experts} and rank {self.rank} must be >= 1")
        if self.gate == "dense":
            if self.fan_out is not None and self.fan_out != self.experts:
                raise ValueError(f"the dense gate takes every expert as a child, so fan_out "
                                 f"{self.fan_out} must be left out (or equal experts {self.experts})")
            return self
        for level, (s, f) in enumerate(zip(self.experts, self.fan_out)):
            if not 1 <= f <= s:
                raise ValueError(f"fan_out[{level}] is {f} but level {level} has {s} experts; "
                                 f"use 1..{s}")
            if self.gate == "noisy_topk" and f >= s:
                raise ValueError(f"the noisy_topk gate needs fan_out < experts (level {level}: "
                                 f"{f} of {s}); lower fan_out or use the switch gate")
        return self

    # -- shapes -------------------------------------------------------------------------------

    @property
    def levels(self) -> int:
        return len(self.experts)

    def fan(self) -> list[int]:
        """f_l as routed (s_l for the dense gate)."""
        return list(self.experts) if self.gate == "dense" else list(self.fan_out)

    def widths(self) -> list[int]:
        """D_0 .. D_L, D_0 = 0."""
        out = [0]
        for s, r in zip(self.experts, self.rank):
            out.append(out[-1] + s * r)
        return out

    def nodes(self) -> list[int]:
        """F_0 .. F_L: tree nodes per token at each level (F_L = 1, the root)."""
        out = [1]
        for f in reversed(self.fan()):
            out.insert(0, out[0] * f)
        return out

    def router_inputs(self) -> list[int]:
        """g_l = d_down + (L - 1 - l) k: the router input width at level l."""
        return [self.router_dim + (self.levels - 1 - lvl) * self.key_dim
                for lvl in range(self.levels)]

    def scales(self) -> list[float]:
        if self.alpha is None:
            return [1.0] * self.levels
        return [a / r for a, r in zip(self.alpha, self.rank)]

    # -- closed forms (spec section 4) ---------------------------------------------------------

    def parameter_count(self, d_in: int, d_out: int) -> int:
        """Trainable parameters of one adapted Linear (spec 4.1)."""
        s, r, widths, k = self.experts, self.rank, self.widths(), self.key_dim
        expert = sum(s[lv] * r[lv] * (d_in + 1) + s[lv] * widths[lv + 1] * (r[lv] + 1)
                     for lv in range(self.levels))
        expert += sum(widths[lv + 1] * (widths[lv] + 1) for lv in range(1, self.levels))
        expert += d_out * (widths[-1] + 1)
        router = d_in * self.router_dim + self.router_dim
        for lv, g in enumerate(self.router_inputs()):
            router += g * k + 2 * k + k * k + s[lv] * k
            if self.gate == "noisy_topk":
                router += g * s[lv]
        return expert + router

    def multiply_adds(self, d_in: int, d_out: int, router: bool = True) -> int:
        """Multiply-adds per token of the dense-then-gather forward: every expert's low-rank
        product at every level (s_l of them; the spec's sparse bound has min(s_l, F_l)), C_l once
        per tree node, P once, plus the router."""
        s, r, widths, nodes = self.experts, self.rank, self.widths(), self.nodes()
        total = sum(s[lv] * r[lv] * (d_in + widths[lv + 1]) for lv in range(self.levels))
        total += sum(nodes[lv] * widths[lv] * widths[lv + 1] for lv in range(1, self.levels))
        total += widths[-1] * d_out
        if router:
            k = self.key_dim
            total += d_in * self.router_dim
            for lv, g in enumerate(self.router_inputs()):
                total += nodes[lv + 1] * (g * k + k * k + k * s[lv])
        return total

    # -- files --------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SmoreConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"'{folder}' is not an S'MoRE folder: it has no {CONFIG_NAME}. "
                              "Pass the --out folder of `orchestrate smore train`.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"'{path}' is not valid JSON ({err}).") from None
        return validate_model(cls, data, f"S'MoRE config '{path}'")
