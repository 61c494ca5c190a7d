"""StoredExecutor: the generation store in front of any executor (`execute(requests) ->
(results, stats)`), a drop-in for the sweep's in-memory CachingExecutor.

A request whose key is stored gets the stored text; only the others reach the wrapped executor,
in one `execute` call (still grouped by expert), and each of its finished batches is committed
(through the executor's `on_batch` hook) before the next batch starts, so a killed run loses at
most the batches in flight. Failures go to the errors table and are generated again next time.
A key repeated within one call is generated once, unless it is an unseeded sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..types import GenerationRequest, GenerationResult
from ..workers.stats import ExecutionStats
from .db import GenerationStore, Row, StoredGeneration
from .keys import KeyMaker, reusable
from .writer import WriteBehind

Extract = Callable[[GenerationResult], "str | None"]


def _answers_by_id(residency) -> Callable[[str], bool]:
    def by_id(expert_id: str) -> bool:
        spec = residency.specs.get(expert_id)
        backend = residency.backends.for_expert(spec) if spec is not None else None
        return bool(getattr(backend, "answers_by_id", False))

    return by_id


def key_maker(residency, store: GenerationStore | None = None) -> KeyMaker:
    """Keys of a residency's pool (its specs, the pool folder, its backends' capabilities)."""
    return KeyMaker(residency.specs, residency.backends.context.base_dir, store,
                    _answers_by_id(residency))


def stored_result(request: GenerationRequest, stored: StoredGeneration) -> GenerationResult:
    return GenerationResult(request, stored.text, stored.tokens_in, stored.tokens_out)


class StoredExecutor:
    """Wraps an executor; other attributes (`residency`, `batch_size`, `plan`...) are the
    wrapped executor's. `extract(result) -> answer | None`, when given, fills the stored
    `answer` column. `write_behind`: commit each finished batch in a background thread while
    the next one generates (at most one finished batch uncommitted) instead of before it
    starts. `hits`/`misses` count as CachingExecutor's do."""

    def __init__(self, inner, store: GenerationStore, *, reuse_unseeded: bool = False,
                 extract: Extract | None = None, write_behind: bool = False):
        self.inner, self.store = inner, store
        self.reuse_unseeded, self.extract = reuse_unseeded, extract
        self.write_behind = write_behind
        self.keys = key_maker(inner.residency, store)
        self.hits = 0
        self.misses = 0
        self.written = 0

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def count_present(self, requests: Sequence[GenerationRequest]) -> tuple[int, int]:
        """(how many of `requests` the store can answer, how many requests): what a resumed
        run will not generate again."""
        keys = [k for k, r in zip(self.keys.keys(requests), requests)
                if self.reuse_unseeded or reusable(r.sampling)]
        return self.store.count_present(keys, reuse_unseeded=self.reuse_unseeded), len(requests)

    def _commit(self, batch: list[GenerationResult], seconds: float,
                keys: dict[int, tuple[GenerationRequest, bytes]]) -> None:
        """Store one finished batch: texts as generations, failures as errors. `keys` maps
        id(request) -> (request, key) for the requests this call generates."""
        rows, errors, experts = [], [], {}
        extract = self.extract
        for res in batch:
            request = res.request
            known = keys.get(id(request))
            key = known[1] if known is not None and known[0] is request else self.keys.key(request)
            expert_key, _, identity = self.keys.expert(request.expert)
            if expert_key not in experts:
                experts[expert_key] = (request.expert, identity)
            if res.error is None:
                rows.append(Row(
                    key, expert_key, request.expert, request.query_id, reusable(request.sampling),
                    res.text, extract(res) if extract else None,
                    getattr(res, "finish_reason", None), res.tokens_in, res.tokens_out, seconds))
            else:
                errors.append((key, request.expert, request.query_id, res.error))
        self.store.put(rows, errors, experts)
        self.written += len(rows)

    def execute(
        self, requests: Sequence[GenerationRequest]
    ) -> tuple[list[GenerationResult], ExecutionStats]:
        keys = self.keys.keys(requests)
        stored = self.store.lookup(keys, reuse_unseeded=self.reuse_unseeded)
        results: list[GenerationResult | None] = [None] * len(requests)
        pending: dict[bytes | int, list[int]] = {}  # key -> positions; the first is generated
        for i, (request, key) in enumerate(zip(requests, keys)):
            fresh = not (self.reuse_unseeded or reusable(request.sampling))
            hit = None if fresh else stored.get(key)
            if hit is not None:
                results[i] = stored_result(request, hit)
                self.hits += 1
            else:  # an unseeded sample is drawn anew each time it is asked for
                pending.setdefault(i if fresh else key, []).append(i)
        from_store = len(requests) - sum(len(p) for p in pending.values())
        if not pending:
            stats = ExecutionStats()
            stats.from_store = from_store
            return results, stats  # type: ignore[return-value]
        misses = [requests[positions[0]] for positions in pending.values()]
        generated, stats = self._run(
            misses, {id(requests[p[0]]): (requests[p[0]], keys[p[0]]) for p in pending.values()})
        self.misses += len(misses)
        for positions, res in zip(pending.values(), generated):
            results[positions[0]] = res
            for i in positions[1:]:
                results[i] = replace(res, request=requests[i])
            self.hits += len(positions) - 1
        stats.from_store += from_store
        return results, stats  # type: ignore[return-value]

    def _run(self, misses, keys: dict[int, tuple[GenerationRequest, bytes]]):
        """Run the misses with the on_batch hook set on the wrapped executor (restored
        afterwards): each finished batch is committed before the next one starts, or, with
        `write_behind`, while it runs. An executor without the hook is written at its end."""
        inner = self.inner
        writer = WriteBehind(lambda item: self._commit(*item, keys)) if self.write_behind else None
        last = [time.perf_counter()]

        def finished(batch: list[GenerationResult]) -> None:
            now = time.perf_counter()
            seconds, last[0] = (now - last[0]) / max(1, len(batch)), now
            if writer is None:
                self._commit(batch, seconds, keys)
            else:
                writer.submit((batch, seconds))

        previous = getattr(inner, "on_batch", None)
        try:
            if not hasattr(inner, "on_batch"):
                generated, stats = inner.execute(misses)
                finished(list(generated))
                return generated, stats
            inner.on_batch = finished if previous is None else _chain(previous, finished)
            return inner.execute(misses)
        finally:
            if hasattr(inner, "on_batch"):
                inner.on_batch = previous
            if writer is not None:
                writer.close()  # what finished is committed, even on Ctrl-C


def _chain(first, second):
    def both(batch):
        first(batch)
        second(batch)

    return both
