"""The narrow, typed generation interface that stages which generate text use: aggregators
(fuse), the profiler (every expert answers every validation question), the evaluation's
reference points and the llm annotator. They see the pool's experts, the sampling each expert
uses, the aggregation options, and one verb: run a batch of requests grouped by expert. They never
see the Orchestrator, its router or its configuration object as a whole.

Prompts are built here too, so that a task and a conversation reach an expert the same way
whichever stage asks:
- a task (benchmark question) is the prompt template of `benchmarks/prompts.py`;
- a conversation is the client's messages, with ONE system message first: the expert's own
  system prompt, then the client's system and developer messages in their order, joined by a
  blank line (the expert's role first, the client's instructions after it, as most chat
  templates accept a single leading system message). User and assistant turns follow as sent.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .benchmarks.extract import extract_answer
from .benchmarks.prompts import messages_for
from .config import AggregationOptions
from .types import (
    Conversation,
    ExpertOutput,
    ExpertSpec,
    GenerationRequest,
    GenerationResult,
    Message,
    Query,
    Sampling,
    Work,
)
from .workers.stats import ExecutionStats

SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop")
INTERRUPTED = "interrupted before it ran (Ctrl-C)"


def conversation_messages(conversation: Conversation,
                          system_prompt: str | None) -> tuple[Message, ...]:
    """The messages an expert receives for a conversation (rule in the module docstring)."""
    system = [system_prompt] if system_prompt else []
    system += [m.content for m in conversation.messages
               if m.role in ("system", "developer") and m.content]
    turns = tuple(m for m in conversation.messages if m.role in ("user", "assistant"))
    head = (Message("system", "\n\n".join(system)),) if system else ()
    return head + turns


def work_messages(item: Work, system_prompt: str | None) -> tuple[Message, ...]:
    if isinstance(item, Conversation):
        return conversation_messages(item, system_prompt)
    return messages_for(item, system_prompt)


def routing_query(item: Work) -> Query:
    return item.routing_query() if isinstance(item, Conversation) else item


@dataclass
class Generation:
    """Grouped generation over a pool's experts. `defaults` is the run's sampling (the
    expert's own manifest values win over it); every execution is added to `totals`."""

    specs: Mapping[str, ExpertSpec]
    defaults: Sampling
    executor: Any  # execute(requests) -> (results in order, ExecutionStats)
    aggregation: AggregationOptions = field(default_factory=AggregationOptions)
    totals: ExecutionStats = field(default_factory=ExecutionStats)
    max_tokens_override: int | None = None  # the run's --max-tokens beats the manifest
    stopping: threading.Event = field(default_factory=threading.Event)  # Ctrl-C: run nothing

    def sampling_for(self, expert_id: str,
                     changes: Mapping[str, Any] | None = None) -> Sampling:
        """The expert's sampling: run defaults < manifest entry < run override < `changes`
        (a request's own max_tokens, temperature, top_p, seed, stop)."""
        spec, base = self.specs[expert_id], self.defaults
        sampling = Sampling(
            max_tokens=self.max_tokens_override or spec.max_tokens or base.max_tokens,
            temperature=base.temperature if spec.temperature is None else spec.temperature,
            top_p=base.top_p if spec.top_p is None else spec.top_p,
            seed=base.seed, stop=base.stop,
        )
        changes = {k: v for k, v in (changes or {}).items() if v is not None}
        if "stop" in changes:
            changes["stop"] = tuple(changes["stop"])
        return replace(sampling, **changes) if changes else sampling

    def request(self, expert_id: str, item: Work, index: int,
                changes: Mapping[str, Any] | None = None) -> GenerationRequest:
        """One expert's request for a task or a conversation."""
        spec = self.specs[expert_id]
        query = routing_query(item)
        return GenerationRequest(
            expert=expert_id, messages=work_messages(item, spec.system_prompt),
            sampling=self.sampling_for(expert_id, changes), query_id=item.id, index=index,
            question=query.question,
        )

    def execute(self, requests: Sequence[GenerationRequest]
                ) -> tuple[list[GenerationResult], ExecutionStats]:
        """Run a batch grouped by expert; results in request order."""
        if not requests:
            return [], ExecutionStats()
        if self.stopping.is_set():  # interrupted: nothing new starts
            return [GenerationResult(r, error=INTERRUPTED) for r in requests], ExecutionStats()
        results, stats = self.executor.execute(list(requests))
        self.totals.merge(stats)
        return results, stats

    def using(self, executor) -> Generation:
        """The same experts and sampling over another executor (a cache in front of it)."""
        return replace(self, executor=executor)


def collect_outputs(items: Sequence[Work], results: Sequence[GenerationResult]
                    ) -> list[list[ExpertOutput]]:
    """Each item's expert outputs in request order; answers extracted for tasks only."""
    outputs: list[list[ExpertOutput]] = [[] for _ in items]
    position = {item.id: i for i, item in enumerate(items)}
    for res in results:
        i = position[res.request.query_id]
        item = items[i]
        answer = None
        if res.error is None and isinstance(item, Query):
            answer = extract_answer(res.text, item.answer_type, item.options)
        outputs[i].append(ExpertOutput(res.request.expert, res.text, answer, res.error,
                                       res.tokens_in, res.tokens_out, res.finish_reason))
    return outputs


def every_expert(generation: Generation, items: Sequence[Work],
                 experts: Sequence[str] | None = None) -> list[list[ExpertOutput]]:
    """Every expert (default: all of the pool) on every item in one grouped execution; each
    item's outputs in expert order. What the profiler and the evaluation's reference points
    need."""
    experts = list(experts or generation.specs)
    requests = [generation.request(e, item, 0) for item in items for e in experts]
    requests = [replace(r, index=i) for i, r in enumerate(requests)]
    results, _ = generation.execute(requests)
    return collect_outputs(items, results)
