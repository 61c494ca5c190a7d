"""`LoraMoeConfig`: which LoRA experts a LoRA-MoE model mixes, where, and how its gate picks.

Saved next to the gate weights as `lora_moe_config.json`. Expert folders are PEFT adapter
folders (adapter_config.json + adapter_model.safetensors); a relative folder is resolved
against the folder the config was read from, so a trained gate can ship with its experts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ...config import StrictModel, validate_model
from ...errors import ConfigError

CONFIG_NAME = "lora_moe_config.json"


class LoraMoeConfig(StrictModel):
    """The mixture's settings. `top_k` is the most experts a token uses; with `top_p` a token
    uses the fewest (1..top_k) whose gate probabilities sum to at least `top_p` ("Harder Tasks
    Need More Experts"). `null_experts` adds experts that compute nothing (AdaMoE): choosing
    one lowers a token's real experts and their weight."""

    base_model: str = Field(description="the model reference the experts were trained on")
    experts: list[str] = Field(min_length=1, max_length=64, description="PEFT adapter folders")
    expert_names: list[str] | None = None
    target_modules: list[str] | None = Field(
        default=None, description="module names to mix in (default: every module any expert "
        "adapts)")
    top_k: int = Field(default=2, ge=1, le=64)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    null_experts: int = Field(default=0, ge=0, le=64)
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)
    renormalize: bool = Field(default=False, description="weights: the chosen experts' gate "
                              "probabilities (False) or those divided by their sum (True)")
    aux_loss_coef: float = Field(default=0.01, ge=0.0, le=10.0,
                                 description="weight of the load-balance loss")
    gate: Literal["per-layer", "shared"] = "per-layer"
    system_prompt: str | None = Field(default=None, description="the system prompt the gate "
                                      "was trained under; give the pool expert the same one")

    @model_validator(mode="after")
    def _consistent(self) -> LoraMoeConfig:
        total = len(self.experts) + self.null_experts
        if self.top_k > total:
            raise ValueError(f"top_k is {self.top_k} but there are only {total} experts "
                             f"({len(self.experts)} LoRA + {self.null_experts} null); lower top_k")
        if self.expert_names is not None:
            if len(self.expert_names) != len(self.experts):
                raise ValueError(f"expert_names has {len(self.expert_names)} names for "
                                 f"{len(self.experts)} experts; give one name per expert")
            if len(set(self.expert_names)) != len(self.expert_names):
                raise ValueError("expert_names must be unique")
        return self

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    @property
    def n_choices(self) -> int:
        """Gate outputs: the LoRA experts, then the null experts."""
        return len(self.experts) + self.null_experts

    def names(self) -> list[str]:
        return list(self.expert_names) if self.expert_names else [Path(e).name for e in self.experts]

    def expert_paths(self, base_dir: Path | None) -> list[Path]:
        paths = []
        for entry in self.experts:
            path = Path(entry).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            paths.append(path)
        return paths

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> LoraMoeConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"'{folder}' is not a LoRA-MoE folder: it has no {CONFIG_NAME}. "
                              "Pass the --out folder of `orchestrate lora-moe train`.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"'{path}' is not valid JSON ({err}).") from None
        return validate_model(cls, data, f"LoRA-MoE config '{path}'")
