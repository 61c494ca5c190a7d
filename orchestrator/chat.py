"""Chat completions over the pool: what `Orchestrator.chat` returns and the server serialises.

A request names `model`: the mixture (`orchestrator`, or the name the Orchestrator was given)
is routed, generated grouped by expert and aggregated like a benchmark question; an expert id
calls that expert alone. Routing fields (`k`, `router`) may ride along as extra body fields.
The question is the last user message; earlier turns are given to the experts as context.
Several requests are answered in one grouped execution (`complete_batch`), which the server's
micro-batcher uses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .aggregation.fuse import strip_reasoning
from .benchmarks.readers import infer_answer_type
from .errors import BackendError, InvalidRequestError, OrchestratorError, UnknownModelError
from .types import Answer, Message, Query, Selection

MIXTURE_MODEL = "orchestrator"
MAX_MESSAGE_CHARS = 200
CONTEXT_ERROR = "maximum context length is"  # the backends' wording (OpenAI's sentence)


@dataclass(frozen=True)
class ChatCall:
    """One chat request as the pipeline takes it (the server builds it from the OpenAI body,
    the SDK from `Orchestrator.chat`'s arguments).

    `messages` keep the roles the client sent (system, developer, user, assistant); text parts
    are already joined. `model`: None or the mixture's name is routed over the pool; an expert
    id asks that expert alone. `mode`: "chat" answers the conversation as free text; "task"
    treats the last user turn as a benchmark question (prompt template, extracted answer,
    vote). `stop`, `seed`, `max_tokens` are honoured by every backend."""

    messages: tuple[Message, ...]
    model: str | None = None
    k: int | None = None
    router: str | None = None
    aggregator: str | None = None
    mode: Literal["chat", "task"] = "chat"
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    user: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatResult:
    """One answer. `finish_reason` is "length" when the returned text was cut by max_tokens.
    `usage_exact` is False when a backend could not count tokens (replay: the counts are 0).
    `answer` is the extracted final answer (task mode; None in chat mode). `info` is the
    `orchestrator` object of the reply: mode, router, k, skills, experts (id, score, answer,
    error, finish_reason), aggregator, early_exit, failed_experts."""

    id: str
    created: int
    model: str
    content: str
    finish_reason: Literal["stop", "length"] = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_exact: bool = True
    answer: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(BaseModel):
    """The OpenAI chat completion body; fields this pool does not use are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = MIXTURE_MODEL
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=131072)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=131072)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stream: bool = False
    k: int | None = Field(default=None, ge=1)
    router: str | None = None

    @property
    def question(self) -> str:
        users = [m for m in self.messages if m.role == "user"]
        return users[-1].text if users else ""

    def prompt_text(self) -> str:
        """The last user message, with earlier turns as context when there are any."""
        turns = [m for m in self.messages if m.role in ("user", "assistant")]
        last = max((i for i, m in enumerate(turns) if m.role == "user"), default=-1)
        if last <= 0:
            return self.question
        history = "\n".join(f"{m.role}: {m.text}" for m in turns[:last])
        return f"Conversation so far:\n{history}\n\nCurrent question: {turns[last].text}"

    def sampling_overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.max_completion_tokens or self.max_tokens:
            out["max_tokens"] = self.max_completion_tokens or self.max_tokens
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a request body; errors name the field and stay short (no echoed payloads)."""
    if isinstance(body, ChatRequest):
        request = body
    else:
        if not isinstance(body, Mapping):
            raise InvalidRequestError(
                f"The request body must be a JSON object, not {type(body).__name__}.")
        try:
            request = ChatRequest.model_validate(dict(body))
        except ValidationError as err:
            first = err.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            message = first["msg"]
            if len(message) > MAX_MESSAGE_CHARS:
                message = message[: MAX_MESSAGE_CHARS - 3] + "..."
            raise InvalidRequestError(f"Invalid value for '{param}': {message}.", param) from None
    if request.n != 1:
        raise InvalidRequestError(f"Only n=1 is supported; got n={request.n}.", "n")
    if not request.question.strip():
        raise InvalidRequestError("The messages hold no user message with text.", "messages")
    return request


@dataclass(frozen=True)
class ChatCompletion:
    """One answer, in the shape of an OpenAI chat completion plus an `orchestrator` object."""

    id: str
    created: int
    model: str
    content: str
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    info: Mapping[str, Any] = field(default_factory=dict)
    finish_reason: str = "stop"

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                         "finish_reason": self.finish_reason, "logprobs": None}],
            "usage": self.usage(), "orchestrator": dict(self.info),
        }

    def chunks(self, piece_chars: int = 64) -> Iterator[dict[str, Any]]:
        """`chat.completion.chunk` objects: the role, the content in pieces, then the finish
        reason with the usage and the orchestrator object."""
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model}

        def chunk(delta: dict, finish: str | None = None, **extra) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                         "logprobs": None}], **extra}

        yield chunk({"role": "assistant", "content": ""})
        for start in range(0, len(self.content), piece_chars):
            yield chunk({"content": self.content[start:start + piece_chars]})
        yield chunk({}, self.finish_reason, usage=self.usage(), orchestrator=dict(self.info))


def completion_from(answer: Answer, model: str, aggregator: str) -> ChatCompletion:
    """The reply text: the fused response when the aggregator wrote one, else the response of
    the first expert whose answer won, else the first response at all."""
    ok = [o for o in answer.outputs if o.error is None]
    fused = answer.detail.get("text") if answer.aggregator == "fuse" else None
    if fused:
        content = strip_reasoning(fused)
    else:
        winner = next((o for o in ok if o.answer is not None
                       and o.answer == answer.final_answer), ok[0] if ok else None)
        content = strip_reasoning(winner.text) if winner else ""
    sel = answer.selection
    info = {
        "skills": list(sel.evidence.get("skills", [])),
        "router": sel.evidence.get("router"),
        "experts": [
            {"id": e, "score": s, "answer": _output_of(answer, e, "answer"),
             "error": _output_of(answer, e, "error")}
            for e, s in zip(sel.experts, sel.scores)
        ],
        "aggregator": answer.aggregator if answer.aggregator != "early-exit" else aggregator,
        "early_exit": answer.aggregator == "early-exit",
        "final_answer": answer.final_answer,
        "failed_experts": [o.expert for o in answer.outputs if o.error is not None],
    }
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=model,
        content=content, answer=answer.final_answer, prompt_tokens=answer.usage.tokens_in,
        completion_tokens=answer.usage.tokens_out, info=info,
    )


def _output_of(answer: Answer, expert: str, attr: str):
    out = next((o for o in answer.outputs if o.expert == expert), None)
    return getattr(out, attr) if out else None


def complete_batch(orch, requests: Sequence[ChatRequest | Mapping[str, Any]]
                   ) -> list[ChatCompletion | OrchestratorError]:
    """Answer several chat requests in one grouped execution. A request that cannot be served
    gets its typed error in its slot; the others are answered."""
    from .aggregation.first import FirstAggregator
    from .registry import ROUTERS

    results: list[ChatCompletion | OrchestratorError | None] = [None] * len(requests)
    mixture, direct = [], []  # (slot, request, query)
    for slot, raw in enumerate(requests):
        try:
            req = parse_chat_request(raw)
            text = req.prompt_text()
            query = Query(id=f"chat-{uuid.uuid4().hex[:16]}", question=text,
                          answer_type=infer_answer_type(text, None, ()))
            if req.model == orch.model_name:
                k = req.k if req.k is not None else orch.k
                size = len(orch.pool.experts)
                if not 1 <= k <= size:
                    raise InvalidRequestError(
                        f"k={k} is outside 1..{size}: the pool has {size} experts.", "k")
                if req.router is not None and req.router not in ROUTERS:
                    raise InvalidRequestError(
                        f"Unknown router '{req.router[:40]}'; available: "
                        f"{', '.join(ROUTERS.names())}.", "router")
                mixture.append((slot, req, query))
            elif req.model in orch.specs:
                direct.append((slot, req, query))
            else:
                raise UnknownModelError(req.model, [orch.model_name, *orch.specs])
        except OrchestratorError as err:
            results[slot] = err

    selections: dict[str, Selection] = {}
    groups: dict[tuple[str, int], list[tuple[int, ChatRequest, Query]]] = {}
    for item in mixture:
        req = item[1]
        key = (req.router or orch.config.router, req.k if req.k is not None else orch.k)
        groups.setdefault(key, []).append(item)
    for (router, k), items in groups.items():
        try:
            for (_, _, q), sel in zip(items, orch.route_with([q for _, _, q in items], router, k)):
                selections[q.id] = sel
        except OrchestratorError as err:
            for slot, _, _ in items:
                results[slot] = err
    for _, req, q in direct:
        selections[q.id] = Selection(q.id, (req.model,), (1.0,), {"router": "direct"})

    live = [(slot, req, q) for slot, req, q in mixture + direct if q.id in selections
            and results[slot] is None]
    if not live:
        return results  # type: ignore[return-value]
    queries = [q for _, _, q in live]
    sels = [selections[q.id] for q in queries]
    overrides = {q.id: req.sampling_overrides() for _, req, q in live}
    gen_results, stats = orch.executor.execute(orch.requests_for(queries, sels, overrides))
    outputs = orch.collect(queries, gen_results)
    direct_ids = {q.id for _, _, q in direct}
    by_kind: dict[str, list[int]] = {"mixture": [], "direct": []}
    for i, q in enumerate(queries):
        by_kind["direct" if q.id in direct_ids else "mixture"].append(i)
    for kind, idx in by_kind.items():
        if not idx:
            continue
        aggregator = FirstAggregator(orch.pool, orch.config, orch) if kind == "direct" else None
        answers = orch.combine([queries[i] for i in idx], [sels[i] for i in idx],
                               [outputs[i] for i in idx], stats, aggregator)
        for i, answer in zip(idx, answers):
            slot, req = live[i][0], live[i][1]
            succeeded = sum(o.error is None for o in answer.outputs)
            needed = 1 if kind == "direct" else min(orch.config.min_experts_ok,
                                                    len(answer.outputs))
            errors = [o.error for o in answer.outputs if o.error]
            if succeeded < needed and errors and all(CONTEXT_ERROR in e for e in errors):
                results[slot] = InvalidRequestError(errors[0], "messages",
                                                    "context_length_exceeded")
                continue
            if succeeded < needed:
                first = next((o.error for o in answer.outputs if o.error), "no answer")
                results[slot] = BackendError(
                    f"{succeeded} of {len(answer.outputs)} experts answered; at least {needed} "
                    f"must. First error: {first}")
                continue
            name = orch.config.aggregator if kind == "mixture" else "none"
            results[slot] = completion_from(answer, req.model, name)
    orch.totals.merge(stats)
    return results  # type: ignore[return-value]


def complete_calls(orch, calls: Sequence[ChatCall]) -> list[ChatResult | OrchestratorError]:
    """Answer typed chat calls in one grouped execution; a call that cannot be served gets its
    typed error in its slot."""
    bodies = []
    for call in calls:
        body: dict[str, Any] = {
            "model": call.model or orch.model_name,
            "messages": [{"role": m.role, "content": m.content} for m in call.messages]}
        for name in ("k", "router", "max_tokens", "temperature", "top_p", "seed"):
            if getattr(call, name) is not None:
                body[name] = getattr(call, name)
        bodies.append(body)
    out: list[ChatResult | OrchestratorError] = []
    for result in complete_batch(orch, bodies):
        if isinstance(result, ChatCompletion):
            result = ChatResult(id=result.id, created=result.created, model=result.model,
                                content=result.content, finish_reason="stop",
                                prompt_tokens=result.prompt_tokens,
                                completion_tokens=result.completion_tokens,
                                answer=result.answer, info=result.info)
        out.append(result)
    return out
