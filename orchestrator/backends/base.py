"""The ExpertBackend contract: load an expert, generate a batch in order, release it.

One failed item sets `result.error`; it never sinks the batch. Capabilities are class
attributes so the executor can read them without loading anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import BackendError, ConfigError, OrchestratorError
from ..types import ExpertSpec, GenerationRequest, GenerationResult


@dataclass(frozen=True)
class BackendContext:
    """Run-wide settings a backend may need."""

    threads: int | None = None
    seed: int = 0
    base_dir: Path | None = None

    def torch_threads(self) -> int:
        free = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(self.threads or free or 1, free or 1))


@runtime_checkable
class ExpertBackend(Protocol):
    name: ClassVar[str]
    needs_gpu: ClassVar[bool]
    supports_lora: ClassVar[bool]
    resident_limit: ClassVar[int | None]

    def check(self, expert: ExpertSpec, probe: bool = False) -> str: ...

    def diagnose(self, expert: ExpertSpec) -> tuple[str, list[OrchestratorError]]: ...

    def load(self, expert: ExpertSpec) -> None: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def release(self, expert_id: str) -> None: ...

    def close(self) -> None: ...


class BackendOptions(BaseModel):
    """Base of each backend's `options:` schema; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseBackend:
    """Shared plumbing: options parsing and the table of loaded experts."""

    name: ClassVar[str] = "base"
    needs_gpu: ClassVar[bool] = False
    supports_lora: ClassVar[bool] = False
    supports_lora_moe: ClassVar[bool] = False  # token-level LoRA mixtures (`lora_moe:`)
    resident_limit: ClassVar[int | None] = None
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, context: BackendContext | None = None):
        self.context = context or BackendContext()
        self._loaded: dict[str, Any] = {}

    def options(self, expert: ExpertSpec) -> Any:
        try:
            return self.Options.model_validate(dict(expert.options))
        except ValidationError as err:
            details = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: "
                + ("unknown option" if e["type"] == "extra_forbidden" else e["msg"])
                for e in err.errors()[:5]
            )
            allowed = ", ".join(self.Options.model_fields) or "(none)"
            raise ConfigError(
                f"Expert '{expert.id}' (backend {self.name}) has invalid options: {details}. "
                f"Allowed options: {allowed}."
            ) from None

    def check(self, expert: ExpertSpec, probe: bool = False) -> str:
        """Validate an expert's settings without loading it; returns what it resolves to.
        `probe` also asks the environment what only it can tell (installed packages, the local
        Hugging Face cache, a remote server), within a few seconds; the first problem raises."""
        self.options(expert)
        return expert.model or "-"

    def diagnose(self, expert: ExpertSpec) -> tuple[str, list[OrchestratorError]]:
        """`check(expert, probe=True)` with its problems returned instead of raised (for
        `orchestrate pools check`); backends whose checks are independent report each one."""
        try:
            return self.check(expert, probe=True), []
        except OrchestratorError as exc:
            return "-", [exc]

    def is_loaded(self, expert_id: str) -> bool:
        return expert_id in self._loaded

    def loaded(self, expert_id: str) -> Any:
        try:
            return self._loaded[expert_id]
        except KeyError:
            raise BackendError(
                f"Expert '{expert_id}' is not loaded in backend {self.name}; call load() first."
            ) from None

    def release(self, expert_id: str) -> None:
        self._loaded.pop(expert_id, None)

    def close(self) -> None:
        for expert_id in list(self._loaded):
            self.release(expert_id)


def run_checks(steps: Sequence[Callable[[], object]]) -> tuple[str, list[OrchestratorError]]:
    """Run independent checks: what the passing ones resolved (their non-empty strings, joined)
    and every problem."""
    parts, problems = [], []
    for step in steps:
        try:
            part = step()
        except OrchestratorError as exc:
            problems.append(exc)
            continue
        if isinstance(part, str) and part:
            parts.append(part)
    return ", ".join(parts) or "-", problems


def first_problem(checked: tuple[str, list[OrchestratorError]]) -> str:
    """`check`'s contract over run_checks: the resolved text, or the first problem raised."""
    resolved, problems = checked
    if problems:
        raise problems[0]
    return resolved


def request_seed(seed: int, expert_id: str) -> int:
    """The sampling seed of one expert's requests: the run seed mixed with the expert id, so
    that two experts on one model (a pool listing it twice) sample independently, and a run
    with the same seed samples the same again. [0, 2**31)."""
    digest = hashlib.blake2b(f"{seed}:{expert_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string (OpenAI: the stop string is not returned),
    and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def failed(request: GenerationRequest, message: str) -> GenerationResult:
    return GenerationResult(request=request, error=message)
