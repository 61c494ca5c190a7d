"""`orchestrate pools check`: everything that would stop a pool's run, found before it starts.

Each expert is checked by its backend with `probe` on (`ExpertBackend.diagnose`): the manifest's
options, the model reference, adapter and LoRA-MoE folders, the packages the backend imports
(a missing extra), a hub id absent from the local Hugging Face cache, an `openai_http` server
that does not answer `GET /v1/models` or does not list the model. Problems are collected, not
raised, so one check lists them all. Nothing is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.base import BackendContext
from .config import PoolConfig, load_pool
from .errors import (
    ConfigError,
    FolderNotFoundError,
    MissingExtraError,
    ModelNotCachedError,
    ModelNotFoundError,
    ModelNotServedError,
    OrchestratorError,
    ServerUnreachableError,
    UnknownNameError,
)
from .registry import BACKENDS
from .types import ExpertSpec

# error class -> the problem's kind in the JSON report (first match wins; subclasses first)
KINDS: tuple[tuple[type[OrchestratorError], str], ...] = (
    (MissingExtraError, "missing_package"),
    (ModelNotCachedError, "model_not_cached"),
    (ModelNotFoundError, "model_not_found"),
    (ServerUnreachableError, "server_unreachable"),
    (ModelNotServedError, "model_not_served"),
    (FolderNotFoundError, "folder_missing"),
    (UnknownNameError, "unknown_backend"),
)
# manifest field -> the backend capability that serves it
CAPABILITIES = (("adapter", "supports_lora"), ("lora_moe", "supports_lora_moe"),
                ("smore", "supports_smore"))


@dataclass(frozen=True)
class Problem:
    expert: str
    kind: str  # one of KINDS' names, or "invalid" (an option or setting the backend rejects)
    message: str

    @classmethod
    def of(cls, expert: str, error: OrchestratorError) -> Problem:
        kind = next((name for cls_, name in KINDS if isinstance(error, cls_)), "invalid")
        return cls(expert, kind, str(error))


@dataclass(frozen=True)
class ExpertCheck:
    spec: ExpertSpec
    resolved: str  # what the model (and adapter...) resolve to; "-" when nothing did
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class PoolCheck:
    pool: PoolConfig
    experts: tuple[ExpertCheck, ...]

    @property
    def problems(self) -> list[Problem]:
        return [p for e in self.experts for p in e.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool.name, "ok": self.ok, "resident_limit": self.pool.resident_limit,
            "experts": [{"id": e.spec.id, "backend": e.spec.backend, "model": e.spec.model,
                         "adapter": e.spec.adapter, "lora_moe": e.spec.lora_moe,
                         "resolved": e.resolved,
                         "problems": [{"kind": p.kind, "message": p.message} for p in e.problems]}
                        for e in self.experts],
            "problems": [{"expert": p.expert, "kind": p.kind, "message": p.message}
                         for p in self.problems],
        }


def capability_problems(spec: ExpertSpec, backend: object) -> list[OrchestratorError]:
    """An adapter or LoRA-MoE on a backend that cannot serve it."""
    return [ConfigError(f"Expert '{spec.id}' sets {key}, which backend '{spec.backend}' cannot "
                        "serve; use backend: transformers.")
            for key, capability in CAPABILITIES
            if getattr(spec, key) and not getattr(backend, capability, False)]


def check_expert(spec: ExpertSpec, context: BackendContext, backends: dict[str, Any]) -> ExpertCheck:
    try:
        if spec.backend not in backends:
            backends[spec.backend] = BACKENDS.get(spec.backend)(context)
    except OrchestratorError as exc:
        return ExpertCheck(spec, "-", (Problem.of(spec.id, exc),))
    backend = backends[spec.backend]
    resolved, problems = backend.diagnose(spec)
    problems = capability_problems(spec, backend) + list(problems)
    return ExpertCheck(spec, resolved, tuple(Problem.of(spec.id, p) for p in problems))


def check_pool(pool: PoolConfig | str | Path) -> PoolCheck:
    """Check every expert of a pool (a PoolConfig or a manifest path); an invalid manifest
    raises ConfigError as when loading it."""
    if not isinstance(pool, PoolConfig):
        pool = load_pool(pool)
    context = BackendContext(base_dir=pool.base_dir)
    backends: dict[str, Any] = {}
    try:
        checks = tuple(check_expert(spec, context, backends) for spec in pool.specs().values())
    finally:
        for backend in backends.values():
            backend.close()
    return PoolCheck(pool, checks)
