"""The Orchestrator: annotate -> route -> execute (grouped by expert) -> aggregate -> score."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends.base import BackendContext
from .benchmarks.extract import extract_answer, is_correct
from .benchmarks.prompts import messages_for
from .benchmarks.readers import infer_answer_type
from .config import PoolConfig, RunConfig, load_config, load_pool
from .errors import ConfigError, UnknownNameError
from .registry import AGGREGATORS, BACKENDS, ROUTERS
from .routing.base import QueryFeatures, check_experts, check_k
from .types import (
    Answer,
    ExpertOutput,
    ExpertSpec,
    GenerationRequest,
    Query,
    Sampling,
    Selection,
    Usage,
)
from .workers import EXECUTORS, BackendSet, ExecutionStats, Residency


@dataclass
class RunResult:
    """Everything one run produced: answers in input order and the execution counters."""

    answers: list[Answer]
    stats: ExecutionStats
    config: RunConfig
    pool: PoolConfig
    k: int
    wall_s: float
    stage_s: dict[str, float] = field(default_factory=dict)  # annotate_s, route_s

    @property
    def mean_k(self) -> float:
        return sum(len(a.selection.experts) for a in self.answers) / max(1, len(self.answers))

    @property
    def distinct_experts(self) -> int:
        return len({e for a in self.answers for e in a.selection.experts})

    @property
    def scored(self) -> list[Answer]:
        return [a for a in self.answers if a.correct is not None]

    @property
    def accuracy(self) -> float | None:
        scored = self.scored
        return sum(a.correct for a in scored) / len(scored) if scored else None

    @property
    def overhead_s(self) -> float:
        """Wall time not spent inside the backends' load/generate/release."""
        return max(0.0, self.wall_s - self.stats.backend_s)


def as_query(item: Query | str | Mapping[str, Any], index: int) -> Query:
    if isinstance(item, Query):
        return item
    if isinstance(item, str):
        return Query(id=f"q{index}", question=item, answer_type=infer_answer_type(item, None, ()))
    if isinstance(item, Mapping) and isinstance(item.get("question"), str):
        options = tuple(item.get("options") or ())
        gold = item.get("gold")
        gold = None if gold is None else str(gold)
        return Query(
            id=str(item.get("id", f"q{index}")), question=item["question"], gold=gold,
            options=options, domain=item.get("domain"),
            answer_type=item.get("answer_type") or infer_answer_type(item["question"], gold, options),
        )
    raise ConfigError(
        f"Question {index} is a {type(item).__name__}; pass a string, a Query, or a mapping "
        "with a 'question' string."
    )


class Orchestrator:
    """The SDK entry point. Use as a context manager so that loaded models are released.

    >>> with Orchestrator.from_files(pool="pools/cpu-demo.yaml") as orch:  # doctest: +SKIP
    ...     answers = orch.run(["What is 2 + 3?"])
    """

    def __init__(
        self,
        pool: PoolConfig,
        config: RunConfig | None = None,
        *,
        backends: Mapping[str, object] | None = None,
        progress: bool = False,
        dry_run: bool = False,
        model_name: str = "orchestrator",
    ):
        self.pool = pool
        self.config = (config or RunConfig()).resolved()
        specs = pool.specs()
        if dry_run:  # every expert answers from the fake backend: no model is loaded
            specs = {k: ExpertSpec(id=s.id, backend="fake", model=s.model,
                                   system_prompt=s.system_prompt, max_tokens=s.max_tokens,
                                   temperature=s.temperature, top_p=s.top_p)
                     for k, s in specs.items()}
        for spec in specs.values():
            if spec.backend not in BACKENDS and spec.backend not in (backends or {}):
                raise UnknownNameError(
                    "backend", spec.backend, BACKENDS.names(),
                    f" (expert '{spec.id}' in pool '{pool.name}')",
                )
        self.specs: dict[str, ExpertSpec] = specs
        context = BackendContext(self.config.threads, self.config.seed, pool.base_dir)
        self.backends = BackendSet(context, dict(backends or {}))
        self.residency = Residency(specs, self.backends, pool.resident_limit)
        self.profile = None
        if self.config.profile:
            from .profiling.profile import Profile

            self.profile = Profile.load(self.config.profile, pool.expert_ids)
        self.router = ROUTERS.get(self.config.router)(pool, self.config, profile=self.profile)
        self._embedder = None
        self._annotator = None
        self.aggregator = AGGREGATORS.get(self.config.aggregator)(pool, self.config, self)
        self.executor = EXECUTORS[self.config.executor](
            self.residency, self.config.batch_size, progress
        )
        self.k = self.config.effective_k()
        check_k(self.k, pool)  # before any model loads
        if self.config.experts:
            check_experts(self.config.experts, pool)
        self.totals = ExecutionStats()
        self.stage_s: dict[str, float] = {}
        self._routers: dict[str, Any] = {}
        self.model_name = model_name

    @classmethod
    def from_files(
        cls,
        pool: str | Path,
        config: str | Path | None = None,
        *,
        progress: bool = False,
        dry_run: bool = False,
        **overrides: Any,
    ) -> Orchestrator:
        """Build from a pool manifest and an optional run preset; keyword overrides
        (k=, router=, experts=, aggregator=, executor=, batch_size=, max_tokens=, seed=...)
        replace single fields of the preset."""
        run_config = load_config(config).with_overrides(**overrides)
        return cls(load_pool(pool), run_config, progress=progress, dry_run=dry_run)

    # -- checks -----------------------------------------------------------------------------

    def check(self) -> list[tuple[ExpertSpec, str]]:
        """Validate every expert's options and resolve its model, loading nothing."""
        rows = []
        for spec in self.specs.values():
            backend = self.backends.for_expert(spec)
            for key, capability in (("adapter", "supports_lora"), ("lora_moe", "supports_lora_moe"),
                                    ("smore", "supports_smore")):
                if getattr(spec, key) and not getattr(backend, capability, False):
                    raise ConfigError(f"Expert '{spec.id}' sets {key}, which backend "
                                      f"'{spec.backend}' cannot serve; use backend: transformers.")
            rows.append((spec, backend.check(spec)))
        return rows

    # -- annotation -------------------------------------------------------------------------

    @property
    def embedder(self):
        if self._embedder is None:
            from .skills.embedder import Embedder

            self._embedder = Embedder(threads=self.config.threads)
        return self._embedder

    @property
    def annotator(self):
        if self._annotator is None:
            from .skills import make_annotator

            self._annotator = make_annotator(self)
        return self._annotator

    def features(self, queries: Sequence[Query]) -> QueryFeatures:
        """Skills (and, for instance-level routers, question embeddings) of a batch."""
        from .skills.vocabulary import map_keywords

        skills = self.annotator.annotate(queries)
        skill_ids = [()] * len(queries)
        if self.profile is not None:
            skill_ids = map_keywords(skills, self.profile.skills, self.embedder,
                                     self.profile.skill_emb)
        embeddings = None
        if getattr(self.router, "needs_embeddings", False):
            embeddings = self.embedder.encode([q.question for q in queries])
        return QueryFeatures(skills, skill_ids, embeddings)

    def router_named(self, name: str):
        """The configured router, or another one built once over the same pool and profile."""
        name = self.config.model_copy(update={"router": name}).resolved().router
        if name == self.config.router:
            return self.router
        if name not in self._routers:
            config = self.config.model_copy(update={"router": name})
            self._routers[name] = ROUTERS.get(name)(self.pool, config, profile=self.profile)
        return self._routers[name]

    def route_with(self, queries: Sequence[Query], router: str, k: int) -> list[Selection]:
        """Route with a named router and k (the server's per-request `router` and `k`)."""
        check_k(k, self.pool)
        chosen = self.router_named(router)
        features = self.features(queries) if chosen.needs_profile else None
        return chosen.select(queries, k, features)

    def route(self, queries: Sequence[Query]) -> list[Selection]:
        """Each query's experts; `stage_s` keeps the seconds of annotation and routing."""
        start = time.perf_counter()
        features = self.features(queries) if self.router.needs_profile else None
        mid = time.perf_counter()
        selections = self.router.select(queries, self.k, features)
        self.stage_s = {"annotate_s": mid - start, "route_s": time.perf_counter() - mid}
        return selections

    # -- the pipeline -----------------------------------------------------------------------

    def sampling_for(self, spec: ExpertSpec) -> Sampling:
        gen = self.config.generation
        return Sampling(
            max_tokens=self.config.max_tokens or spec.max_tokens or gen.max_tokens,
            temperature=gen.temperature if spec.temperature is None else spec.temperature,
            top_p=gen.top_p if spec.top_p is None else spec.top_p,
            seed=self.config.seed,
        )

    def requests_for(
        self, queries: Sequence[Query], selections: Sequence[Selection],
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[GenerationRequest]:
        """One request per (query, selected expert). `overrides` maps a query id to sampling
        fields (max_tokens, temperature, top_p, seed) that replace the expert's own."""
        requests = []
        for query, selection in zip(queries, selections):
            changes = (overrides or {}).get(query.id) or {}
            for expert_id in selection.experts:
                spec = self.specs[expert_id]
                sampling = self.sampling_for(spec)
                if changes:
                    sampling = replace(sampling, **changes)
                requests.append(GenerationRequest(
                    expert=expert_id, messages=messages_for(query, spec.system_prompt),
                    sampling=sampling, query_id=query.id, index=len(requests),
                    question=query.question,
                ))
        return requests

    def collect(self, queries: Sequence[Query], results) -> list[list[ExpertOutput]]:
        """Each query's expert outputs (answers extracted), in selection order."""
        outputs: list[list[ExpertOutput]] = [[] for _ in queries]
        position = {q.id: i for i, q in enumerate(queries)}
        for res in results:
            query = queries[position[res.request.query_id]]
            answer = (extract_answer(res.text, query.answer_type, query.options)
                      if res.error is None else None)
            outputs[position[query.id]].append(ExpertOutput(
                res.request.expert, res.text, answer, res.error, res.tokens_in, res.tokens_out,
            ))
        return outputs

    def combine(self, queries: Sequence[Query], selections: Sequence[Selection],
                outputs: Sequence[Sequence[ExpertOutput]], stats: ExecutionStats,
                aggregator=None) -> list[Answer]:
        """Aggregate and score; generations the aggregator runs (fuse) are added to `stats`."""
        aggregator = aggregator or self.aggregator
        aggregator.stats = None
        aggregates = aggregator.aggregate(queries, outputs, selections)
        if aggregator.stats is not None:
            stats.merge(aggregator.stats)
        answers = []
        for query, selection, outs, agg in zip(queries, selections, outputs, aggregates):
            usage = Usage(len(outs), sum(o.tokens_in for o in outs), sum(o.tokens_out for o in outs))
            extra = agg.detail.get("usage")
            if extra:  # the aggregator's own tokens for this query
                usage = usage + Usage(1, extra["tokens_in"], extra["tokens_out"])
            answers.append(Answer(
                query=query, selection=selection, outputs=tuple(outs),
                final_answer=agg.answer, correct=is_correct(agg.answer, query.gold, query.answer_type),
                aggregator=agg.method, usage=usage, detail=agg.detail,
            ))
        return answers

    def evaluate(self, questions: Iterable[Query | str | Mapping[str, Any]]) -> RunResult:
        """Run the whole pipeline on a batch and keep the counters (what `orchestrate run`
        writes out)."""
        start = time.perf_counter()
        queries = [as_query(q, i) for i, q in enumerate(questions)]
        if not queries:
            raise ConfigError("No questions were given; pass at least one.")
        ids = [q.id for q in queries]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ConfigError(f"Question id '{dup}' appears twice in one batch; ids must be unique.")
        selections = self.route(queries)
        results, stats = self.executor.execute(self.requests_for(queries, selections))
        answers = self.combine(queries, selections, self.collect(queries, results), stats)
        self.totals.merge(stats)
        return RunResult(answers, stats, self.config, self.pool, self.k,
                         time.perf_counter() - start, dict(self.stage_s))

    def run(self, questions: Iterable[Query | str | Mapping[str, Any]]) -> list[Answer]:
        """Answers in input order."""
        return self.evaluate(questions).answers

    # -- chat ---------------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any):
        """An OpenAI-style chat completion from the pool (`model` defaults to the mixture;
        `k`, `router`, `temperature`, `top_p`, `max_tokens`, `seed` are optional). Returns a
        `ChatCompletion` (`.content`, `.to_openai()`); raises the request's typed error."""
        from .chat import MIXTURE_MODEL, complete_batch

        body = {"model": self.model_name if params.get("model") in (None, MIXTURE_MODEL)
                else params["model"], **{k: v for k, v in params.items() if k != "model"},
                "messages": list(messages)}
        (result,) = complete_batch(self, [body])
        if isinstance(result, Exception):
            raise result
        return result

    async def achat(self, messages: Sequence[Mapping[str, Any]], **params: Any):
        """`chat` without blocking the event loop (the models run in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self.chat, messages, **params)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        self.residency.release_all()
        self.backends.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
