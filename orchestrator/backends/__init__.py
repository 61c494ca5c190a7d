"""Expert backends, registered by name in `orchestrator.registry.BACKENDS` (lazy imports)."""

from .base import BackendContext, BaseBackend, ExpertBackend

__all__ = ["BackendContext", "BaseBackend", "ExpertBackend"]
