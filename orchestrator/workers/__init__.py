"""Workers: the grouped executor (and the naive baseline), residency and counters."""

from .cache import CachingExecutor
from .executor import EXECUTORS, GroupedExecutor, NaiveExecutor
from .residency import BackendSet, Residency
from .stats import ExecutionStats, ExpertStats

__all__ = [
    "EXECUTORS", "BackendSet", "CachingExecutor", "ExecutionStats", "ExpertStats", "GroupedExecutor",
    "NaiveExecutor", "Residency",
]
