"""Token-level LoRA-MoE: a gate that mixes frozen LoRA experts inside one model (PEFT's tuner
layout: config, gate, layer, model). torch is imported when this package is."""

from .config import LoraMoeConfig
from .gate import LoraMoeGate, Routing
from .layer import LoraMoeLinear
from .model import LoraMoeModel

__all__ = ["LoraMoeConfig", "LoraMoeGate", "LoraMoeLinear", "LoraMoeModel", "Routing"]
