"""Any OpenAI-compatible `/v1/chat/completions` server (vLLM, TGI, llama.cpp, a hosted API)
through one httpx async client per expert.

Options:
  base_url          e.g. http://127.0.0.1:8001/v1 (required), or a list of replicas of one
                    server: requests spread by outstanding work; connection errors, timeouts
                    and 5xx fail over to another replica, which cools down (replicas.py)
  cooldown_s        how long a failed replica gets no traffic (then one health probe)
  sleep_level       1 or 2: the server runs vLLM sleep mode; loading the expert wakes it,
                    after sleeping idle servers with the same `placement` (server_sleep.py)
  api_key_env       name of the environment variable that holds the key (never the key itself)
  remote_model      model name sent to the server (default: the expert's `adapter` when set, as
                    a vLLM server names its LoRA adapters, else the expert's `model`)
  concurrency       requests in flight at once per replica (default 8)
  timeout_s         read timeout per request; connect_timeout_s for connecting
  max_retries       retries on 429, 5xx, timeouts and connection errors, never on other 4xx
  backoff_s         first backoff; doubles each retry, capped by backoff_max_s; a Retry-After
                    header (seconds) is honoured up to backoff_max_s
  extra_body        extra JSON fields merged into every request body
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field, field_validator

from ..errors import ConfigError, ModelNotServedError, ServerUnreachableError
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .base import BackendOptions, BaseBackend, apply_stop, failed, request_seed
from .ioloop import IOLoop
from .replicas import Replica, ReplicaTable
from .server_sleep import SleepSwitch

PROBE_TIMEOUT_S = 3.0  # `orchestrate pools check`: a live server lists its models well within this
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIHTTPOptions(BackendOptions):
    base_url: str | list[str]
    cooldown_s: float = Field(default=5.0, ge=0)
    sleep_level: Literal[1, 2] | None = None
    api_key_env: str | None = None
    remote_model: str | None = None
    concurrency: int = Field(default=8, ge=1, le=1024)
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=20.0, ge=0)
    extra_body: dict[str, Any] = {}

    @field_validator("base_url")
    @classmethod
    def _urls(cls, value: str | list[str]) -> str | list[str]:
        urls = [value] if isinstance(value, str) else value
        if not urls or len(set(urls)) != len(urls) or not all(u.strip() for u in urls):
            raise ValueError("give one URL or a list of distinct replica URLs")
        return value

    @property
    def urls(self) -> list[str]:
        """The replicas' base URLs, without trailing slashes."""
        urls = [self.base_url] if isinstance(self.base_url, str) else self.base_url
        return [u.rstrip("/") for u in urls]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@functools.cache
def _ssl_context():
    """httpx's default TLS context, built once: building it (loading the CA bundle) took
    0.05-0.1 s per client, i.e. per generate call."""
    import ssl

    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def served_name(expert, opts) -> str:
    """The `model` field of the request: remote_model, else the adapter, else the model."""
    return opts.remote_model or expert.adapter or expert.model


class OpenAIHTTPBackend(BaseBackend):
    name = "openai_http"
    supports_lora = True  # a vLLM server exposes its LoRA adapters as model names
    Options = OpenAIHTTPOptions

    def __init__(self, context=None):
        super().__init__(context)
        self.replicas = ReplicaTable()
        self._failovers: dict[str, int] = {}
        self._counter_lock = threading.Lock()
        self._io = IOLoop("openai-http")
        self._clients: dict[str, Any] = {}  # expert id -> httpx.AsyncClient on self._io
        self._sleep = SleepSwitch()

    def check(self, expert: ExpertSpec, probe: bool = False) -> str:
        opts = self.options(expert)
        key = self._api_key(expert, opts)
        if probe:  # every replica when base_url lists several
            for url in opts.urls:
                self._check_server(expert, opts, key, url)
        return f"{' | '.join(opts.urls)} model={served_name(expert, opts)}"

    def default_placement(self, expert: ExpertSpec) -> str | None:
        """Experts on the same server(s) share one executor worker; others run alongside."""
        try:
            return ",".join(self.options(expert).urls)
        except Exception:  # invalid options: load() reports them
            return None

    def take_failovers(self, expert_id: str) -> int:
        """Requests of `expert_id` moved to another replica since the last call."""
        with self._counter_lock:
            return self._failovers.pop(expert_id, 0)

    def _count_failover(self, expert_id: str) -> None:
        with self._counter_lock:
            self._failovers[expert_id] = self._failovers.get(expert_id, 0) + 1

    def _check_server(self, expert: ExpertSpec, opts: OpenAIHTTPOptions, key: str | None,
               base_url: str) -> None:
        """GET {base_url}/models within PROBE_TIMEOUT_S: the server answers and lists the model
        this expert sends."""
        import httpx

        url = base_url.rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = min(PROBE_TIMEOUT_S, opts.connect_timeout_s, opts.timeout_s)
        where = f"Expert '{expert.id}': the server at {base_url}"
        try:
            resp = httpx.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(
                f"{where} does not answer GET {url} within {timeout:g}s ({type(exc).__name__}: "
                f"{exc or 'no detail'}). Start the server, or fix options.base_url.") from None
        if resp.status_code != 200:
            hint = (" Set options.api_key_env to the variable holding its key." if
                    resp.status_code in (401, 403) else "")
            raise ServerUnreachableError(f"{where} answers GET {url} with HTTP "
                                         f"{resp.status_code}: {resp.text[:200]!r}.{hint}")
        try:
            served = [str(m["id"]) for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise ServerUnreachableError(f"{where} answers GET {url} without an OpenAI model "
                                         f"list: {resp.text[:200]!r}.") from None
        name = served_name(expert, opts)
        if name not in served:
            listing = ", ".join(served[:12]) + (" ..." if len(served) > 12 else "")
            raise ModelNotServedError(
                f"{where} does not serve the model '{name}'; it serves: {listing or '(none)'}. "
                "Set options.remote_model (or the expert's adapter/model) to a served name.")

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
        key = self._api_key(expert, opts)
        if opts.sleep_level:
            placement = expert.placement if isinstance(expert.placement, str) else None
            self._sleep.wake(expert.id, opts.urls, placement, opts.sleep_level, opts.timeout_s)
        self._loaded[expert.id] = (expert, opts, key)

    def release(self, expert_id: str) -> None:
        super().release(expert_id)
        self._sleep.released(expert_id)
        client = self._clients.pop(expert_id, None)
        if client is not None:
            self._io.submit(client.aclose())

    def close(self) -> None:
        super().close()
        self._io.close()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Blocking; from any thread (also one running an event loop): the requests run on
        this backend's own I/O loop, whose clients keep their connections between calls."""
        if not requests:
            return []
        if self._io.in_loop_thread():  # not expected; never block the loop on itself
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-http") as pool:
                return pool.submit(asyncio.run, self.agenerate(requests)).result()
        return self._io.run(self._generate(requests, keep_clients=True))

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Awaitable on the caller's own loop (one client per call)."""
        return await self._generate(requests, keep_clients=False)

    async def _generate(self, requests: Sequence[GenerationRequest],
                        keep_clients: bool) -> list[GenerationResult]:
        by_expert: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_expert.setdefault(r.expert, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for expert_id, idx in by_expert.items():
            batch = await self._expert_batch(expert_id, [requests[i] for i in idx], keep_clients)
            for i, result in zip(idx, batch):
                results[i] = result
        return results  # type: ignore[return-value]

    def _client(self, opts: OpenAIHTTPOptions, key: str | None):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(opts.timeout_s, connect=opts.connect_timeout_s)
        limits = httpx.Limits(max_connections=opts.concurrency * len(opts.urls))
        return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits,
                                 verify=_ssl_context())

    async def _expert_batch(self, expert_id: str, requests: list[GenerationRequest],
                            keep_clients: bool) -> list[GenerationResult]:
        """One expert's requests through one client, at most `concurrency` in flight per
        replica, in order."""
        expert, opts, key = self.loaded(expert_id)
        group = self.replicas.group(opts.urls)
        sem = asyncio.Semaphore(opts.concurrency * len(group))

        async def send_all(client) -> list[GenerationResult]:
            async def one(request: GenerationRequest) -> GenerationResult:
                async with sem:
                    return await self._one(client, expert, opts, group, request)

            return list(await asyncio.gather(*(one(r) for r in requests)))

        if not keep_clients:
            async with self._client(opts, key) as client:
                return await send_all(client)
        client = self._clients.get(expert_id)
        if client is None:
            client = self._clients[expert_id] = self._client(opts, key)
        return await send_all(client)

    async def _one(self, client, expert: ExpertSpec, opts: OpenAIHTTPOptions,
                   group: list[Replica], request: GenerationRequest) -> GenerationResult:
        import httpx

        body = {
            "model": served_name(expert, opts),
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.sampling.max_tokens,
            "temperature": request.sampling.temperature,
            "top_p": request.sampling.top_p,
            # sampled: the seed mixed with the expert id (one model listed twice: two samples)
            "seed": (request.sampling.seed if request.sampling.greedy
                     else request_seed(request.sampling.seed, request.expert)),
            **({"stop": list(request.sampling.stop)} if request.sampling.stop else {}),
            **opts.extra_body,
        }
        attempt = sends = 0
        tried: set[str] = set()  # replicas that failed this request since the last backoff
        last_failed: str | None = None
        work = request.sampling.max_tokens
        while True:
            pick = self.replicas.choose(group, tried)
            replica = pick.replica
            if pick.probe and not await self._probe(client, replica, opts):
                tried.add(replica.url)
                continue
            if last_failed is not None and replica.url != last_failed:
                self._count_failover(expert.id)
            self.replicas.begin(replica, work)
            sends += 1
            try:
                resp = await client.post(f"{replica.url}/chat/completions", json=body)
                if resp.status_code >= 400:
                    raise _HTTPError(resp.status_code, _error_message(resp), _retry_after(resp))
                return _parse(request, resp)
            except (_HTTPError, httpx.TimeoutException, httpx.TransportError) as err:
                status = getattr(err, "status", None)
                if status is None or status >= 500:  # the replica's fault: cool it down
                    self.replicas.failed(group, replica, opts.cooldown_s)
                retryable = status is None or status in RETRY_STATUS
                tried.add(replica.url)
                last_failed = replica.url
                if retryable and self.replicas.has_alternative(group, tried):
                    continue  # fail over at once: another replica may answer
                if not retryable or attempt >= opts.max_retries:
                    what = f"HTTP {status}" if status else type(err).__name__
                    tries = f" after {sends} attempts" if sends > 1 else ""
                    detail = str(err) or (  # httpx timeouts carry no message of their own
                        f"no answer within timeout_s={opts.timeout_s:g} "
                        f"(connect_timeout_s={opts.connect_timeout_s:g})"
                        if isinstance(err, httpx.TimeoutException) else "no detail")
                    return failed(request, f"{what} from {replica.url}{tries}: {detail}")
                jitter = 0.75 + random.random() / 2
                delay = min(opts.backoff_s * 2**attempt * jitter, opts.backoff_max_s)
                retry_after = getattr(err, "retry_after", None)
                if retry_after is not None:  # the server's "not before": no jitter below it
                    delay = max(delay, min(retry_after, opts.backoff_max_s))
                attempt += 1
                tried.clear()
                await asyncio.sleep(delay)
            except ValueError as err:  # JSON that is not a chat completion
                return failed(request, f"bad response from {replica.url}: {err}")
            finally:
                self.replicas.end(replica, work)

    async def _probe(self, client, replica: Replica, opts: OpenAIHTTPOptions) -> bool:
        """GET {base_url}/models on a replica whose cooldown ended; True when it answers 200."""
        import httpx

        try:
            resp = await client.get(f"{replica.url}/models", timeout=opts.connect_timeout_s)
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        self.replicas.probed(replica, ok, opts.cooldown_s)
        return ok


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
