"""vllm.LLM over the simulated machine: the constructor keywords, generate, sleep, wake_up,
collective_rpc, reset_prefix_cache and get_tokenizer with vLLM 0.33's signatures
(vllm/entrypoints/llm.py), its prompt-length rule and its memory accounting (`_sim.py`)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import _sim
from ..sampling_params import SamplingParams
from ..v1.engine.exceptions import EngineDeadError

EOS = 2


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


class _Tokenizer:
    """Word-level: one token per whitespace-separated word, ids from a hash."""

    bos_token = "<s>"

    def __init__(self, template: str):
        self.template = template
        self.chat_template = None if template == "mistral" else "{{ sim }}"

    @staticmethod
    def word_id(word: str) -> int:
        return 3 + int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest()) % 31997

    def __call__(self, text, add_special_tokens: bool = True, **_):
        ids = [self.word_id(w) for w in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def apply_chat_template(self, conversation, add_generation_prompt=False, tokenize=True, **_):
        if self.template == "no_system" and any(m["role"] == "system" for m in conversation):
            raise ValueError("System role not supported")  # Gemma-2's template
        text = "<s> " + " ".join(f"<|{m['role']}|> {m['content']}" for m in conversation)
        text += " <|assistant|>" if add_generation_prompt else ""
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text


class MistralTokenizer(_Tokenizer):
    """vllm/tokenizers/mistral.py: no chat_template attribute; apply_chat_template returns ids
    with BOS and [INST] tags."""

    def __init__(self):
        super().__init__("mistral")
        del self.chat_template

    def apply_chat_template(self, conversation, tools=None, **kwargs):
        kwargs.pop("add_generation_prompt", False)
        system = [m["content"] for m in conversation if m["role"] == "system"]
        users = [m["content"] for m in conversation if m["role"] == "user"]
        text = "[INST] " + " ".join(system + users) + " [/INST]"
        return [1] + self(text, add_special_tokens=False)["input_ids"]


class _ModelConfig:
    def __init__(self, max_model_len: int):
        self.max_model_len = max_model_len


class _EngineCore:
    def __init__(self, llm: LLM):
        self.llm = llm

    def shutdown(self, timeout: float | None = None) -> None:
        self.llm._release_all()


class _LLMEngine:
    def __init__(self, llm: LLM, max_model_len: int):
        self.model_config = _ModelConfig(max_model_len)
        self.engine_core = _EngineCore(llm)


class LLM:
    def __init__(self, model: str, *, tokenizer: str | None = None, tokenizer_mode: str = "auto",
                 trust_remote_code: bool = False, tensor_parallel_size: int = 1,
                 dtype: str = "auto", seed: int = 0, gpu_memory_utilization: float = 0.92,
                 enforce_eager: bool = False, kv_cache_memory_bytes: int | None = None,
                 max_model_len: int | None = None, enable_lora: bool = False,
                 max_loras: int = 1, max_lora_rank: int = 16, enable_sleep_mode: bool = False,
                 sleep_mode_offload_cudagraph: bool = False, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument "
                            f"'{next(iter(kwargs))}'")
        machine = _sim.MACHINE
        card = _sim.model_card(model)
        self.model, self.kwargs = model, {
            "tokenizer_mode": tokenizer_mode, "enable_lora": enable_lora, "dtype": dtype,
            "sleep_mode_offload_cudagraph": sleep_mode_offload_cudagraph}
        self.seed = seed
        self.enable_lora, self.enable_sleep_mode = enable_lora, enable_sleep_mode
        self.offload_cudagraph = sleep_mode_offload_cudagraph and enable_sleep_mode \
            and not enforce_eager
        self.template = card.get("template", "plain")
        if self.template == "mistral" and tokenizer_mode == "hf":
            self.template = "plain"  # the HF tokenizer with its chat template
        self.dead = False
        self.asleep = 0
        self.weights_valid = True
        self.held: dict[int, dict[str, int]] = {}  # gpu -> tag -> bytes mapped
        self.parked: dict[int, dict[str, int]] = {}  # gpu -> tag -> bytes unmapped by sleep
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # inherited by the engine core
        self.gpus = self._physical(visible, tensor_parallel_size)
        self.sleep_calls: list[int] = []
        if machine.cuda:
            self._allocate(card, gpu_memory_utilization, enforce_eager, kv_cache_memory_bytes,
                           tensor_parallel_size)
        limit = max_model_len or int(card.get("max_model_len", 4096))
        self.llm_engine = _LLMEngine(self, limit)
        machine.engines.append(self)

    # -- memory -------------------------------------------------------------------------------

    @staticmethod
    def _physical(visible: str | None, tp: int) -> list[int]:
        machine = _sim.MACHINE
        ids = ([int(v) if v.isdigit() else int(v.rsplit("-", 1)[1]) for v in visible.split(",")]
               if visible is not None else list(range(len(machine.gpus) or tp)))
        if machine.cuda and tp > len(ids):
            raise ValueError(f"World size ({tp}) is larger than the number of available GPUs "
                             f"({len(ids)}) in this node.")
        return ids[:tp]

    def _allocate(self, card, utilization, eager, kv_bytes, tp) -> None:
        machine = _sim.MACHINE
        weights = int(float(card.get("weights_gib", 1.0)) * _sim.GiB / tp)
        graphs = 0 if eager else int(float(card.get("cudagraph_gib", 0.5)) * _sim.GiB)
        for index in self.gpus:
            gpu = machine.gpus[index]
            gpu.used += machine.context
            self.held[index] = {"context": machine.context}
            requested = _sim.required(gpu.total, utilization)
            if gpu.free + machine.context < requested:
                self._release_all()
                raise ValueError(
                    f"Free memory on device cuda:{index} ({gpu.free / _sim.GiB:.2f}/"
                    f"{gpu.total / _sim.GiB:.2f} GiB) on startup is less than desired GPU "
                    f"memory utilization ({utilization}, {requested / _sim.GiB:.2f} GiB). "
                    "Decrease GPU memory utilization or reduce GPU memory used by other "
                    "processes.")
            kv = kv_bytes if kv_bytes else requested - machine.context - weights - graphs
            if kv <= 0:
                self._release_all()
                raise ValueError("No available memory for the cache blocks. Try increasing "
                                 "`gpu_memory_utilization` when initializing the engine.")
            for tag, size in (("weights", weights), ("cudagraph", graphs), ("kv_cache", kv)):
                gpu.used += size
                self.held[index][tag] = size

    def _release_all(self) -> None:
        for index, tags in self.held.items():
            _sim.MACHINE.gpus[index].used -= sum(tags.values())
        self.held, self.parked = {}, {}

    def _check(self) -> None:
        if self.dead:
            raise EngineDeadError()

    def _die(self, message: str) -> None:
        self.dead = True
        self._release_all()
        raise RuntimeError(message)

    # -- the API ------------------------------------------------------------------------------

    def get_tokenizer(self):
        return MistralTokenizer() if self.template == "mistral" else _Tokenizer(self.template)

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        self._check()
        if not self.enable_sleep_mode:
            raise ValueError("Sleep mode is not enabled. Start the engine with "
                             "enable_sleep_mode=True.")
        tags = ("weights", "kv_cache") + (("cudagraph",) if self.offload_cudagraph else ())
        for index, held in self.held.items():
            parked = self.parked.setdefault(index, {})
            for tag in tags:
                size = held.pop(tag, 0)
                parked[tag] = parked.get(tag, 0) + size
                _sim.MACHINE.gpus[index].used -= size
        self.asleep = level
        self.sleep_calls.append(level)
        if level == 2:
            self.weights_valid = False

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self._check()
        wanted = set(tags or ("weights", "kv_cache")) | {"cudagraph"}
        for index, parked in self.parked.items():
            gpu = _sim.MACHINE.gpus[index]
            for tag in [t for t in parked if t in wanted]:
                size = parked[tag]
                if size > gpu.free:
                    self._die(f"CUDA Error: out of memory at cumem_allocator.cpp (mapping "
                              f"{size / _sim.GiB:.2f} GiB of {tag} on cuda:{index})")
                gpu.used += size
                self.held[index][tag] = self.held[index].get(tag, 0) + size
                del parked[tag]
        if all(not p for p in self.parked.values()):
            self.asleep = 0
        return not self.asleep

    def collective_rpc(self, method, timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list:
        self._check()
        if method == "reload_weights":
            if any("weights" in p for p in self.parked.values()):
                raise RuntimeError("reload_weights before wake_up(tags=['weights'])")
            self.weights_valid = True
        return [None] * max(1, len(self.gpus))

    def reset_prefix_cache(self, reset_running_requests: bool = False,
                           reset_connector: bool = False) -> bool:
        self._check()
        return True

    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams]
                 | None = None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None) -> list[RequestOutput]:
        self._check()
        if self.asleep:
            raise RuntimeError("the engine is sleeping; wake_up() first")
        failure = _sim.MACHINE.take_failure(self.model)
        if failure == "dead":
            self.dead = True
            self._release_all()
            raise EngineDeadError()
        if failure == "oom":
            self._die("CUDA out of memory. Tried to allocate 2.00 GiB")
        prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        params = (list(sampling_params) if isinstance(sampling_params, (list, tuple))
                  else [sampling_params or SamplingParams()] * len(prompts))
        loras = (list(lora_request) if isinstance(lora_request, (list, tuple))
                 else [lora_request] * len(prompts))
        limit = self.llm_engine.model_config.max_model_len
        for prompt in prompts:  # vllm/v1/engine/input_processor.py `_validate_prompt_len`
            n = len(prompt["prompt_token_ids"])
            if n >= limit:
                raise ValueError(f"The decoder prompt (length {n}) is longer than the maximum "
                                 f"model length of {limit}.")
        if any(loras) and not self.enable_lora:
            raise ValueError("LoRA is not enabled; start the engine with enable_lora=True")
        return [self._one(i, p["prompt_token_ids"], sp, lora, limit)
                for i, (p, sp, lora) in enumerate(zip(prompts, params, loras))]

    def _one(self, i, ids, params: SamplingParams, lora, limit) -> RequestOutput:
        key = f"{self.model}|{lora.lora_path if lora else ''}|{ids}|{self.weights_valid}"
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            key += f"|{seed}|{params.temperature}"
        rng = random.Random(hashlib.sha256(key.encode()).hexdigest())
        natural = rng.randint(3, 12)  # where this answer would emit EOS
        cap = min(params.max_tokens or limit, limit - len(ids))
        out = [rng.randint(3, 31999) for _ in range(min(natural, cap))]
        reason = "stop" if natural <= cap else "length"
        text = " ".join(f"w{t}" for t in out)
        return RequestOutput(str(i), list(ids), [CompletionOutput(0, text, out, reason)])
