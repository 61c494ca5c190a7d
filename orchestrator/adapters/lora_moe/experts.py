"""Read PEFT LoRA adapter folders into per-module (A, B, scaling) tensors, without PEFT.

PEFT stores `base_model.model.<module path>.lora_A.weight` ([r, in]) and `...lora_B.weight`
([out, r]); the update of a Linear is `scaling * B @ A @ x` with scaling = alpha / r (alpha /
sqrt(r) with rsLoRA). Only plain LoRA on Linear layers can be mixed token by token: DoRA,
per-module rank or alpha patterns, biases and fully trained `modules_to_save` are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError

PREFIX = "base_model.model."
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class LoraExpert:
    """One adapter: module path -> (A [r, in], B [out, r]) and its scaling."""

    name: str
    rank: int
    scaling: float
    weights: dict[str, tuple[object, object]]  # torch tensors
    target_modules: set[str]  # the short names (q_proj, v_proj...)


def read_expert(folder: Path, name: str) -> LoraExpert:
    import torch

    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise ConfigError(f"LoRA expert '{name}': '{folder}' is not a PEFT adapter folder (no "
                          "adapter_config.json). Give the folder `save_pretrained` wrote.")
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ConfigError(f"LoRA expert '{name}' is a {cfg.get('peft_type')} adapter; only LORA "
                          "adapters can be mixed.")
    unsupported = [key for key, bad in (
        ("use_dora", bool(cfg.get("use_dora"))),
        ("bias", cfg.get("bias", "none") != "none"),
        ("rank_pattern", bool(cfg.get("rank_pattern"))),
        ("alpha_pattern", bool(cfg.get("alpha_pattern"))),
        ("modules_to_save", bool(cfg.get("modules_to_save"))),
        ("fan_in_fan_out", bool(cfg.get("fan_in_fan_out"))),
    ) if bad]
    if unsupported:
        raise ConfigError(f"LoRA expert '{name}' ({folder}) uses {', '.join(unsupported)}, which a "
                          "token-level mixture cannot combine; train it as plain LoRA on Linear "
                          "layers.")
    rank = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    state = _read_state(folder, name)
    weights: dict[str, tuple[object, object]] = {}
    for key, tensor in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        module = module[len(PREFIX):] if module.startswith(PREFIX) else module
        b_key = key.replace(".lora_A.weight", ".lora_B.weight")
        if b_key not in state:
            raise ConfigError(f"LoRA expert '{name}': '{b_key}' is missing from its weights.")
        weights[module] = (tensor.to(torch.float32), state[b_key].to(torch.float32))
    if not weights:
        raise ConfigError(f"LoRA expert '{name}' ({folder}) holds no lora_A/lora_B weights.")
    return LoraExpert(name, rank, scaling, weights, {m.rsplit(".", 1)[-1] for m in weights})


def _read_state(folder: Path, name: str) -> dict:
    for file in WEIGHTS:
        path = folder / file
        if not path.is_file():
            continue
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=True)
    raise ConfigError(f"LoRA expert '{name}': '{folder}' has no {' or '.join(WEIGHTS)}.")
