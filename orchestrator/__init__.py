"""orchestrator: a symbolic model-level router over pools of expert LLMs.

SDK surface: `Orchestrator`, `load_pool`, `load_config`, the config models and the errors.
Importing this package imports neither torch nor transformers.
"""

from .config import PoolConfig, RunConfig, load_config, load_pool
from .core import Orchestrator, RunResult
from .errors import (
    BackendError,
    BenchmarkFormatError,
    ConfigError,
    ModelNotFoundError,
    OrchestratorError,
    RoutingError,
    UnknownNameError,
    UserError,
)
from .types import Answer, Query

__version__ = "0.1.0"

__all__ = [
    "Answer", "BackendError", "BenchmarkFormatError", "ConfigError", "ModelNotFoundError",
    "Orchestrator", "OrchestratorError", "PoolConfig", "Query", "RoutingError", "RunConfig",
    "RunResult", "UnknownNameError", "UserError", "__version__", "load_config", "load_pool",
]
