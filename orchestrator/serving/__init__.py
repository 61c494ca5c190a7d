"""Online serving pieces used by `orchestrate serve`: the asyncio micro-batcher."""

from .batcher import MicroBatcher

__all__ = ["MicroBatcher"]
