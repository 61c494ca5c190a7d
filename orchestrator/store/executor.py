"""StoredExecutor: the generation store in front of any executor (`execute(requests) ->
(results, stats)`), a drop-in for the sweep's in-memory CachingExecutor.

A request whose key is stored gets the stored text; only the others reach the wrapped executor,
in one `execute` call (still grouped by expert), and each of its finished batches is committed
(through the executor's `on_batch` hook) before the next batch starts, so a killed run loses at
most the batches in flight. Failures go to the errors table and are generated again next time.
A key repeated within one call is generated once, unless it is an unseeded sample.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..types import GenerationRequest, GenerationResult
from ..workers.stats import ExecutionStats
from .db import GenerationStore, Row, StoredGeneration
from .keys import KeyMaker, reusable

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


def query_extractor(queries) -> Extract:
    """An `extract` for StoredExecutor: the answer a run reads from a result, found by its
    question id among `queries` (set it before each run: `executor.extract = ...`)."""
    from ..benchmarks.extract import extract_answer

    by_id = {q.id: q for q in queries}

    def extract(res: GenerationResult) -> str | None:
        query = by_id.get(res.request.query_id)
        return None if query is None else extract_answer(res.text, query.answer_type,
                                                         query.options)

    return extract


def stored_result(request: GenerationRequest, stored: StoredGeneration) -> GenerationResult:
    finish = stored.finish_reason if stored.finish_reason in ("stop", "length") else None
    return GenerationResult(request, stored.text, stored.tokens_in, stored.tokens_out,
                            finish_reason=finish)


class StoredExecutor:
    """Wraps an executor; other attributes (`residency`, `batch_size`, `plan`...) are the
    wrapped executor's. `extract(result) -> answer | None`, when given, fills the stored
    `answer` column. `group_s` > 0 groups the commits of batches that finish faster than that
    (a replay or fake pool: hundreds of batches a second); 0 commits every batch. `hits` and
    `misses` count as CachingExecutor's do."""

    def __init__(self, inner, store: GenerationStore, *, reuse_unseeded: bool = False,
                 extract: Extract | None = None, group_s: float = 0.0):
        self.inner, self.store = inner, store
        self.reuse_unseeded, self.extract, self.group_s = reuse_unseeded, extract, group_s
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

    def _commit(self, batches: list[tuple[list[GenerationResult], float]],
                keys: dict[int, tuple[GenerationRequest, bytes]]) -> None:
        """Store finished batches (each with its seconds / its size): texts as generations,
        failures as errors. `keys` maps id(request) -> (request, key) for the requests this
        call generates."""
        rows, errors, experts = [], [], {}
        extract = self.extract
        for res, seconds in ((res, s) for batch, s in batches for res in batch):
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
        self, requests: Sequence[GenerationRequest], on_batch=None
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
            misses, {id(requests[p[0]]): (requests[p[0]], keys[p[0]]) for p in pending.values()},
            on_batch)
        self.misses += len(misses)
        for positions, res in zip(pending.values(), generated):
            results[positions[0]] = res
            for i in positions[1:]:
                results[i] = replace(res, request=requests[i])
            self.hits += len(positions) - 1
        stats.from_store += from_store
        return results, stats  # type: ignore[return-value]

    def _run(self, misses, keys: dict[int, tuple[GenerationRequest, bytes]], outer=None):
        """Run the misses with the on_batch hook set on the wrapped executor (restored
        afterwards). Each finished batch is committed before the next one starts; with
        `group_s`, batches that finish within `group_s` of the last commit wait for the next
        one (at most `group_s` of finished work is uncommitted). An executor without the hook
        is written when it returns. Whatever finished is committed even on Ctrl-C. The hook
        may be called from several threads (placements running concurrently)."""
        inner = self.inner
        waiting: list[tuple[list[GenerationResult], float]] = []
        clock = {"batch": time.perf_counter(), "commit": time.perf_counter()}
        lock = threading.Lock()

        def commit() -> None:
            if waiting:
                batch = waiting[:]
                waiting.clear()
                self._commit(batch, keys)
            clock["commit"] = time.perf_counter()

        def finished(batch: list[GenerationResult]) -> None:
            if outer is not None:  # a caller's own hook (an outer store)
                outer(batch)
            with lock:
                now = time.perf_counter()
                seconds, clock["batch"] = (now - clock["batch"]) / max(1, len(batch)), now
                waiting.append((batch, seconds))
                if now - clock["commit"] >= self.group_s:
                    commit()

        # the executors take the hook per call (safe when several executions run at once, as
        # the server's batches do); a wrapper without the argument is written when it returns
        takes_hook = "on_batch" in inspect.signature(inner.execute).parameters
        try:
            if not takes_hook:
                generated, stats = inner.execute(misses)
                finished(list(generated))
                return generated, stats
            return inner.execute(misses, on_batch=finished)
        finally:
            with lock:
                commit()

