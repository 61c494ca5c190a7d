"""Executors: run every (question, expert) request of a run and return results in order.

`grouped` (Symbolic-MoE section 3.4): requests are grouped by expert, each expert is loaded once
and generates all its prompts in batches of `batch_size`; experts already resident go first and
experts sharing a base model sit next to each other, so loads are minimal. Experts on different
placements (GPUs, servers; `placement.py`) run at the same time, one worker thread per
placement, each keeping that schedule; a placement serves one execution at a time, so
concurrent `execute` calls (the server's batches) wait only for the placements they share.
`naive`: the per-instance baseline, which loads the expert for every single request.

`on_batch(results)` (an `execute` argument, or the executor's `on_batch` attribute, which the
generation store sets; both are called when both are set) receives each finished batch, failed
ones included, in the thread that called `execute` (a store writing there needs no locking).
With one placement that happens before the next batch starts; with several, the other
placements go on meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from ..errors import OrchestratorError
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .placement import Lane, assign, resolved_spec
from .progress import make_progress
from .residency import DEFAULT_PLACEMENT, Residency
from .stats import ExecutionStats

log = logging.getLogger(__name__)

OnBatch = Callable[[list[GenerationResult]], None]


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
                 on_batch: OnBatch | None = None, gpus: Sequence[int] | None = None):
        self.residency, self.batch_size, self.progress = residency, batch_size, progress
        self.on_batch = on_batch
        self.gpus = list(gpus) if gpus else None

    def _hook(self, on_batch: OnBatch | None) -> OnBatch:
        """The callbacks for finished batches: the argument and the attribute, in that order."""
        hooks = [h for h in (on_batch, self.on_batch) if h is not None]

        def call(results: list[GenerationResult]) -> None:
            for hook in hooks:
                hook(results)

        return call

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
        take_failovers = getattr(backend, "take_failovers", None)
        if take_failovers is not None:
            s.failovers += take_failovers(expert_id)
        for res in results:
            s.tokens_in += res.tokens_in
            s.tokens_out += res.tokens_out
            s.errors += res.error is not None
        return results

    def _load(self, expert_id: str, stats: ExecutionStats, lane: Lane | None = None) -> str | None:
        """Load if needed; returns an error message instead of raising."""
        try:
            if lane is None:
                self.residency.ensure(expert_id, stats)
            else:
                spec = resolved_spec(self.specs[expert_id], lane)
                self.residency.ensure(expert_id, stats, lane.key, spec)
        except OrchestratorError as err:
            return f"loading expert '{expert_id}' failed: {err}"
        except Exception as err:
            log.debug("loading expert %s failed", expert_id, exc_info=True)
            return f"loading expert '{expert_id}' failed: {type(err).__name__}: {err}"
        return None

    def execute(
        self, requests: Sequence[GenerationRequest], on_batch: OnBatch | None = None
    ) -> tuple[list[GenerationResult], ExecutionStats]:
        raise NotImplementedError


class _Run:
    """One `execute` call's cancellation: all placements, or some."""

    def __init__(self) -> None:
        self.everything = threading.Event()
        self.lanes: set[str] = set()

    def cancel(self, placement: str | None = None) -> None:
        if placement is None:
            self.everything.set()
        else:
            self.lanes.add(placement)

    def cancelled(self, placement: str) -> bool:
        return self.everything.is_set() or placement in self.lanes


class GroupedExecutor(ExecutorBase):
    name = "grouped"

    def __init__(self, residency: Residency, batch_size: int = 16, progress: bool = False,
                 on_batch: OnBatch | None = None, gpus: Sequence[int] | None = None):
        super().__init__(residency, batch_size, progress, on_batch, gpus)
        self._lane_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._runs: set[_Run] = set()

    def plan(self, experts: Sequence[str], placement: str | None = None) -> list[str]:
        """Resident experts first (least recently used first, before anything evicts them);
        then the rest, experts on the same backend and base model next to each other."""
        loaded = (self.residency.resident if placement is None
                  else self.residency.resident_on(placement))
        resident = [e for e in loaded if e in experts]
        rest = [e for e in experts if e not in resident]
        first_pos = {e: i for i, e in enumerate(rest)}

        def key(e: str):
            spec = self.specs.get(e)  # an unknown expert fails when it loads
            return (spec.backend, spec.model, first_pos[e]) if spec else ("", "", first_pos[e])

        return resident + sorted(rest, key=key)

    def placements(self, requests: Sequence[GenerationRequest]) -> dict[str, Lane]:
        """expert -> placement for these requests (see placement.py)."""
        work: dict[str, float] = {}
        for r in requests:
            work[r.expert] = work.get(r.expert, 0.0) + r.sampling.max_tokens
        known = {e: w for e, w in work.items() if e in self.specs}
        lanes = assign(known, self.specs, self.residency.backends.for_expert, self.gpus,
                       self.residency.placement_of)
        return {e: lanes.get(e, Lane(DEFAULT_PLACEMENT)) for e in work}  # unknown: load fails

    def cancel(self, placement: str | None = None) -> None:
        """Stop running executions at their next batch (one placement, or all); what did not
        run fails with a `cancelled` error."""
        with self._guard:
            for run in self._runs:
                run.cancel(placement)

    def _lane_lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._lane_locks.setdefault(key, threading.Lock())

    def execute(self, requests, on_batch=None):
        start = time.perf_counter()
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.expert, []).append(i)
        lanes = self.placements(requests)
        by_lane: dict[Lane, list[str]] = {}
        for expert_id in groups:
            by_lane.setdefault(lanes[expert_id], []).append(expert_id)
        results: list[GenerationResult | None] = [None] * len(requests)
        hook = self._hook(on_batch)
        lane_stats = {lane: ExecutionStats() for lane in by_lane}
        run = _Run()
        with self._guard:
            self._runs.add(run)
        try:
            with make_progress(self.progress) as bar:
                label = (lambda e, lane: f"{e} @{lane.key}") if len(by_lane) > 1 else (
                    lambda e, lane: e)
                for lane, experts in by_lane.items():
                    for e in experts:
                        bar.add(label(e, lane), len(groups[e]))

                def work(lane: Lane, emit: Callable[[list[GenerationResult]], None]) -> None:
                    def done(expert_id: str, idx: list[int], res: list[GenerationResult]) -> None:
                        for i, r in zip(idx, res):
                            results[i] = r
                        bar.advance(label(expert_id, lane), len(idx))
                        emit(res)

                    self._run_lane(lane, by_lane[lane], groups, requests, lane_stats[lane],
                                   run, done)

                if len(by_lane) <= 1:  # one placement: in this thread, as before placements
                    for lane in by_lane:
                        work(lane, hook)
                else:
                    self._run_lanes(by_lane, work, hook, run)
        finally:
            with self._guard:
                self._runs.discard(run)
        for i, r in enumerate(results):  # a worker that died (a bug) must not lose requests
            if r is None:
                results[i] = GenerationResult(requests[i], error="its placement worker stopped "
                                              "unexpectedly (see the log)")
        stats = ExecutionStats()
        for s in lane_stats.values():
            stats.merge(s)
        stats.wall_s = time.perf_counter() - start
        return results, stats

    def _run_lanes(self, by_lane, work, on_batch: OnBatch, run: _Run) -> None:
        """One daemon thread per placement; finished batches come back through a queue so
        that `on_batch` runs in this thread."""
        finished: queue.SimpleQueue = queue.SimpleQueue()
        done_marker = object()

        def body(lane: Lane) -> None:
            try:
                work(lane, finished.put)
            except Exception:
                log.exception("placement %s stopped", lane.key)
            finally:
                finished.put(done_marker)

        threads = [threading.Thread(target=body, args=(lane,), daemon=True,
                                    name=f"placement-{lane.key}") for lane in by_lane]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                try:
                    item = finished.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is done_marker:
                    running -= 1
                else:
                    on_batch(item)
        except BaseException:  # Ctrl-C or a failing on_batch: stop every placement, re-raise
            run.cancel()
            raise

    def _run_lane(self, lane: Lane, experts: list[str], groups: dict[str, list[int]],
                  requests, stats: ExecutionStats, run: _Run, done) -> None:
        """The grouped schedule of one placement, holding that placement."""
        ps = stats.placement(lane.key)
        ps.experts = len(experts)
        ps.requests = sum(len(groups[e]) for e in experts)
        with self._lane_lock(lane.key):
            started = time.perf_counter()
            for expert_id in self.plan(experts, lane.key):
                # similar lengths in one batch waste less compute on padding
                idx = sorted(groups[expert_id], key=lambda i: _prompt_chars(requests[i]))
                try:
                    self._run_expert(lane, expert_id, idx, requests, stats, run, done)
                except Exception as err:  # a bug here fails this expert, not the placement
                    log.debug("placement %s failed on %s", lane.key, expert_id, exc_info=True)
                    done(expert_id, idx, _fail_all([requests[i] for i in idx],
                                                   f"{type(err).__name__}: {err}"))
            ps.busy_s = time.perf_counter() - started

    def _run_expert(self, lane: Lane, expert_id: str, idx: list[int], requests,
                    stats: ExecutionStats, run: _Run, done) -> None:
        cancelled = f"cancelled before it ran (placement {lane.key})"
        if run.cancelled(lane.key):
            done(expert_id, idx, _fail_all([requests[i] for i in idx], cancelled))
            return
        error = self._load(expert_id, stats, lane)
        if error is not None:
            stats.expert(expert_id).errors += len(idx)
            done(expert_id, idx, _fail_all([requests[i] for i in idx], error))
            return
        for lo in range(0, len(idx), self.batch_size):
            if run.cancelled(lane.key):
                done(expert_id, idx[lo:], _fail_all([requests[i] for i in idx[lo:]], cancelled))
                return
            chunk = idx[lo : lo + self.batch_size]
            done(expert_id, chunk, self._generate(expert_id, [requests[i] for i in chunk], stats))


class NaiveExecutor(ExecutorBase):
    name = "naive"

    def execute(self, requests, on_batch=None):
        start = time.perf_counter()
        stats = ExecutionStats()
        hook = self._hook(on_batch)
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
                    batch = [GenerationResult(r, error=error)]
                else:
                    batch = self._generate(r.expert, [r], stats)
                    self.residency.release(r.expert, stats)
                results.extend(batch)
                hook(batch)
                bar.advance(r.expert, 1)
        stats.placement(DEFAULT_PLACEMENT).requests = len(requests)
        stats.wall_s = time.perf_counter() - start
        return results, stats


EXECUTORS = {"grouped": GroupedExecutor, "naive": NaiveExecutor}
