"""Chat over the pool: `ChatCall` in, `ChatResult` out, through the one pipeline.

A call names `model`: None or the mixture's name is routed over the pool, generated grouped by
expert and aggregated; an expert id asks that expert alone. A call is answered as a
*conversation* by default (`mode="chat"`): each chosen expert receives the client's messages
through its own chat template (system prompts combined as `generation.py` documents), routing
reads the last user turn, and the replies are aggregated as free text (`fuse` writes one reply
in the form the user asked for; `first`, also used in place of `vote`, returns the best-routed
expert's reply). `mode="task"` treats the last user turn as a benchmark question (prompt
template, extracted answer, vote), as `orchestrate run` does.

Several calls are answered in one grouped execution (`complete_calls`), which the server's
micro-batcher uses. The OpenAI wire format lives in `orchestrator/server/`; this module is the
SDK's typed surface. (`ChatResult` is our own frozen dataclass rather than the `openai`
package's `ChatCompletion`: the core does not depend on `openai`, whose types change between
releases, and the result carries what OpenAI's type has no field for: the extracted answer,
the routing, and whether usage is exact.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .aggregation.fuse import strip_reasoning
from .benchmarks.readers import infer_answer_type
from .errors import BackendError, InvalidRequestError, OrchestratorError, UnknownModelError
from .pipeline import Overrides
from .registry import AGGREGATORS, ROUTERS
from .types import Answer, Conversation, Message, Query, Work

MIXTURE_MODEL = "orchestrator"
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
    escalation: Literal["lossless", "confident", "none"] | None = None
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


INT64 = 2**63
MAX_STOP = 4
MODES = ("chat", "task")
ESCALATIONS = ("lossless", "confident", "none")
ROLES = ("system", "developer", "user", "assistant")


def chat_call(messages: Sequence[Mapping[str, Any]] | str, **params: Any) -> ChatCall:
    """A `ChatCall` from OpenAI-style message dicts (or one user string) and keyword options;
    a wrong type is an InvalidRequestError naming the parameter."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {role, content} "
                                  "objects (or one user string).", "messages")
    turns = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            turns.append(m)
            continue
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"messages[{i}] must be an object with a 'role'.",
                                      f"messages.{i}")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI text parts
            if not all(isinstance(p, Mapping) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise InvalidRequestError(f"messages[{i}].content: only text parts are "
                                          "supported.", f"messages.{i}.content")
            content = "".join(p["text"] for p in content)
        if content is not None and not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of "
                                      "text parts.", f"messages.{i}.content")
        turns.append(Message(m["role"], content or ""))
    allowed = [f for f in ChatCall.__dataclass_fields__ if f != "messages"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidRequestError(f"Unknown chat option(s): {', '.join(unknown)}; allowed: "
                                  f"{', '.join(allowed)}.", unknown[0])
    stop = params.pop("stop", None)
    if isinstance(stop, str):
        stop = (stop,)
    return ChatCall(messages=tuple(turns), stop=tuple(stop or ()), **params)


def check_call(orch, call: ChatCall) -> None:
    """What makes a call unservable, as an InvalidRequestError naming the parameter."""
    bad = next((i for i, m in enumerate(call.messages) if m.role not in ROLES), None)
    if bad is not None:
        raise InvalidRequestError(
            f"messages[{bad}].role '{str(call.messages[bad].role)[:20]}' is not supported; use "
            f"one of: {', '.join(ROLES)}.", f"messages.{bad}.role")
    if not any(m.role == "user" and m.content.strip() for m in call.messages):
        raise InvalidRequestError("The messages hold no user message with text.", "messages")
    if call.escalation not in (None, *ESCALATIONS):
        raise InvalidRequestError(f"escalation must be one of {', '.join(ESCALATIONS)}; got "
                                  f"'{str(call.escalation)[:20]}'.", "escalation")
    if call.mode not in MODES:
        raise InvalidRequestError(f"mode must be one of {', '.join(MODES)}; got "
                                  f"'{str(call.mode)[:20]}'.", "mode")
    _check_range(call.temperature, "temperature", 0.0, 2.0)
    _check_range(call.top_p, "top_p", 1e-9, 1.0)
    if call.max_tokens is not None and (isinstance(call.max_tokens, bool) or not isinstance(
            call.max_tokens, int) or not 1 <= call.max_tokens <= 131072):
        raise InvalidRequestError("max_tokens must be an integer in 1..131072.", "max_tokens")
    if call.seed is not None and (isinstance(call.seed, bool) or not isinstance(call.seed, int)
                                  or not -INT64 <= call.seed < INT64):
        raise InvalidRequestError("seed must be an integer in the int64 range.", "seed")
    if len(call.stop) > MAX_STOP or not all(isinstance(x, str) and x for x in call.stop):
        raise InvalidRequestError(f"stop takes at most {MAX_STOP} non-empty strings.", "stop")
    if call.model not in (None, orch.model_name, MIXTURE_MODEL) and call.model not in orch.specs:
        raise UnknownModelError(str(call.model), [orch.model_name, *orch.specs])
    size = len(orch.pool.experts)
    if call.k is not None and (isinstance(call.k, bool) or not isinstance(call.k, int)
                               or not 1 <= call.k <= size):
        raise InvalidRequestError(f"k={call.k} is outside 1..{size}: the pool has {size} "
                                  "experts.", "k")
    if call.router is not None and call.router not in ROUTERS:
        raise InvalidRequestError(f"Unknown router '{str(call.router)[:40]}'; available: "
                                  f"{', '.join(ROUTERS.names())}.", "router")
    if call.aggregator is not None and call.aggregator not in AGGREGATORS:
        raise InvalidRequestError(f"Unknown aggregator '{str(call.aggregator)[:40]}'; "
                                  f"available: {', '.join(AGGREGATORS.names())}.", "aggregator")


def _check_range(value: Any, name: str, low: float, high: float) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not low <= value <= high):
        raise InvalidRequestError(f"{name} must be a number in {low:g}..{high:g}.", name)


def task_text(messages: Sequence[Message]) -> str:
    """Task mode: the last user turn, with earlier turns as context when there are any."""
    turns = [m for m in messages if m.role in ("user", "assistant")]
    last = max((i for i, m in enumerate(turns) if m.role == "user"), default=-1)
    if last < 0:
        return ""
    if last == 0:
        return turns[0].content
    history = "\n".join(f"{m.role}: {m.content}" for m in turns[:last])
    return f"Conversation so far:\n{history}\n\nCurrent question: {turns[last].content}"


def _work(call: ChatCall) -> Work:
    uid = f"chat-{uuid.uuid4().hex[:16]}"
    if call.mode == "chat":
        return Conversation(uid, call.messages)
    text = task_text(call.messages)
    return Query(id=uid, question=text, answer_type=infer_answer_type(text, None, ()))


def _overrides(orch, call: ChatCall) -> Overrides:
    direct = call.model if call.model in orch.specs and call.model != orch.model_name else None
    sampling = {"max_tokens": call.max_tokens, "temperature": call.temperature,
                "top_p": call.top_p, "seed": call.seed, "stop": call.stop or None}
    return Overrides(k=call.k, router=call.router, aggregator=call.aggregator, expert=direct,
                     sampling={k: v for k, v in sampling.items() if v is not None},
                     escalation=call.escalation)


def complete_calls(orch, calls: Sequence[ChatCall], *, min_experts_ok: int | None = None
                   ) -> list[ChatResult | OrchestratorError]:
    """Answer chat calls through the pipeline in one grouped execution; a call that cannot be
    served gets its typed error in its slot, the others are answered. A mixture call fails
    (BackendError) when fewer than `min_experts_ok` (default: the run config's) of its
    experts answered."""
    results: list[ChatResult | OrchestratorError | None] = [None] * len(calls)
    live: list[tuple[int, ChatCall, Work, Overrides]] = []
    for slot, call in enumerate(calls):
        try:
            check_call(orch, call)
            live.append((slot, call, _work(call), _overrides(orch, call)))
        except OrchestratorError as err:
            results[slot] = err
    if not live:
        return results  # type: ignore[return-value]
    try:
        answers = orch.pipeline.answer([w for _, _, w, _ in live], [o for *_, o in live]).answers
    except OrchestratorError as err:  # routing failed (e.g. no profile for a profile router)
        for slot, *_ in live:
            results[slot] = err
        return results  # type: ignore[return-value]
    needed = min_experts_ok or orch.config.min_experts_ok
    for (slot, call, _, ov), answer in zip(live, answers):
        results[slot] = _result(orch, call, answer, 1 if ov.expert else needed)
    return results  # type: ignore[return-value]


def _result(orch, call: ChatCall, answer: Answer, needed: int) -> ChatResult | OrchestratorError:
    outs = answer.outputs
    succeeded = sum(o.error is None for o in outs)
    needed = min(needed, len(outs))
    errors = [o.error for o in outs if o.error]
    if succeeded < needed and errors and all(CONTEXT_ERROR in e for e in errors):
        return InvalidRequestError(errors[0], "messages", "context_length_exceeded")
    if succeeded < needed:
        return BackendError(f"{succeeded} of {len(outs)} experts answered; at least {needed} "
                            f"must. First error: {errors[0] if errors else 'no answer'}")
    sel = answer.selection
    info = {
        "mode": call.mode,
        "router": sel.router,
        "k": len(sel.experts),
        "skills": list(sel.skills),
        "experts": [
            {"id": e, "score": s, "answer": _output_of(answer, e, "answer"),
             "error": _output_of(answer, e, "error"),
             "finish_reason": _output_of(answer, e, "finish_reason")}
            for e, s in zip(sel.experts, sel.scores)
        ],
        "aggregator": answer.aggregator if answer.aggregator != "early-exit"
        else orch.pipeline.aggregator_name(answer.work, _overrides(orch, call)),
        "early_exit": answer.aggregator == "early-exit",
        "final_answer": answer.final_answer,
        "failed_experts": [o.expert for o in outs if o.error is not None],
    }
    experts = {o.expert for o in outs} | ({answer.detail["by"]} if "by" in answer.detail else set())
    return ChatResult(
        id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()),
        model=call.model or orch.model_name, content=strip_reasoning(answer.text),
        finish_reason="length" if answer.finish_reason == "length" else "stop",
        prompt_tokens=answer.usage.tokens_in, completion_tokens=answer.usage.tokens_out,
        usage_exact=all(orch.specs[e].backend != "replay" for e in experts if e in orch.specs),
        answer=answer.final_answer if call.mode == "task" else None, info=info,
    )


def _output_of(answer: Answer, expert: str, attr: str):
    out = next((o for o in answer.outputs if o.expert == expert), None)
    return getattr(out, attr) if out else None
