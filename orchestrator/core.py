"""The Orchestrator: annotate -> route -> execute (grouped by expert) -> aggregate -> score."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import BackendContext
from .config import PoolConfig, RunConfig, load_config, load_pool
from .errors import ConfigError, MissingExtraError, UnknownNameError
from .generation import Generation
from .inputs import check_configs, to_queries, to_query
from .pipeline import Overrides, Pipeline
from .registry import BACKENDS
from .routing.base import QueryFeatures, check_experts, check_k
from .types import Answer, ExpertSpec, Query, Sampling, Selection
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
    method: dict[str, Any] | None = None  # which combination method ran and why (methods.py)

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
    return to_query(item, index)  # validated: orchestrator/inputs.py


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
        store: Any = None,
    ):
        """`store`: a generation store (a `GenerationStore` or the path of one) that every
        generation is looked up in first and written to as batches finish; None: none."""
        check_configs(pool, config)  # a path or a dict here is a ConfigError, not AttributeError
        self.pool = pool
        config = config or RunConfig()
        self.config = config.resolved()
        specs = self.real_specs = pool.specs()  # check() validates these, in a dry run too
        if dry_run:  # every expert answers from the fake backend: no model is loaded
            specs = {k: ExpertSpec(id=s.id, backend="fake", model=s.model,
                                   system_prompt=s.system_prompt, max_tokens=s.max_tokens,
                                   temperature=s.temperature, top_p=s.top_p)
                     for k, s in specs.items()}
        for spec in self.real_specs.values():
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
        from .methods import choose_method

        self.method = choose_method(config, self.profile, pool)  # aggregator auto: by evidence
        self.config = self.method.apply(config).resolved()
        self._embedder = None
        self._annotator = None
        executor = EXECUTORS[self.config.executor](
            self.residency, self.config.batch_size, progress, gpus=pool.gpus
        )
        self.store, self._owns_store = None, False
        if store is not None:
            from .store import GenerationStore, StoredExecutor

            self._owns_store = not isinstance(store, GenerationStore)
            self.store = store if not self._owns_store else GenerationStore(store)
            executor = StoredExecutor(executor, self.store)
        self._executor = executor
        self.k = self.config.effective_k()
        check_k(self.k, pool)  # before any model loads
        if self.config.experts:
            check_experts(self.config.experts, pool)
        gen = self.config.generation
        self.generation = Generation(
            specs, Sampling(max_tokens=gen.max_tokens, temperature=gen.temperature,
                            top_p=gen.top_p, seed=self.config.seed),
            executor, self.config.aggregation, max_tokens_override=self.config.max_tokens)
        self.pipeline = Pipeline(pool, self.config, self.generation, profile=self.profile,
                                 featurizer=self.features)
        self.router = self.pipeline.router()  # built now: a bad router fails before any load
        self.aggregator = self.pipeline.aggregator()
        self.stage_s: dict[str, float] = {}
        self.model_name = model_name

    @property
    def executor(self):
        """The grouped executor (behind the generation store when there is one)."""
        return self._executor

    @executor.setter
    def executor(self, executor) -> None:
        """Put a wrapper in front (a cache, a store): the pipeline generates through it."""
        self._executor = executor
        self.generation.executor = executor

    def interrupt(self) -> None:
        """Stop generating after the batches now running (Ctrl-C): no new batch or round
        starts; what did not run fails with an `interrupted`/`cancelled` error (never stored
        as an answer), so `interrupted` tells a caller not to present the result as whole."""
        self.pipeline.stopping.set()
        cancel = getattr(self._executor, "cancel", None)
        if cancel is not None:
            cancel()

    @property
    def interrupted(self) -> bool:
        return self.pipeline.stopping.is_set()

    @property
    def totals(self) -> ExecutionStats:
        """Every generation this orchestrator ran, over all calls."""
        return self.generation.totals

    @classmethod
    def from_files(
        cls,
        pool: str | Path,
        config: str | Path | None = None,
        *,
        progress: bool = False,
        dry_run: bool = False,
        store: Any = None,
        **overrides: Any,
    ) -> Orchestrator:
        """Build from a pool manifest and an optional run preset; keyword overrides
        (k=, router=, experts=, aggregator=, executor=, batch_size=, max_tokens=, seed=...)
        replace single fields of the preset."""
        run_config = load_config(config).with_overrides(**overrides)
        return cls(load_pool(pool), run_config, progress=progress, dry_run=dry_run, store=store)

    # -- checks -----------------------------------------------------------------------------

    def check(self) -> list[tuple[ExpertSpec, str]]:
        """Validate every expert's options and resolve its model, loading nothing."""
        rows = []
        checker = self.backends  # a dry run checks the real backends without keeping them
        if self.real_specs is not self.specs:
            checker = BackendSet(self.backends.context, self.backends.instances())
        for spec in self.real_specs.values():
            backend = checker.for_expert(spec)
            for key, capability in (("adapter", "supports_lora"), ("lora_moe", "supports_lora_moe"),
                                    ("smore", "supports_smore")):
                if getattr(spec, key) and not getattr(backend, capability, False):
                    raise ConfigError(f"Expert '{spec.id}' sets {key}, which backend "
                                      f"'{spec.backend}' cannot serve; use backend: transformers.")
            try:
                rows.append((spec, backend.check(spec)))
            except MissingExtraError:
                if self.real_specs is self.specs:
                    raise
                # a dry run needs no backend package (only fake answers): check what can be
                # checked without it, the options
                backend.options(spec)
                rows.append((spec, f"{spec.model or '-'} (backend package not installed)"))
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

    def features(self, queries: Sequence[Query], router=None) -> QueryFeatures:
        """Skills (and, for instance-level routers, question embeddings) of a batch."""
        from .skills.vocabulary import map_keywords

        router = router or self.router
        skills = self.annotator.annotate(queries)
        skill_ids = [()] * len(queries)
        if self.profile is not None:
            skill_ids = map_keywords(skills, self.profile.skills, self.embedder,
                                     self.profile.skill_emb)
        embeddings = None
        if getattr(router, "needs_embeddings", False):
            embeddings = self.embedder.encode([q.question for q in queries])
        return QueryFeatures(skills, skill_ids, embeddings)

    def build_profile(self, queries: Sequence[Query], annotator=None, embedder=None,
                      **options: Any):
        """A skill profile of this pool on validation `queries` (see `profiling.build_profile`;
        `options`: vocabulary, prior_strength, aggregators, aggregation_limit)."""
        from .profiling import build_profile

        return build_profile(self.generation, self.pool.name, queries,
                             annotator or self.annotator, embedder or self.embedder,
                             seed=self.config.seed, **options)

    def route_with(self, queries: Sequence[Query], router: str, k: int) -> list[Selection]:
        """Route with a named router and k (the server's per-request `router` and `k`)."""
        return self.pipeline.route(queries, router, k)[0]

    def route(self, queries: Sequence[Query]) -> list[Selection]:
        """Each query's experts; `stage_s` keeps the seconds of annotation and routing."""
        selections, self.stage_s = self.pipeline.route(queries)
        return selections

    # -- the pipeline -----------------------------------------------------------------------

    def evaluate(self, questions: Iterable[Query | str | Mapping[str, Any]],
                 overrides: Overrides | None = None, *, pipeline: Pipeline | None = None
                 ) -> RunResult:
        """Run the whole pipeline on a batch of tasks and keep the counters (what `orchestrate
        run` writes out). `overrides` (k, router, aggregator, sampling) apply to this call
        only; `pipeline` runs it over another executor (`sweep`'s cache)."""
        start = time.perf_counter()
        queries = to_queries(questions)  # one bad item: a typed error before any work
        overrides = overrides or Overrides()
        out = (pipeline or self.pipeline).answer(queries, overrides)
        self.stage_s = {k: out.stage_s[k] for k in ("annotate_s", "route_s")}
        config = self.config.model_copy(update={
            key: value for key, value in (("k", overrides.k), ("router", overrides.router),
                                          ("aggregator", overrides.aggregator))
            if value is not None})
        method = self.method.record()
        if overrides.aggregator:
            method.update(method=overrides.aggregator, source="named",
                          reason=f"named by the call (aggregator {overrides.aggregator})",
                          warnings=[])
        return RunResult(out.answers, out.stats, config, self.pool,
                         overrides.k or self.k, time.perf_counter() - start, dict(out.stage_s),
                         method)

    def run(self, questions: Iterable[Query | str | Mapping[str, Any]]) -> list[Answer]:
        """Answers in input order."""
        return self.evaluate(questions).answers

    # -- chat ---------------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]] | str, **params: Any):
        """A chat reply from the pool: `messages` as OpenAI sends them (or one user string);
        `model` (default: the mixture; an expert id asks that expert alone), `k`, `router`,
        `aggregator`, `mode` ("chat" or "task"), `max_tokens`, `temperature`, `top_p`,
        `seed`, `stop` are optional. Returns a typed `ChatResult`; raises the request's typed
        error (InvalidRequestError names the parameter)."""
        from .chat import chat_call, complete_calls

        (result,) = complete_calls(self, [chat_call(messages, **params)])
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
        if self._owns_store and self.store is not None:
            self.store.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
