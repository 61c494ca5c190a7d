"""The OpenAI chat wire of `orchestrate serve`: the request body -> a `ChatCall`, and a
`ChatResult` -> a `chat.completion` object or `chat.completion.chunk` events.

Every field of OpenAI's chat create body is either honoured or refused with a 400 naming the
`param`; none is silently ignored (issue 12, item 3):

  honoured   model, messages (system, developer, user, assistant; text parts joined),
             max_tokens / max_completion_tokens, temperature, top_p, seed (int64), stop (a
             string or up to 4), stream, stream_options.include_usage, n=1, user and metadata
             (logged), and the neutral value of every other option (logprobs false, top_logprobs
             0, response_format {"type": "text"}, modalities ["text"], penalties 0, tool_choice
             "none", an empty logit_bias, store false, service_tier auto/default)
  refused    tools, tool_choice, functions, function_call, logprobs true, top_logprobs > 0,
             response_format json_object/json_schema, stream_options.continuous_usage_stats,
             stream_options without stream, n > 1, logit_bias, audio, modalities beyond text,
             penalties other than 0, prediction, web_search_options, reasoning_effort, store
             true, unknown roles, image/audio/file content parts, tool calls in a message, a
             lone surrogate anywhere in the text, and any top-level field OpenAI does not define
             (OpenAI's own "Unrecognized request argument")
  extras     k, router, aggregator, mode ("chat" | "task"), escalation ("lossless" |
             "confident" | "none") choose the orchestration.

Extra fields inside a message (`name`, vendor keys) are accepted (vLLM's test_extra_fields).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..chat import ChatCall, ChatResult
from ..errors import InvalidRequestError
from ..types import Message

INT64 = (-(2**63), 2**63 - 1)
MAX_STOP = 4  # OpenAI's limit
MAX_METADATA = 16  # OpenAI: up to 16 key-value pairs
MAX_ERROR_CHARS = 200
ROLES = ("system", "developer", "user", "assistant")
PIECE_CHARS = 64  # characters per streamed content delta


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extension; refused when true
    include_obfuscation: bool | None = None  # OpenAI's; nothing to obfuscate here


class ChatBody(BaseModel):
    """The body as typed JSON; what the pool cannot do is refused by `check_supported`."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    messages: list[Any] = Field(min_length=1, max_length=4096)
    max_tokens: int | None = Field(default=None, ge=1, le=131072)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=131072)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    # neutral values accepted, anything else refused
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    store: bool | None = None
    service_tier: str | None = None
    # orchestration extras
    k: int | None = Field(default=None, ge=1)
    router: str | None = Field(default=None, max_length=64)
    aggregator: str | None = Field(default=None, max_length=64)
    mode: Literal["chat", "task"] | None = None
    escalation: Literal["lossless", "confident", "none"] | None = None

    @property
    def stream_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


@dataclass(frozen=True)
class Routing:
    """What a served model name stands for: the mixture with settings (an alias), or one
    expert (`expert` set)."""

    k: int | None = None
    router: str | None = None
    aggregator: str | None = None
    mode: Literal["chat", "task"] | None = None
    expert: str | None = None
    escalation: Literal["lossless", "confident", "none"] | None = None


def _refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param, "unsupported_parameter")


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_body(body: Mapping[str, Any]) -> ChatBody:
    """Validate the JSON body's types and ranges; errors name the field and stay short (the
    value is never echoed)."""
    for name in body:
        if name not in ChatBody.model_fields:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise InvalidRequestError(f"Unrecognized request argument supplied: '{shown}'.", shown)
    try:
        request = ChatBody.model_validate(dict(body))
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and "[" in p))
        whole = loc and loc[0] in ("stop", "metadata", "logit_bias", "messages")
        param = (str(loc[0]) if whole else _loc(loc)) or None
        message = first["msg"]
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 3] + "..."
        raise InvalidRequestError(f"Invalid value for '{param}': {message}.", param) from None
    check_supported(request)
    return request


def check_supported(r: ChatBody) -> None:
    """Refuse the options this pool cannot honour (see the module docstring)."""
    if r.seed is not None and not INT64[0] <= r.seed <= INT64[1]:
        raise InvalidRequestError("seed must fit a signed 64-bit integer "
                                  f"({INT64[0]}..{INT64[1]}).", "seed")
    if r.n not in (None, 1):
        raise InvalidRequestError(f"Only n=1 is supported; got n={r.n}. Send n separate "
                                  "requests (with different seeds) for several answers.", "n")
    stops = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise InvalidRequestError(f"stop takes a non-empty string or a list of 1 to {MAX_STOP} "
                                  "non-empty strings.", "stop")
    if r.tools:
        raise _refuse("tools", "Tool calling is not supported by this pool: send no 'tools'.")
    if r.tool_choice not in (None, "none"):
        raise _refuse("tool_choice", "Tool calling is not supported by this pool: send no "
                      "'tool_choice' (or 'none').")
    if r.functions or r.function_call not in (None, "none"):
        param = "functions" if r.functions else "function_call"
        raise _refuse(param, "Function calling is not supported by this pool.")
    if r.logprobs:
        raise _refuse("logprobs", "logprobs are not available: the reply is aggregated over "
                      "several experts. Send logprobs=false.")
    if r.top_logprobs:
        raise _refuse("top_logprobs", "top_logprobs are not available: the reply is aggregated "
                      "over several experts.")
    if r.response_format is not None and r.response_format.get("type") != "text":
        raise _refuse("response_format", "Only response_format {\"type\": \"text\"} is "
                      "supported: the pool cannot guarantee JSON output.")
    if r.stream_options is not None:
        if not r.stream:
            raise InvalidRequestError("stream_options is only allowed when stream is true.",
                                      "stream_options")
        if r.stream_options.continuous_usage_stats:
            raise _refuse("stream_options.continuous_usage_stats", "continuous_usage_stats is "
                          "not supported: usage is known once the aggregated answer is; use "
                          "include_usage.")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(r, name):
            raise _refuse(name, f"{name} is not supported by every expert of the pool; send 0.")
    if r.logit_bias:
        raise _refuse("logit_bias", "logit_bias is not supported: experts have different "
                      "tokenizers.")
    if r.audio is not None or (r.modalities is not None and r.modalities != ["text"]):
        raise _refuse("modalities" if r.audio is None else "audio",
                      "Only text output is supported (modalities [\"text\"]).")
    for name in ("prediction", "web_search_options", "reasoning_effort", "verbosity"):
        if getattr(r, name) is not None:
            raise _refuse(name, f"{name} is not supported by this pool.")
    if r.store:
        raise _refuse("store", "Completions are not stored by this server: send store=false.")
    if r.service_tier not in (None, "auto", "default"):
        raise _refuse("service_tier", "Only service_tier 'auto' or 'default' is supported.")
    if r.metadata is not None and len(r.metadata) > MAX_METADATA:
        raise InvalidRequestError(f"metadata holds at most {MAX_METADATA} pairs.", "metadata")
    for param, text in (("stop", "".join(stops)), ("user", r.user or ""),
                        ("metadata", "".join(f"{k}{v}" for k, v in (r.metadata or {}).items()))):
        _check_unicode(text, param)


def _check_unicode(text: str, param: str) -> None:
    """JSON escapes can carry a lone surrogate (\\ud800) that no backend can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"'{param}' holds a lone UTF-16 surrogate: the text is not "
                                  "valid Unicode.", param) from None


def parse_messages(raw: list[Any]) -> tuple[Message, ...]:
    """OpenAI messages -> Message tuples; text parts are joined, extra keys ignored."""
    out = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{where} must be an object with 'role' and 'content'.",
                                      where)
        role = item.get("role")
        if role not in ROLES:
            shown = str(role)[:40]
            raise InvalidRequestError(f"Unknown role '{shown}' in {where}; allowed: "
                                      f"{', '.join(ROLES)}.", f"{where}.role")
        if item.get("tool_calls") or item.get("function_call"):
            raise _refuse(f"{where}.tool_calls", "Tool calls are not supported by this pool.")
        content = _text_of(item.get("content"), f"{where}.content", role)
        out.append(Message(role=role, content=content))
    if not any(m.role == "user" and m.content.strip() for m in out):
        raise InvalidRequestError("The messages hold no user message with text.", "messages")
    return tuple(out)


def _text_of(content: Any, param: str, role: str) -> str:
    if content is None and role == "assistant":
        return ""
    if isinstance(content, str):
        _check_unicode(content, param)
        return content
    if not isinstance(content, list) or not content:
        raise InvalidRequestError(f"{param} must be a string or a non-empty list of text "
                                  "parts.", param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            shown = str(kind)[:40]
            raise _refuse(f"{param}[{j}]", f"Only text content parts are supported; got a "
                          f"'{shown}' part. The experts of this pool read text only.")
        _check_unicode(part["text"], f"{param}[{j}]")
        texts.append(part["text"])
    return "".join(texts)


def to_call(r: ChatBody, routing: Routing, model: str | None = None) -> ChatCall:
    """The typed call: the body's extras override the served name's routing settings."""
    if routing.expert and any(v is not None for v in (r.k, r.router, r.aggregator)):
        name = "k" if r.k is not None else "router" if r.router is not None else "aggregator"
        raise InvalidRequestError(f"'{name}' applies to the mixture; model '{routing.expert}' is "
                                  "one expert.", name)
    stops = (r.stop,) if isinstance(r.stop, str) else tuple(r.stop or ())
    return ChatCall(
        messages=parse_messages(r.messages), model=routing.expert or model,
        k=r.k if r.k is not None else routing.k,
        router=r.router or routing.router, aggregator=r.aggregator or routing.aggregator,
        mode=r.mode or routing.mode or "chat",
        escalation=r.escalation or routing.escalation,
        max_tokens=r.max_completion_tokens or r.max_tokens, temperature=r.temperature,
        top_p=r.top_p, seed=r.seed, stop=stops, user=r.user or r.safety_identifier,
        metadata=dict(r.metadata or {}),
    )


# -- replies ----------------------------------------------------------------------------------

def usage(result: ChatResult) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens}


def orchestrator_info(result: ChatResult) -> dict[str, Any]:
    """The reply's `orchestrator` object; `usage_exact` false: the counts are not the
    backend's (replay experts report 0)."""
    return {**dict(result.info), "usage_exact": result.usage_exact}


def completion(result: ChatResult, model: str) -> dict[str, Any]:
    """A `chat.completion` object; `model` is the name the client asked for."""
    return {
        "id": result.id, "object": "chat.completion", "created": result.created,
        "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.content,
                                             "refusal": None},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage(result), "orchestrator": orchestrator_info(result),
    }


def chunks(result: ChatResult, model: str, include_usage: bool = False,
           piece_chars: int = PIECE_CHARS) -> Iterator[dict[str, Any]]:
    """`chat.completion.chunk` objects: the role, the content in pieces, the finish reason
    (with the orchestrator object) in the one chunk that has it; with `include_usage`, every
    chunk has `usage: null` and a last chunk with empty `choices` carries the usage (OpenAI)."""
    base: dict[str, Any] = {"id": result.id, "object": "chat.completion.chunk",
                            "created": result.created, "model": model,
                            "system_fingerprint": None}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict, finish: str | None = None, **extra) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                     "logprobs": None}], **extra}

    yield chunk({"role": "assistant", "content": ""})
    text = result.content
    for start in range(0, len(text), piece_chars):
        yield chunk({"content": text[start:start + piece_chars]})
    yield chunk({}, result.finish_reason, orchestrator=orchestrator_info(result))
    if include_usage:
        yield {**base, "choices": [], "usage": usage(result)}
