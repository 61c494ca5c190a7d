"""Any OpenAI-compatible `/v1/chat/completions` server (vLLM, TGI, llama.cpp, a hosted API)
through one httpx async client per expert.

Options:
  base_url          e.g. http://127.0.0.1:8001/v1 (required)
  api_key_env       name of the environment variable that holds the key (never the key itself)
  remote_model      model name sent to the server (default: the expert's `adapter` when set, as
                    a vLLM server names its LoRA adapters, else the expert's `model`)
  concurrency       requests in flight at once (default 8)
  timeout_s         read timeout per request; connect_timeout_s for connecting
  max_retries       retries on 429, 5xx, timeouts and connection errors, never on other 4xx
  backoff_s         first backoff; doubles each retry, capped by backoff_max_s; a Retry-After
                    header (seconds) is honoured up to backoff_max_s
  extra_body        extra JSON fields merged into every request body
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from ..errors import ConfigError
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .base import BackendOptions, BaseBackend, apply_stop, failed

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIHTTPOptions(BackendOptions):
    base_url: str
    api_key_env: str | None = None
    remote_model: str | None = None
    concurrency: int = Field(default=8, ge=1, le=1024)
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=20.0, ge=0)
    extra_body: dict[str, Any] = {}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def served_name(expert, opts) -> str:
    """The `model` field of the request: remote_model, else the adapter, else the model."""
    return opts.remote_model or expert.adapter or expert.model


class OpenAIHTTPBackend(BaseBackend):
    name = "openai_http"
    supports_lora = True  # a vLLM server exposes its LoRA adapters as model names
    Options = OpenAIHTTPOptions

    def check(self, expert: ExpertSpec) -> str:
        opts = self.options(expert)
        self._api_key(expert, opts)
        return f"{opts.base_url} model={served_name(expert, opts)}"

    def _api_key(self, expert: ExpertSpec, opts: OpenAIHTTPOptions) -> str | None:
        if not opts.api_key_env:
            return None
        key = os.environ.get(opts.api_key_env)
        if not key:
            raise ConfigError(
                f"Expert '{expert.id}' reads its API key from the environment variable "
                f"'{opts.api_key_env}', which is not set. Export it before running."
            )
        return key

    def load(self, expert: ExpertSpec) -> None:
        opts = self.options(expert)
        self._loaded[expert.id] = (expert, opts, self._api_key(expert, opts))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        # Called from inside an event loop (e.g. a server handler's thread): run on our own, in a
        # worker thread, so that an error raised there reaches the caller as itself.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-http") as pool:
            return pool.submit(asyncio.run, self.agenerate(requests)).result()

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        by_expert: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_expert.setdefault(r.expert, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for expert_id, idx in by_expert.items():
            batch = await self._expert_batch(expert_id, [requests[i] for i in idx])
            for i, result in zip(idx, batch):
                results[i] = result
        return results  # type: ignore[return-value]

    async def _expert_batch(self, expert_id: str,
                            requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One expert's requests through one client, at most `concurrency` in flight, in order."""
        import httpx

        expert, opts, key = self.loaded(expert_id)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(opts.timeout_s, connect=opts.connect_timeout_s)
        limits = httpx.Limits(max_connections=opts.concurrency)
        sem = asyncio.Semaphore(opts.concurrency)
        async with httpx.AsyncClient(
            base_url=opts.base_url.rstrip("/") + "/", headers=headers, timeout=timeout,
            limits=limits,
        ) as client:
            async def one(request: GenerationRequest) -> GenerationResult:
                async with sem:
                    return await self._one(client, expert, opts, request)

            return list(await asyncio.gather(*(one(r) for r in requests)))

    async def _one(self, client, expert: ExpertSpec, opts: OpenAIHTTPOptions,
                   request: GenerationRequest) -> GenerationResult:
        import httpx

        body = {
            "model": served_name(expert, opts),
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.sampling.max_tokens,
            "temperature": request.sampling.temperature,
            "top_p": request.sampling.top_p,
            "seed": request.sampling.seed,
            **({"stop": list(request.sampling.stop)} if request.sampling.stop else {}),
            **opts.extra_body,
        }
        attempt = 0
        while True:
            try:
                resp = await client.post("chat/completions", json=body)
                if resp.status_code >= 400:
                    raise _HTTPError(resp.status_code, _error_message(resp), _retry_after(resp))
                return _parse(request, resp)
            except (_HTTPError, httpx.TimeoutException, httpx.TransportError) as err:
                status = getattr(err, "status", None)
                retryable = status is None or status in RETRY_STATUS
                if not retryable or attempt >= opts.max_retries:
                    what = f"HTTP {status}" if status else type(err).__name__
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    detail = str(err) or (  # httpx timeouts carry no message of their own
                        f"no answer within timeout_s={opts.timeout_s:g} "
                        f"(connect_timeout_s={opts.connect_timeout_s:g})"
                        if isinstance(err, httpx.TimeoutException) else "no detail")
                    return failed(request, f"{what} from {opts.base_url}{tries}: {detail}")
                jitter = 0.75 + random.random() / 2
                delay = min(opts.backoff_s * 2**attempt * jitter, opts.backoff_max_s)
                retry_after = getattr(err, "retry_after", None)
                if retry_after is not None:  # the server's "not before": no jitter below it
                    delay = max(delay, min(retry_after, opts.backoff_max_s))
                attempt += 1
                await asyncio.sleep(delay)
            except ValueError as err:  # JSON that is not a chat completion
                return failed(request, f"bad response from {opts.base_url}: {err}")


def _retry_after(resp) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_message(resp) -> str:
    try:
        data = resp.json()
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else data  # a proxy may send a list/string
    message = err.get("message") if isinstance(err, dict) else (str(err) if err else None)
    return (message or resp.text or resp.reason_phrase)[:500]


def _parse(request: GenerationRequest, resp) -> GenerationResult:
    data = resp.json()
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError("no choices[0].message in the response") from None
    if not isinstance(text, str):
        raise ValueError(f"choices[0].message.content is a {type(text).__name__}, not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    text, _ = apply_stop(text, request.sampling.stop)  # a server that ignores `stop`
    return GenerationResult(
        request, text.strip(), int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
    )
