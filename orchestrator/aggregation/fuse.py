"""`fuse`: an aggregator expert of the pool synthesises the k experts' responses into one answer
(Mixture-of-Agents' aggregate-and-synthesise prompt; Symbolic-MoE section 3.3).

Each response is cleaned of reasoning traces (`<think>...</think>` blocks, or everything before
a lone `</think>`) and cut to `aggregation.response_budget` words, keeping its opening and its
ending, where the final answer usually is. All fusion prompts of a batch go through the
orchestrator's executor in one call, so the aggregator model is loaded once per run. The
aggregator is `aggregator_expert` from the config, else the best-ranked aggregator of the
profile, else the pool's `aggregator`, else its first expert. A fusion that fails, or states no
readable answer, falls back to the weighted vote of the experts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from ..benchmarks.extract import extract_answer
from ..benchmarks.prompts import user_prompt
from ..errors import ConfigError, UnknownNameError
from ..types import Aggregate, ExpertOutput, GenerationRequest, Message, Query, Selection
from .base import AggregatorBase
from .vote import VoteAggregator

SYNTHESIS_PROMPT = (
    "You have been provided with a set of responses from various models to the latest user "
    "query. Your task is to synthesize these responses into a single, high-quality response. "
    "It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Your response should not simply "
    "replicate the given answers but should offer a refined, accurate, and comprehensive reply "
    "to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability. Finish in the answer format the question "
    "asks for."
)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_WORDS = re.compile(r"\S+")


def strip_reasoning(text: str) -> str:
    """Drop `<think>...</think>` blocks; with a lone `</think>`, keep what follows it."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text.lower():
        text = re.split(r"</think>", text, flags=re.I)[-1]
    return re.sub(r"<think>.*", "", text, flags=re.S | re.I).strip()  # an unclosed trace


def truncate_words(text: str, budget: int) -> str:
    """At most `budget` words: the first quarter and the last three quarters of the budget."""
    words = list(_WORDS.finditer(text))
    if len(words) <= budget:
        return text
    head = max(1, budget // 4)
    tail = budget - head
    return (text[: words[head - 1].end()] + " [...] " + text[words[-tail].start():]).strip()


def fusion_messages(query: Query, responses: Sequence[str], budget: int) -> tuple[Message, ...]:
    cleaned = [truncate_words(strip_reasoning(r), budget) for r in responses]
    listing = "\n\n".join(f"{i}. {r or '(empty response)'}" for i, r in enumerate(cleaned, 1))
    system = f"{SYNTHESIS_PROMPT}\n\nResponses from models:\n\n{listing}"
    return Message("system", system), Message("user", user_prompt(query))


def fusion_requests(orch, expert: str, queries: Sequence[Query],
                    responses: Sequence[Sequence[str]], first_index: int = 0
                    ) -> list[GenerationRequest]:
    """The fusion prompts of `expert` for each query and its experts' responses, with the
    aggregator's sampling (`aggregation.max_tokens` when set) and response budget."""
    options = orch.config.aggregation
    sampling = orch.sampling_for(orch.specs[expert])
    if options.max_tokens:
        sampling = replace(sampling, max_tokens=options.max_tokens)
    return [
        GenerationRequest(expert=expert, sampling=sampling, query_id=q.id, index=first_index + i,
                          messages=fusion_messages(q, texts, options.response_budget),
                          question=q.question)
        for i, (q, texts) in enumerate(zip(queries, responses))
    ]


def choose_aggregator(config, pool, profile) -> str:
    if config.aggregator_expert:
        if config.aggregator_expert not in pool.expert_ids:
            raise UnknownNameError("aggregator expert", config.aggregator_expert,
                                   pool.expert_ids, f" (pool '{pool.name}')")
        return config.aggregator_expert
    ranking = (profile.meta.get("aggregators") or {}).get("ranking") if profile else None
    for row in ranking or []:
        if row.get("expert") in pool.expert_ids:
            return row["expert"]
    if pool.aggregator:
        return pool.aggregator
    if not pool.experts:
        raise ConfigError(f"Pool '{pool.name}' has no expert to aggregate with.")
    return pool.expert_ids[0]


class FuseAggregator(AggregatorBase):
    name = "fuse"

    def __init__(self, pool, config, orch=None):
        super().__init__(pool, config, orch)
        if orch is None:
            raise ConfigError("The fuse aggregator generates text; build it through an "
                              "Orchestrator (it needs the pool's executor).")
        self.expert = choose_aggregator(config, pool, orch.profile)
        self.fallback = VoteAggregator(pool, config, orch)

    def requests(self, queries: Sequence[Query],
                 outputs: Sequence[Sequence[ExpertOutput]]) -> list[GenerationRequest]:
        return fusion_requests(self.orch, self.expert, queries,
                               [[o.text for o in outs if o.error is None] for outs in outputs])

    def combine(self, queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]],
                selections: Sequence[Selection | None]) -> list[Aggregate]:
        votes = self.fallback.combine(queries, outputs, selections)
        answerable = [i for i, outs in enumerate(outputs) if any(o.error is None for o in outs)]
        results, stats = self.orch.executor.execute(
            self.requests([queries[i] for i in answerable], [outputs[i] for i in answerable]))
        self.stats = stats
        fused = dict(zip(answerable, results))
        out = []
        for i, (query, vote) in enumerate(zip(queries, votes)):
            res = fused.get(i)
            if res is None:
                out.append(Aggregate(vote.answer, "vote", {"fallback": "no expert answered"}))
                continue
            answer = (extract_answer(res.text, query.answer_type, query.options)
                      if res.error is None else None)
            if answer is None:
                reason = res.error or "the fused response states no readable answer"
                out.append(Aggregate(vote.answer, "vote", {
                    "fallback": reason, "by": self.expert, "text": res.text,
                    "usage": {"tokens_in": res.tokens_in, "tokens_out": res.tokens_out}}))
                continue
            out.append(Aggregate(answer, self.name, {
                "by": self.expert, "text": res.text,
                "usage": {"tokens_in": res.tokens_in, "tokens_out": res.tokens_out}}))
        return out
