"""Aggregators, registered by name in `orchestrator.registry.AGGREGATORS`."""

from .base import Aggregator, AggregatorBase

__all__ = ["Aggregator", "AggregatorBase"]
