"""Hugging Face transformers backend: the embedded CPU default.

All prompts of a batch go through one `generate` call with left padding and the model's chat
template; bf16 on CPU by default; greedy, or sampled with a seed. torch and transformers are
imported when the first expert loads, not before.

LoRA experts: experts on the same base (same resolved model folder, dtype, device and loading
options), with or without an `adapter:`, share ONE loaded base model. Each adapter is attached
to it by name (`PeftModel.load_adapter(path, adapter_name=expert id)`); a batch selects its
expert's adapter with `set_adapter`, and a base expert runs inside `disable_adapter()`, so
switching experts never reloads weights. Releasing an expert deletes its adapter; the base is
freed when no expert uses it any more. `counts` records real loads for tests and reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import astuple, dataclass, field
from itertools import groupby
from pathlib import Path

from ..errors import BackendError
from ..extras import require_installed
from ..modelref import local_folder, resolve
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .base import BackendOptions, BaseBackend, apply_stop, failed, request_seed
from .prompting import render_prompt, warn_prompt_mismatch
from .transformers_checks import TransformersChecks

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


class TransformersOptions(BackendOptions):
    device: str = "cpu"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    max_context: int | None = None


@dataclass(frozen=True)
class BatchReport:
    expert: str
    size: int
    tokens_in: int
    tokens_out: int
    seconds: float


@dataclass
class LoadCounts:
    """Real work done: a base expert that shares a loaded base adds no `base` load."""

    base: int = 0
    adapter: int = 0
    base_released: int = 0
    adapter_released: int = 0


@dataclass(frozen=True)
class BaseKey:
    """What makes two experts' base models interchangeable (`max_context` is per expert)."""

    folder: str
    dtype: str
    device: str
    trust_remote_code: bool
    attn_implementation: str | None
    lora_moe: str | None = None  # a LoRA-MoE folder: its layers are injected into this copy
    smore: str | None = None  # an S'MoRE folder: likewise


@dataclass
class _Base:
    key: BaseKey
    model: object  # the PreTrainedModel, or a PeftModel around it while adapters are attached
    tokenizer: object
    users: set[str] = field(default_factory=set)  # expert ids on this base
    adapters: set[str] = field(default_factory=set)  # adapter names (= expert ids) attached


@dataclass
class _Loaded:
    spec: ExpertSpec
    base: _Base
    adapter: str | None
    max_context: int
    device: str

    @property
    def model(self):
        return self.base.model

    @property
    def tokenizer(self):
        return self.base.tokenizer


class TransformersBackend(TransformersChecks, BaseBackend):
    name = "transformers"
    supports_lora = True
    supports_lora_moe = True
    supports_smore = True  # S'MoRE adapters (`smore:`)
    Options = TransformersOptions

    def __init__(self, context=None):
        super().__init__(context)
        self.reports: list[BatchReport] = []
        self.counts = LoadCounts()
        self._bases: dict[BaseKey, _Base] = {}

    @property
    def bases(self) -> int:
        """Base models held in memory now."""
        return len(self._bases)

    def load(self, expert: ExpertSpec) -> None:
        if expert.id in self._loaded:
            return
        opts = self.options(expert)
        ref = resolve(expert.model, self.context.base_dir)
        adapter = self._adapter_path(expert) if expert.adapter else None  # before any loading
        moe = str(self._lora_moe_path(expert)) if expert.lora_moe else None
        smore = str(self._smore_path(expert)) if expert.smore else None
        key = BaseKey(local_folder(ref), expert.dtype or "bfloat16", opts.device,
                      opts.trust_remote_code, opts.attn_implementation, moe, smore)
        base = self._bases.get(key) or self._load_base(key, expert, local_only=ref.kind != "hub")
        if adapter is not None:
            try:
                self._attach(base, expert, adapter)
            except Exception:
                if not base.users:  # loaded for this expert only
                    self._drop_base(base)
                raise
        base.users.add(expert.id)
        max_context = opts.max_context or getattr(
            _plain(base.model).config, "max_position_embeddings", 2048)
        self._loaded[expert.id] = _Loaded(
            expert, base, expert.id if adapter else None, int(max_context), opts.device)

    def _load_base(self, key: BaseKey, expert: ExpertSpec, local_only: bool) -> _Base:
        require_installed(("torch", "transformers"), "the transformers backend")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(self.context.torch_threads())
        dtype = "auto" if key.dtype == "auto" else getattr(torch, _DTYPES[key.dtype])
        start = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                key.folder, trust_remote_code=key.trust_remote_code, local_files_only=local_only
            )
            kwargs = {"dtype": dtype, "trust_remote_code": key.trust_remote_code}
            if key.attn_implementation:
                kwargs["attn_implementation"] = key.attn_implementation
            model = AutoModelForCausalLM.from_pretrained(
                key.folder, local_files_only=local_only, **kwargs
            )
        except (OSError, ValueError) as err:
            raise BackendError(
                f"Expert '{expert.id}': loading model '{expert.model}' failed: {err}"
            ) from err
        model.to(key.device).eval()
        if key.lora_moe is not None:  # layers injected in place; generate is the model's own
            from ..adapters.lora_moe import LoraMoeModel

            warn_prompt_mismatch(expert, Path(key.lora_moe))
            model = LoraMoeModel.load(key.lora_moe, model).to(key.device).model.eval()
        if key.smore is not None:  # likewise: S'MoRE layers injected in place
            from ..adapters.smore import SmoreModel

            warn_prompt_mismatch(expert, Path(key.smore))
            model = SmoreModel.load(key.smore, model).to(key.device).model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.counts.base += 1
        log.info("loaded base model %s (%s, %s) in %.1fs for expert %s", expert.model, key.dtype,
                 key.device, time.perf_counter() - start, expert.id)
        base = _Base(key, model, tokenizer)
        self._bases[key] = base
        return base

    def _attach(self, base: _Base, expert: ExpertSpec, path: Path) -> None:
        from peft import PeftModel

        warn_prompt_mismatch(expert, path)
        start = time.perf_counter()
        try:
            if isinstance(base.model, PeftModel):
                base.model.load_adapter(str(path), adapter_name=expert.id)
            else:
                base.model = PeftModel.from_pretrained(base.model, str(path), adapter_name=expert.id)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise BackendError(
                f"Expert '{expert.id}': adapter '{expert.adapter}' does not fit model "
                f"'{expert.model}': {err}. Use an adapter trained on this base model."
            ) from err
        base.model.to(base.key.device).eval()
        base.adapters.add(expert.id)
        self.counts.adapter += 1
        log.info("attached LoRA adapter %s to %s as '%s' in %.2fs (no base reload)",
                 expert.adapter, expert.model, expert.id, time.perf_counter() - start)

    def release(self, expert_id: str) -> None:
        loaded = self._loaded.pop(expert_id, None)
        if loaded is None:
            return
        base = loaded.base
        base.users.discard(expert_id)
        if loaded.adapter is not None and loaded.adapter in base.adapters:
            self._detach(base, loaded.adapter)
        if not base.users:
            self._drop_base(base)

    def _detach(self, base: _Base, name: str) -> None:
        base.adapters.discard(name)
        if base.adapters:
            import warnings

            with warnings.catch_warnings():  # "Adapter X was active which is now deleted"
                warnings.simplefilter("ignore", UserWarning)
                base.model.delete_adapter(name)
        else:  # a PeftModel without adapters cannot run: back to the plain model
            base.model = base.model.unload()
        self.counts.adapter_released += 1
        log.debug("deleted adapter '%s'", name)

    def _drop_base(self, base: _Base) -> None:
        import gc

        if self._bases.pop(base.key, None) is not None:
            self.counts.base_released += 1
            log.debug("freed base model %s", base.key.folder)
        gc.collect()

    # -- generation -------------------------------------------------------------------------

    def _render(self, tokenizer, request: GenerationRequest) -> str:
        return render_prompt(tokenizer, request.messages)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out: dict[int, GenerationResult] = {}
        def key(i: int):
            return requests[i].expert, astuple(requests[i].sampling)

        for expert_id in {r.expert for r in requests}:
            self.loaded(expert_id)  # every expert is loaded, checked before any generation

        for (expert_id, _), group in groupby(sorted(range(len(requests)), key=key), key=key):
            idx = list(group)
            loaded = self.loaded(expert_id)
            for i, result in zip(idx, self._generate_same(loaded, [requests[i] for i in idx])):
                out[i] = result
        return [out[i] for i in range(len(requests))]

    def _generate_same(self, loaded: _Loaded, requests: list[GenerationRequest]):
        """Requests of one expert with one sampling setting -> one `generate` call."""
        tok = loaded.tokenizer
        max_new = requests[0].sampling.max_tokens
        texts = [self._render(tok, r) for r in requests]
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        results: list[GenerationResult | None] = [None] * len(requests)
        runnable = []
        for i, n in enumerate(lengths):
            if n + max_new > loaded.max_context:
                results[i] = failed(
                    requests[i],
                    f"This model's maximum context length is {loaded.max_context} tokens; the "
                    f"prompt has {n} tokens and max_tokens is {max_new}. Shorten the prompt or "
                    "lower max_tokens.",
                )
            else:
                runnable.append(i)
        if runnable:
            try:
                done = self._run_batch(loaded, [texts[i] for i in runnable], requests[0].sampling)
            except Exception as err:  # one bad item must not sink the batch: retry singly
                log.warning("batch of %d failed (%s); retrying items one by one", len(runnable), err)
                done = []
                for i in runnable:
                    try:
                        done.extend(self._run_batch(loaded, [texts[i]], requests[0].sampling))
                    except Exception as item_err:
                        done.append(item_err)
            for i, item in zip(runnable, done):
                if isinstance(item, Exception):
                    results[i] = failed(requests[i], f"generation failed: {item}")
                else:
                    text, n_in, n_out, finish = item
                    results[i] = GenerationResult(requests[i], text, n_in, n_out,
                                                  finish_reason=finish)
        return results

    def _run_batch(self, loaded: _Loaded, texts: list[str], sampling
                   ) -> list[tuple[str, int, int, str]]:
        """(text, prompt tokens, new tokens, finish reason) per prompt. Stop strings end
        generation early (transformers' `stop_strings`) and are cut from the text; "length"
        means max_tokens ran out before an end-of-sequence token or a stop string."""
        import torch

        tok = loaded.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(loaded.device) for k, v in enc.items()}
        kwargs = {"max_new_tokens": sampling.max_tokens, "pad_token_id": tok.pad_token_id}
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(request_seed(sampling.seed, loaded.spec.id))  # per expert
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=0)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        start = time.perf_counter()
        with torch.inference_mode(), _selected(loaded):
            out = loaded.model.generate(**enc, **kwargs)
        seconds = time.perf_counter() - start
        prompt_len = enc["input_ids"].shape[1]
        gen = out[:, prompt_len:]  # [batch, new_tokens], pad after eos
        stops = _stop_ids(tok, loaded.model)
        items = []
        for row, mask in zip(gen.tolist(), enc["attention_mask"]):
            ended = next((j + 1 for j, t in enumerate(row) if t in stops), None)
            n_out = ended or len(row)
            text, stopped = apply_stop(tok.decode(row[:n_out], skip_special_tokens=True),
                                       sampling.stop)
            cut = ended is None and not stopped and n_out >= sampling.max_tokens
            items.append((text.strip(), int(mask.sum()), n_out, "length" if cut else "stop"))
        report = BatchReport(
            loaded.spec.id, len(texts), sum(i[1] for i in items), sum(i[2] for i in items), seconds
        )
        self.reports.append(report)
        log.debug("%s", report)
        return items


def _selected(loaded: _Loaded):
    """Make `loaded`'s adapter the active one; a base expert on a base that carries adapters
    runs with all of them disabled."""
    model = loaded.model
    if loaded.adapter is not None:
        if model.active_adapter != loaded.adapter:
            model.set_adapter(loaded.adapter)
        return nullcontext()
    if loaded.base.adapters:
        return model.disable_adapter()
    return nullcontext()


def _plain(model):
    """The transformers model under a PeftModel (its config and generation config)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def _stop_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    eos = getattr(_plain(model).generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}
