"""A generation cache in front of any executor: a request whose (expert, messages, sampling) was
answered before gets the stored result, so a sweep over k (or any repeated evaluation) never
generates the same prompt for the same expert twice.

Only the misses reach the wrapped executor, in one `execute` call (so they are still grouped by
expert); a key repeated within one call is generated once. Failed results are not stored, so a
later call retries them. The returned stats cover the generations actually run.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace

from ..types import GenerationRequest, GenerationResult
from .stats import ExecutionStats


def request_key(request: GenerationRequest, by_id: bool = False) -> Hashable:
    """What determines an expert's answer: the expert, the prompt messages and the sampling
    (not the position in the run). `by_id`: the backend answers by question id (replay), so
    two questions with the same text are different requests."""
    key = (request.expert, request.messages, request.sampling)
    return (*key, request.query_id) if by_id else key


class CachingExecutor:
    """Wraps an executor (`execute(requests) -> (results, stats)`); other attributes
    (`residency`, `batch_size`, `plan`...) are the wrapped executor's."""

    def __init__(self, inner):
        self.inner = inner
        self.hits = 0
        self.misses = 0
        self._store: dict[Hashable, GenerationResult] = {}
        self._answers_by_id: dict[str, bool] = {}

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _by_id(self, expert_id: str) -> bool:
        """Whether the expert's backend looks answers up by question id."""
        if expert_id not in self._answers_by_id:
            residency = getattr(self.inner, "residency", None)
            spec = residency.specs.get(expert_id) if residency is not None else None
            backend = residency.backends.for_expert(spec) if spec is not None else None
            self._answers_by_id[expert_id] = bool(getattr(backend, "answers_by_id", False))
        return self._answers_by_id[expert_id]

    def __len__(self) -> int:
        return len(self._store)

    def execute(
        self, requests: Sequence[GenerationRequest], on_batch=None
    ) -> tuple[list[GenerationResult], ExecutionStats]:
        results: list[GenerationResult | None] = [None] * len(requests)
        pending: dict[Hashable, list[int]] = {}  # key -> positions, the first one is generated
        for i, request in enumerate(requests):
            key = request_key(request, self._by_id(request.expert))
            stored = self._store.get(key)
            if stored is not None:
                results[i] = replace(stored, request=request)
                self.hits += 1
            else:
                pending.setdefault(key, []).append(i)
        if not pending:
            return results, ExecutionStats()  # type: ignore[return-value]
        misses = [requests[positions[0]] for positions in pending.values()]
        generated, stats = (self.inner.execute(misses, on_batch=on_batch) if on_batch
                            else self.inner.execute(misses))
        self.misses += len(misses)
        for (key, positions), res in zip(pending.items(), generated):
            if res.error is None:
                self._store[key] = res
            results[positions[0]] = res
            for i in positions[1:]:
                results[i] = replace(res, request=requests[i])
            self.hits += len(positions) - 1
        return results, stats  # type: ignore[return-value]
