"""The vLLM engines of one backend and the policy that shares GPUs between them.

Per GPU at most one engine is awake: before an engine starts or wakes, the awake engines that
share a GPU with it go to sleep. Then vLLM's memory rules are checked on each of its GPUs
(vllm_memory.py): a start needs `ceil(total * gpu_memory_utilization)` free, a wake-up needs
back what its sleep freed. While a GPU is short, or holds more sleepers than `max_sleeping`, the
least recently used sleeper on it is shut down. If that is not enough, the start or wake-up is
refused with what was free and what was needed, before vLLM fails halfway.

An engine that died (its core exited, or it ran out of memory) is shut down, its sleep state
cleared and it leaves the table; its experts stay loaded and it starts again on next use.
"""

from __future__ import annotations

import logging
import threading

from ..errors import BackendError
from .vllm_engine import Engine, EngineStart
from .vllm_memory import GpuMemory, gib, required_bytes

log = logging.getLogger(__name__)

_DEATH_TYPES = {"EngineDeadError", "OutOfMemoryError"}  # vllm/v1/engine/exceptions.py, torch


def is_engine_death(err: BaseException) -> bool:
    """An error after which the engine cannot serve again: its core died or CUDA ran out."""
    text = str(err).lower()
    return (type(err).__name__ in _DEATH_TYPES or "out of memory" in text
            or "enginecore encountered an issue" in text or "engine core" in text and "dead" in text)


class EnginePool:
    def __init__(self, max_sleeping: int | None = None) -> None:
        self.engines: dict[tuple, Engine] = {}
        self.starts: list[EngineStart] = []
        self.evictions: list[str] = []   # models shut down to make room, in order
        self.deaths: list[str] = []      # models whose engine died
        self.max_sleeping = max_sleeping
        self.lock = threading.RLock()     # placements may be driven from several threads
        self._memory: GpuMemory | None = None

    @property
    def memory(self) -> GpuMemory:
        if self._memory is None:
            self._memory = GpuMemory()
        return self._memory

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, engine: Engine) -> None:
        with self.lock:
            self._make_room(engine, waking=False)
            try:
                self.starts.append(engine.start())
            except Exception as err:
                engine.shutdown()
                raise BackendError(
                    f"Starting vLLM on model '{engine.model}'{_where(engine)} failed: {err}"
                ) from err
            self.engines[engine.key] = engine

    def awake(self, engine: Engine) -> None:
        """Started (again, after death or eviction) and awake, with the others on its GPUs
        asleep."""
        with self.lock:
            if not engine.running:
                self.start(engine)
                return
            engine.touch()
            if not engine.asleep:
                return
            self._make_room(engine, waking=True)
            try:
                engine.wake()
            except Exception as err:
                self.died(engine, err)
                raise BackendError(
                    f"Waking the vLLM engine of '{engine.model}'{_where(engine)} failed: {err}. "
                    "It restarts on next use; lower options.gpu_memory_utilization if it keeps "
                    "running out of memory."
                ) from err

    def sleep(self, engine: Engine) -> None:
        """Put to sleep; beyond `max_sleeping` sleepers on a GPU the least recently used
        goes."""
        with self.lock:
            engine.sleep(self.memory)
            for gpu in _gpus(engine):
                while self.max_sleeping is not None and len(
                        sleepers := self._sleepers(gpu, None)) > self.max_sleeping:
                    victim = min(sleepers, key=lambda e: e.last_used)
                    self.evictions.append(victim.model)
                    self.drop(victim)

    def drop(self, engine: Engine, collect: bool = True) -> None:
        with self.lock:
            if self.engines.get(engine.key) is engine:
                del self.engines[engine.key]
            engine.shutdown(collect)

    def died(self, engine: Engine, err: BaseException) -> None:
        with self.lock:
            self.deaths.append(engine.model)
            if self.engines.get(engine.key) is engine:
                del self.engines[engine.key]
            engine.mark_dead(f"{type(err).__name__}: {err}")

    def close(self) -> None:
        with self.lock:
            engines = list(self.engines.values())
            for i, engine in enumerate(engines):
                self.drop(engine, collect=i == len(engines) - 1)
            if self._memory is not None:
                self._memory.close()

    # -- the policy ---------------------------------------------------------------------------

    def _make_room(self, engine: Engine, waking: bool) -> None:
        gpus = _gpus(engine)
        for other in list(self.engines.values()):
            if (other is not engine and other.running and not other.asleep and other.can_sleep
                    and set(_gpus(other)) & set(gpus)):
                other.sleep(self.memory)
        memory = self.memory
        if not memory.available:
            return
        while True:
            need, free = {}, {}
            for gpu in gpus:
                free[gpu], total = memory.info(gpu)
                want = required_bytes(total, engine.utilization)
                need[gpu] = engine.freed.get(gpu, want) if waking else want
            short = [g for g in gpus if free[g] < need[g]]
            crowded = [g for g in gpus if self.max_sleeping is not None
                       and len(self._sleepers(g, engine)) > self.max_sleeping]
            if not short and not crowded:
                return
            victims = sorted({id(e): e for g in short + crowded
                              for e in self._sleepers(g, engine)}.values(),
                             key=lambda e: e.last_used)
            if not victims:
                g = short[0]
                what = "wake-up needs back what its sleep freed" if waking else (
                    f"vLLM needs gpu_memory_utilization {engine.utilization} of the total free "
                    "at start")
                raise BackendError(
                    f"GPU {g} has {gib(free[g])} free; the engine of '{engine.model}' needs "
                    f"{gib(need[g])} ({what}) and no sleeping engine is left to shut down. "
                    "Lower options.gpu_memory_utilization, or free the GPU from other processes."
                )
            victim = victims[0]
            log.info("shutting down the sleeping vllm engine of %s (least recently used) to "
                     "make room for %s", victim.model, engine.model)
            self.evictions.append(victim.model)
            self.drop(victim)

    def _sleepers(self, gpu: int, besides: Engine | None) -> list[Engine]:
        return [e for e in self.engines.values()
                if e is not besides and e.running and e.asleep and gpu in _gpus(e)]

    def report(self) -> list[dict]:
        """One row per running engine: where it is, whether it sleeps, what it holds asleep."""
        return [{"model": e.model, "gpus": list(_gpus(e)), "asleep": e.asleep,
                 "residual_bytes": {str(g): int(b) for g, b in e.residual.items()},
                 "last_used": e.last_used} for e in self.engines.values() if e.running]


def _gpus(engine: Engine) -> tuple[int, ...]:
    if engine.gpus is not None:
        return engine.gpus
    return tuple(range(int(engine.kwargs.get("tensor_parallel_size", 1))))


def _where(engine: Engine) -> str:
    return f" on GPU {','.join(map(str, engine.gpus))}" if engine.gpus is not None else ""
