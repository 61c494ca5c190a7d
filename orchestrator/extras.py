"""Optional dependencies: the core install (`pip install orchestrator`) routes, runs dry runs and
talks to OpenAI-compatible servers; the rest comes in extras, imported only where used:

  [cpu]     torch, transformers, sentence-transformers, peft, accelerate, gguf, safetensors
            (the transformers backend, the embedding annotator, LoRA training)
  [serve]   fastapi, uvicorn, prometheus-client (`orchestrate serve`)
  [report]  matplotlib (the run report's figures, sweep plots)
  [vllm]    vllm (the vllm backend)

`require(module, needed_by)` is the one gate at every lazy import of them: a missing module
becomes a MissingExtraError that names the extra and the pip command (exit 2 from the CLI).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from types import ModuleType

from .errors import MissingExtraError

# extra -> top-level import names it brings; tests check this table against pyproject.toml
EXTRAS: dict[str, tuple[str, ...]] = {
    "cpu": ("torch", "transformers", "sentence_transformers", "peft", "accelerate", "gguf",
            "safetensors"),
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
    "report": ("matplotlib",),
    "vllm": ("vllm",),
}
_EXTRA_OF = {module: extra for extra, modules in EXTRAS.items() for module in modules}


def extra_of(module: str) -> str:
    top = module.partition(".")[0]
    try:
        return _EXTRA_OF[top]
    except KeyError:
        raise ValueError(f"'{top}' belongs to no extra; add it to EXTRAS") from None


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (find_spec runs no package code)."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(modules: Iterable[str], needed_by: str) -> MissingExtraError | None:
    """The error to raise when any of `modules` is not installed, else None (imports nothing)."""
    absent = [m for m in modules if not installed(m)]
    if not absent:
        return None
    return MissingExtraError(needed_by, absent, list(dict.fromkeys(map(extra_of, absent))))


def require_installed(modules: Iterable[str], needed_by: str) -> None:
    """Raise MissingExtraError unless every module is installed (a cheap check before a run)."""
    error = missing_extra(modules, needed_by)
    if error is not None:
        raise error


def require(module: str, needed_by: str) -> ModuleType:
    """`import module`, or a MissingExtraError naming its extra when it is not installed.

    >>> torch = require("torch", "the transformers backend")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # only the module itself (or its package) being absent is a missing extra; a broken
        # install that fails on one of its own imports keeps its real error
        if exc.name is None or module.partition(".")[0] != exc.name.partition(".")[0]:
            raise
        raise MissingExtraError(needed_by, [module], [extra_of(module)]) from None
