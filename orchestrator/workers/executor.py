"""Executors: run every (question, expert) request of a run and return results in order.

`grouped` (Symbolic-MoE section 3.4): requests are grouped by expert, each expert is loaded once
and generates all its prompts in batches of `batch_size`; experts already resident go first and
experts sharing a base model sit next to each other, so loads are minimal. `naive`: the
per-instance baseline, which loads the expert for every single request.

`on_batch`, when set, is called with the results of each finished batch (failed ones included)
before the next batch starts: the generation store commits them there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from ..errors import OrchestratorError
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .progress import make_progress
from .residency import Residency
from .stats import ExecutionStats

log = logging.getLogger(__name__)


def _fail_all(requests, message: str) -> list[GenerationResult]:
    return [GenerationResult(request=r, error=message) for r in requests]


def _checked(backend_name: str, requests, results) -> list[GenerationResult]:
    """A backend must answer every request, in order; anything else fails those items."""
    if len(results) != len(requests):
        return _fail_all(
            requests, f"backend {backend_name} returned {len(results)} results for "
            f"{len(requests)} requests"
        )
    return [
        res if res.request == req else GenerationResult(req, error="backend reordered results")
        for req, res in zip(requests, results)
    ]


def _prompt_chars(request: GenerationRequest) -> int:
    return sum(len(m.content) for m in request.messages)


class ExecutorBase:
    name = "base"

    def __init__(self, residency: Residency, batch_size: int = 16, progress: bool = False,
                 on_batch: Callable[[list[GenerationResult]], None] | None = None):
        self.residency, self.batch_size, self.progress = residency, batch_size, progress
        self.on_batch = on_batch

    def _finished(self, results: list[GenerationResult]) -> None:
        if self.on_batch is not None:
            self.on_batch(results)

    @property
    def specs(self) -> dict[str, ExpertSpec]:
        return self.residency.specs

    def _generate(self, expert_id: str, batch: list[GenerationRequest], stats: ExecutionStats):
        spec = self.specs[expert_id]
        backend = self.residency.backends.for_expert(spec)
        s = stats.expert(expert_id)
        start = time.perf_counter()
        try:
            results = _checked(spec.backend, batch, backend.generate(batch))
        except OrchestratorError as err:
            results = _fail_all(batch, str(err))
        except Exception as err:  # a backend bug fails this batch, not the run
            log.debug("backend %s failed on a batch of %s", spec.backend, expert_id, exc_info=True)
            results = _fail_all(batch, f"{type(err).__name__}: {err}")
        s.generate_s += time.perf_counter() - start
        s.calls += len(batch)
        for res in results:
            s.tokens_in += res.tokens_in
            s.tokens_out += res.tokens_out
            s.errors += res.error is not None
        return results

    def _load(self, expert_id: str, stats: ExecutionStats) -> str | None:
        """Load if needed; returns an error message instead of raising."""
        try:
            self.residency.ensure(expert_id, stats)
        except OrchestratorError as err:
            return f"loading expert '{expert_id}' failed: {err}"
        except Exception as err:
            log.debug("loading expert %s failed", expert_id, exc_info=True)
            return f"loading expert '{expert_id}' failed: {type(err).__name__}: {err}"
        return None

    def execute(
        self, requests: Sequence[GenerationRequest]
    ) -> tuple[list[GenerationResult], ExecutionStats]:
        raise NotImplementedError


class GroupedExecutor(ExecutorBase):
    name = "grouped"

    def plan(self, experts: Sequence[str]) -> list[str]:
        """Resident experts first (least recently used first, before anything evicts them);
        then the rest, experts on the same backend and base model next to each other."""
        resident = [e for e in self.residency.resident if e in experts]
        rest = [e for e in experts if e not in resident]
        first_pos = {e: i for i, e in enumerate(rest)}

        def key(e: str):
            spec = self.specs[e]
            return (spec.backend, spec.model, first_pos[e])

        return resident + sorted(rest, key=key)

    def execute(self, requests):
        start = time.perf_counter()
        stats = ExecutionStats()
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.expert, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        with make_progress(self.progress) as bar:
            order = self.plan(list(groups))
            for expert_id in order:
                bar.add(expert_id, len(groups[expert_id]))
            for expert_id in order:
                # similar lengths in one batch waste less compute on padding
                idx = sorted(groups[expert_id], key=lambda i: _prompt_chars(requests[i]))
                error = self._load(expert_id, stats)
                if error is not None:
                    stats.expert(expert_id).errors += len(idx)
                    for i in idx:
                        results[i] = GenerationResult(requests[i], error=error)
                    self._finished([results[i] for i in idx])
                    bar.advance(expert_id, len(idx))
                    continue
                for lo in range(0, len(idx), self.batch_size):
                    chunk = idx[lo : lo + self.batch_size]
                    done = self._generate(expert_id, [requests[i] for i in chunk], stats)
                    for i, res in zip(chunk, done):
                        results[i] = res
                    self._finished(done)
                    bar.advance(expert_id, len(chunk))
        stats.wall_s = time.perf_counter() - start
        return results, stats


class NaiveExecutor(ExecutorBase):
    name = "naive"

    def execute(self, requests):
        start = time.perf_counter()
        stats = ExecutionStats()
        self.residency.release_all()
        results: list[GenerationResult] = []
        with make_progress(self.progress) as bar:
            counts: dict[str, int] = {}
            for r in requests:
                counts[r.expert] = counts.get(r.expert, 0) + 1
            for expert_id, n in counts.items():
                bar.add(expert_id, n)
            for r in requests:
                error = self._load(r.expert, stats)
                if error is not None:
                    stats.expert(r.expert).errors += 1
                    done = [GenerationResult(r, error=error)]
                else:
                    done = self._generate(r.expert, [r], stats)
                    self.residency.release(r.expert, stats)
                results.extend(done)
                self._finished(done)
                bar.advance(r.expert, 1)
        stats.wall_s = time.perf_counter() - start
        return results, stats


EXECUTORS = {"grouped": GroupedExecutor, "naive": NaiveExecutor}
