"""S'MoRE, the structural mixture of residual experts (Zeng et al., arXiv 2504.06426): per
adapted Linear, L levels of small low-rank experts; a token is routed top-down through a tree
of them and its state propagates bottom-up (config, gate, layer, model, train, inspect; the
spec is ../shared/reference/smore.md). torch is imported on first use of a class that needs it;
`smore.config` alone imports only pydantic."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"SmoreConfig": "config", "SmoreRouter": "gate", "SmoreLinear": "layer",
         "SmoreModel": "model"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
