"""Frozen values passed between the stages: annotate -> route -> execute -> aggregate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

AnswerType = Literal["choice", "numeric", "text"]



@dataclass(frozen=True)
class Query:
    """One question. `options` holds the choices when they are given as a list."""

    id: str
    question: str
    gold: str | None = None
    options: tuple[str, ...] = ()
    domain: str | None = None
    answer_type: AnswerType = "text"
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Conversation:
    """A chat as the client sent it: system/developer, user and assistant turns in order.
    Routing reads the last user turn; experts receive the messages through their chat
    template; aggregation treats the replies as free text (no answer extraction, no vote)."""

    id: str
    messages: tuple[Message, ...]

    @property
    def last_user(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")

    def routing_query(self) -> Query:
        """The task a router sees: the last user turn as a free-text question."""
        return Query(id=self.id, question=self.last_user, answer_type="text")


Work = Union[Query, "Conversation"]  # a task (benchmark question) or a conversation


@dataclass(frozen=True)
class ExpertSpec:
    """A pool member as the backends see it (built from the manifest's ExpertConfig)."""

    id: str
    backend: str
    model: str = ""
    adapter: str | None = None
    lora_moe: str | None = None
    smore: str | None = None
    system_prompt: str | None = None
    dtype: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # a GPU index or list for vllm/transformers, a server name for openai_http (default: its
    # base URL); None: auto (packed by the executor)
    placement: str | int | list[int] | None = None


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Message:
    role: Literal["system", "developer", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt for one expert. `index` is the position in the run's request list;
    `question` is the raw question text (backends that look answers up by question use it)."""

    expert: str
    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()
    query_id: str = ""
    index: int = 0
    question: str = ""


@dataclass(frozen=True)
class GenerationResult:
    """What a backend returns for one request; `error` set means this item failed alone."""

    request: GenerationRequest
    text: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    error: str | None = None
    finish_reason: Literal["stop", "length"] | None = None  # "length": cut by max_tokens

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Selection:
    """A router's choice for one query: expert ids in order, their scores, and why."""

    query_id: str
    experts: tuple[str, ...]
    scores: tuple[float, ...]
    evidence: Mapping[str, Any] = field(default_factory=dict, compare=False)
    router: str = ""
    skills: tuple[str, ...] = ()
    success: Mapping[str, float] = field(default_factory=dict, compare=False)  # estimated p(right)
    vote_order: bool = False  # the order was tuned for a plain vote (weighting would undo it)


@dataclass(frozen=True)
class ExpertOutput:
    expert: str
    text: str
    answer: str | None
    error: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True)
class Aggregate:
    """An aggregator's decision for one work item. `text` is the reply a user reads (the fused
    response, or the chosen expert's), `source` the expert who wrote it, `usage` the tokens the
    aggregator itself generated, `finish_reason` that of `text`. `detail` is for reports only:
    no stage reads it."""

    answer: str | None
    method: str
    detail: Mapping[str, Any] = field(default_factory=dict, compare=False)
    text: str | None = None
    source: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class Usage:
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.calls + other.calls,
            self.tokens_in + other.tokens_in,
            self.tokens_out + other.tokens_out,
        )


@dataclass(frozen=True)
class Answer:
    """The final result for one work item (`query` is the task, or a conversation's routing
    query; `work` the item itself). `text` is the reply, `finish_reason` its finish reason."""

    query: Query
    selection: Selection
    outputs: tuple[ExpertOutput, ...]
    final_answer: str | None
    correct: bool | None
    aggregator: str
    usage: Usage = Usage()
    detail: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the aggregator's
    text: str = ""
    finish_reason: str | None = None
    work: Any = field(default=None, compare=False)
    rounds: int = 1  # generation rounds (escalation); outputs may cover a prefix of the experts
