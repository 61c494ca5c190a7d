"""The one answer pipeline: route -> requests -> execute grouped -> collect -> aggregate.

`orchestrate run` and the SDK's `run`/`evaluate`, `sweep` (one call per k), `profile` and the
evaluation's reference points (`expert_outputs`: every expert on every item) and chat (the SDK's
`chat`, the server) all go through `Pipeline`. Work items are tasks (`Query`: prompt template,
answer extraction, vote) or conversations (`Conversation`: the client's messages, free-text
replies). Per-call `Overrides` (k, router, aggregator, one expert alone, sampling) replace the
run's settings for the items they ride with; nothing is mutated.

All generations of one `answer` call run in ONE grouped execution (each expert loads once), and
the aggregator's own generations (fuse) in one more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .benchmarks.extract import is_correct
from .config import PoolConfig, RunConfig
from .errors import RoutingError
from .generation import INTERRUPTED, Generation, collect_outputs, every_expert, routing_query
from .registry import AGGREGATORS, ROUTERS
from .routing.base import QueryFeatures, check_k
from .types import (
    Answer,
    Conversation,
    ExpertOutput,
    GenerationResult,
    Query,
    Selection,
    Usage,
    Work,
)
from .workers.stats import ExecutionStats

# Aggregators that compare extracted answers; a conversation has none, so it gets `first`.
ANSWER_AGGREGATORS = ("vote",)
CONVERSATION_FALLBACK = "first"

Featurizer = Callable[[Sequence[Query], Any], QueryFeatures]


@dataclass(frozen=True)
class Overrides:
    """Per-call settings. `expert`: ask that expert alone (no routing, no aggregation).
    `sampling`: max_tokens, temperature, top_p, seed, stop for every expert of the item."""

    k: int | None = None
    router: str | None = None
    aggregator: str | None = None
    expert: str | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    escalation: str | None = None  # lossless | confident | none (the run's by default)


NO_OVERRIDES = Overrides()


@dataclass
class PipelineResult:
    answers: list[Answer]
    stats: ExecutionStats
    stage_s: dict[str, float]


class Pipeline:
    """Routers and aggregators are built once per name over the same pool, profile and
    generation interface, then reused."""

    def __init__(self, pool: PoolConfig, config: RunConfig, generation: Generation, *,
                 profile=None, featurizer: Featurizer | None = None):
        self.pool, self.config, self.generation = pool, config, generation
        self.profile, self.featurizer = profile, featurizer
        self.k = config.effective_k()
        self._routers: dict[str, Any] = {}
        self._aggregators: dict[str, Any] = {}
        # Several batches may run at once (the server): routing (lazy annotator, embedder and
        # router tables) runs one batch at a time; generation is locked per placement by the
        # executor.
        self._lock = threading.RLock()
        self.stopping = generation.stopping  # set by `Orchestrator.interrupt`: nothing new starts

    def using(self, executor) -> Pipeline:
        """The same pipeline over another executor (e.g. a cache in front of it)."""
        other = Pipeline(self.pool, self.config, self.generation.using(executor),
                         profile=self.profile, featurizer=self.featurizer)
        other._routers, other._lock = self._routers, self._lock  # routers never generate
        other.stopping = self.stopping
        return other

    # -- parts, built once per name -----------------------------------------------------------

    def router(self, name: str | None = None):
        with self._lock:
            return self._router(name)

    def _router(self, name: str | None):
        resolved = self.config.model_copy(update={"router": name or self.config.router}).resolved()
        if resolved.router not in self._routers:
            self._routers[resolved.router] = ROUTERS.get(resolved.router)(
                self.pool, resolved, profile=self.profile)
        return self._routers[resolved.router]

    def aggregator(self, name: str | None = None):
        name = name or self.config.aggregator
        with self._lock:
            if name not in self._aggregators:
                self._aggregators[name] = AGGREGATORS.get(name)(
                    self.pool, self.config, self.generation, self.profile)
            return self._aggregators[name]

    # -- stages -------------------------------------------------------------------------------

    def route(self, queries: Sequence[Query], router: str | None = None, k: int | None = None
              ) -> tuple[list[Selection], dict[str, float]]:
        """Selections in order, and the seconds of annotation and routing."""
        k = self.k if k is None else k
        check_k(k, self.pool)
        with self._lock:
            return self._route(queries, self.router(router), k)

    def _route(self, queries: Sequence[Query], chosen, k: int
               ) -> tuple[list[Selection], dict[str, float]]:
        start = time.perf_counter()
        features = None
        if chosen.needs_profile:
            if self.featurizer is None:
                raise RoutingError(f"The {chosen.name} router needs skill features; build the "
                                   "pipeline through an Orchestrator.")
            features = self.featurizer(queries, chosen)
        mid = time.perf_counter()
        selections = chosen.select(queries, k, features)
        return selections, {"annotate_s": mid - start, "route_s": time.perf_counter() - mid}

    def collect(self, items: Sequence[Work], results: Sequence[GenerationResult]
                ) -> list[list[ExpertOutput]]:
        return collect_outputs(items, results)

    def aggregate(self, items: Sequence[Work], selections: Sequence[Selection],
                  outputs: Sequence[Sequence[ExpertOutput]], names: Sequence[str],
                  stats: ExecutionStats) -> list[Answer]:
        """Each item aggregated by its aggregator (one batch per aggregator); the aggregator's
        own generations are added to `stats`."""
        answers: list[Answer | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        for name, idx in groups.items():
            aggregates = self.aggregator(name).aggregate(
                [items[i] for i in idx], [outputs[i] for i in idx], [selections[i] for i in idx],
                stats)
            for i, agg in zip(idx, aggregates):
                answers[i] = _answer(items[i], selections[i], outputs[i], agg)
        return answers  # type: ignore[return-value]

    # -- the whole pipeline -------------------------------------------------------------------

    def answer(self, items: Sequence[Work],
               overrides: Overrides | Sequence[Overrides] | None = None) -> PipelineResult:
        """Route, generate grouped by expert, collect and aggregate `items`; `overrides` is one
        for all items or one per item."""
        per_item = _per_item(overrides, len(items))
        selections: list[Selection | None] = [None] * len(items)
        stage_s = {"annotate_s": 0.0, "route_s": 0.0}
        groups: dict[tuple[str | None, int | None], list[int]] = {}
        for i, (item, ov) in enumerate(zip(items, per_item)):
            if ov.expert is not None:
                selections[i] = Selection(item.id, (ov.expert,), (1.0,), router="direct")
            else:
                groups.setdefault((ov.router, ov.k), []).append(i)
        for (router, k), idx in groups.items():
            chosen, seconds = self.route([routing_query(items[i]) for i in idx], router, k)
            for i, selection in zip(idx, chosen):
                selections[i] = selection
            for key, value in seconds.items():
                stage_s[key] += value
        names = [self.aggregator_name(item, ov) for item, ov in zip(items, per_item)]
        start = time.perf_counter()
        outputs, rounds, stats = self.generate(items, selections, per_item,  # type: ignore[arg-type]
                                               names)
        stage_s["generate_s"] = time.perf_counter() - start
        start = time.perf_counter()
        answers = self.aggregate(items, selections, outputs, names, stats)  # type: ignore[arg-type]
        answers = [replace(a, rounds=r) for a, r in zip(answers, rounds)]
        stage_s["aggregate_s"] = time.perf_counter() - start
        return PipelineResult(answers, stats, stage_s)

    def generate(self, items: Sequence[Work], selections: Sequence[Selection],
                 overrides: Sequence[Overrides], names: Sequence[str]
                 ) -> tuple[list[list[ExpertOutput]], list[int], ExecutionStats]:
        """The selected experts' outputs, in rounds: each round is one grouped execution of
        the next experts of every item its aggregator has not decided yet (escalation; with
        mode none, or an aggregator that reads every response, one round calls all).
        Returns outputs in selection order (a prefix of the selection), rounds per item, and
        the stats of all rounds."""
        outputs: list[list[ExpertOutput]] = [[] for _ in items]
        rounds = [0] * len(items)
        modes = [ov.escalation or self.config.escalation.mode for ov in overrides]
        todo = {i: self._next(items[i], selections[i], [], names[i], modes[i])
                for i in range(len(items))}
        stats = ExecutionStats()
        while todo := {i: n for i, n in todo.items() if n > 0}:
            if self.stopping.is_set():  # interrupted: the experts not asked yet fail
                for i, n in todo.items():
                    start = len(outputs[i])
                    outputs[i].extend(ExpertOutput(e, "", None, INTERRUPTED)
                                      for e in selections[i].experts[start:start + n])
                break
            requests = []
            for i, n in todo.items():
                start = len(outputs[i])
                for expert in selections[i].experts[start:start + n]:
                    requests.append(self.generation.request(expert, items[i], len(requests),
                                                            dict(overrides[i].sampling)))
            results, run = self.generation.execute(requests)
            stats.merge(run)
            batch = [items[i] for i in todo]
            for i, outs in zip(todo, self.collect(batch, results)):
                outputs[i].extend(outs)
                rounds[i] += 1
            todo = {i: self._next(items[i], selections[i], outputs[i], names[i], modes[i])
                    for i in todo}
        return outputs, rounds, stats

    def _next(self, item: Work, selection: Selection, outputs: Sequence[ExpertOutput],
              name: str, mode: str) -> int:
        left = len(selection.experts) - len(outputs)
        if not left:
            return 0
        n = self.aggregator(name).next_calls(item, selection, outputs, mode)
        return max(0, min(n, left))

    def aggregator_name(self, item: Work, overrides: Overrides = NO_OVERRIDES) -> str:
        if overrides.expert is not None:
            return "first"
        name = overrides.aggregator or self.config.aggregator
        if isinstance(item, Conversation) and name in ANSWER_AGGREGATORS:
            return CONVERSATION_FALLBACK
        return name

    def expert_outputs(self, items: Sequence[Work], experts: Sequence[str] | None = None
                       ) -> list[list[ExpertOutput]]:
        """Every expert on every item (see `generation.every_expert`)."""
        return every_expert(self.generation, items, experts)


def _per_item(overrides, n: int) -> list[Overrides]:
    if overrides is None:
        return [NO_OVERRIDES] * n
    if isinstance(overrides, Overrides):
        return [overrides] * n
    overrides = list(overrides)
    if len(overrides) != n:
        raise ValueError(f"{len(overrides)} overrides for {n} items; give one per item.")
    return overrides


def _answer(item: Work, selection: Selection, outs: Sequence[ExpertOutput], agg) -> Answer:
    query = routing_query(item)
    usage = Usage(len(outs), sum(o.tokens_in for o in outs), sum(o.tokens_out for o in outs))
    if agg.usage is not None:
        usage = usage + agg.usage
    text, finish = agg.text, agg.finish_reason
    if text is None:  # the first expert that answered speaks for the mixture
        first = next((o for o in outs if o.error is None), None)
        text, finish = (first.text, first.finish_reason) if first else ("", None)
    correct = (is_correct(agg.answer, query.gold, query.answer_type)
               if isinstance(item, Query) else None)
    return Answer(query=query, selection=selection, outputs=tuple(outs),
                  final_answer=agg.answer, correct=correct, aggregator=agg.method, usage=usage,
                  detail=agg.detail, text=text, finish_reason=finish, work=item)
