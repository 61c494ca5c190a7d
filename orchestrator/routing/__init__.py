"""Routers, registered by name in `orchestrator.registry.ROUTERS`."""

from .base import Router, RouterBase

__all__ = ["Router", "RouterBase"]
