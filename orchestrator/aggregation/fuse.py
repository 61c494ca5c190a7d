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
from ..generation import Generation, conversation_messages, routing_query
from ..types import (
    Aggregate,
    Conversation,
    ExpertOutput,
    GenerationRequest,
    Message,
    Selection,
    Usage,
    Work,
)
from ..workers.stats import ExecutionStats
from .base import AggregatorBase
from .first import FirstAggregator
from .vote import VoteAggregator

SYNTHESIS_BASE = (
    "You have been provided with a set of responses from various models to the latest user "
    "query. Your task is to synthesize these responses into a single, high-quality response. "
    "It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Your response should not simply "
    "replicate the given answers but should offer a refined, accurate, and comprehensive reply "
    "to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability."
)
# A task: the benchmark's answer line is read back by extraction.
SYNTHESIS_PROMPT = SYNTHESIS_BASE + " Finish in the answer format the question asks for."
# A conversation: one reply in the form the user asked for, nothing about the other models.
CHAT_SYNTHESIS_PROMPT = SYNTHESIS_BASE + (
    " Reply directly to the user in the form they asked for; do not mention the responses or "
    "the models."
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


def _listing(responses: Sequence[str], budget: int) -> str:
    cleaned = [truncate_words(strip_reasoning(r), budget) for r in responses]
    return "\n\n".join(f"{i}. {r or '(empty response)'}" for i, r in enumerate(cleaned, 1))


def fusion_messages(item: Work, responses: Sequence[str], budget: int) -> tuple[Message, ...]:
    """A task: the synthesis prompt with the responses, then the question's prompt. A
    conversation: the same as system context before the client's own system instructions,
    then the conversation's turns as sent."""
    if isinstance(item, Conversation):
        system = f"{CHAT_SYNTHESIS_PROMPT}\n\nResponses from models:\n\n{_listing(responses, budget)}"
        return conversation_messages(item, system)
    system = f"{SYNTHESIS_PROMPT}\n\nResponses from models:\n\n{_listing(responses, budget)}"
    return Message("system", system), Message("user", user_prompt(item))


def fusion_requests(generation: Generation, expert: str, items: Sequence[Work],
                    responses: Sequence[Sequence[str]], first_index: int = 0
                    ) -> list[GenerationRequest]:
    """The fusion prompts of `expert` for each item and its experts' responses, with the
    aggregator's sampling (`aggregation.max_tokens` when set) and response budget."""
    options = generation.aggregation
    changes = {"max_tokens": options.max_tokens} if options.max_tokens else None
    sampling = generation.sampling_for(expert, changes)
    return [
        GenerationRequest(expert=expert, sampling=sampling, query_id=item.id,
                          index=first_index + i,
                          messages=fusion_messages(item, texts, options.response_budget),
                          question=routing_query(item).question)
        for i, (item, texts) in enumerate(zip(items, responses))
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

    def __init__(self, pool, config, generation=None, profile=None):
        super().__init__(pool, config, generation, profile)
        if generation is None:
            raise ConfigError("The fuse aggregator generates text; build it with the pool's "
                              "generation interface (an Orchestrator does).")
        self.expert = choose_aggregator(config, pool, profile)
        self.vote = VoteAggregator(pool, config, generation, profile)
        self.first = FirstAggregator(pool, config, generation, profile)

    def requests(self, items: Sequence[Work],
                 outputs: Sequence[Sequence[ExpertOutput]]) -> list[GenerationRequest]:
        return fusion_requests(self.generation, self.expert, items,
                               [[o.text for o in outs if o.error is None] for outs in outputs])

    def fallbacks(self, items, outputs, selections) -> list[Aggregate]:
        """What a failed fusion falls back to: the weighted vote (tasks), the best-routed
        expert's reply (conversations)."""
        out: list[Aggregate | None] = [None] * len(items)
        for kind, aggregator in (("task", self.vote), ("chat", self.first)):
            idx = [i for i, item in enumerate(items)
                   if isinstance(item, Conversation) == (kind == "chat")]
            if idx:
                for i, agg in zip(idx, aggregator.combine([items[i] for i in idx],
                                                          [outputs[i] for i in idx],
                                                          [selections[i] for i in idx], None)):
                    out[i] = agg
        return out  # type: ignore[return-value]

    def combine(self, items: Sequence[Work], outputs: Sequence[Sequence[ExpertOutput]],
                selections: Sequence[Selection | None], stats: ExecutionStats | None = None
                ) -> list[Aggregate]:
        fallbacks = self.fallbacks(items, outputs, selections)
        answerable = [i for i, outs in enumerate(outputs) if any(o.error is None for o in outs)]
        results, run = self.generation.execute(
            self.requests([items[i] for i in answerable], [outputs[i] for i in answerable]))
        if stats is not None:
            stats.merge(run)
        fused = dict(zip(answerable, results))
        out = []
        for i, (item, fallback) in enumerate(zip(items, fallbacks)):
            res = fused.get(i)
            if res is None:
                out.append(replace(fallback, detail={**fallback.detail,
                                                     "fallback": "no expert answered"}))
                continue
            usage = Usage(1, res.tokens_in, res.tokens_out)
            chat = isinstance(item, Conversation)
            answer = None
            if res.error is None and not chat:
                answer = extract_answer(res.text, item.answer_type, item.options)
            if res.error is not None or (not chat and answer is None) or \
                    (chat and not strip_reasoning(res.text)):
                reason = res.error or ("the fused response is empty" if chat else
                                       "the fused response states no readable answer")
                out.append(replace(fallback, usage=usage, detail={
                    **fallback.detail, "fallback": reason, "by": self.expert, "text": res.text}))
                continue
            out.append(Aggregate(answer, self.name, {"by": self.expert, "text": res.text},
                                 text=res.text, source=self.expert, usage=usage,
                                 finish_reason=res.finish_reason))
        return out
