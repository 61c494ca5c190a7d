"""Token-level LoRA-MoE: a gate that mixes frozen LoRA experts inside one model (PEFT's tuner
layout: config, gate, layer, model). torch is imported on first use of a class that needs it;
`lora_moe.config` alone imports only pydantic."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"LoraMoeConfig": "config", "LoraMoeGate": "gate", "Routing": "gate",
         "LoraMoeLinear": "layer", "LoraMoeModel": "model"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
