"""Hugging Face transformers backend: the embedded CPU default.

All prompts of a batch go through one `generate` call with left padding and the model's chat
template; bf16 on CPU by default; greedy, or sampled with a seed. torch and transformers are
imported when the first expert loads, not before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from itertools import groupby

from ..errors import BackendError, UserError
from ..modelref import describe, local_folder, resolve
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .base import BackendOptions, BaseBackend, failed

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
class _Loaded:
    spec: ExpertSpec
    model: object
    tokenizer: object
    max_context: int
    device: str


class TransformersBackend(BaseBackend):
    name = "transformers"
    supports_lora = True
    Options = TransformersOptions

    def __init__(self, context=None):
        super().__init__(context)
        self.reports: list[BatchReport] = []

    def check(self, expert: ExpertSpec) -> str:
        self.options(expert)
        return describe(resolve(expert.model, self.context.base_dir))

    def load(self, expert: ExpertSpec) -> None:
        opts = self.options(expert)
        ref = resolve(expert.model, self.context.base_dir)
        folder = local_folder(ref)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(self.context.torch_threads())
        dtype = expert.dtype or "bfloat16"
        dtype = "auto" if dtype == "auto" else getattr(torch, _DTYPES[dtype])
        local_only = ref.kind != "hub"
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=opts.trust_remote_code, local_files_only=local_only
            )
            kwargs = {"dtype": dtype, "trust_remote_code": opts.trust_remote_code}
            if opts.attn_implementation:
                kwargs["attn_implementation"] = opts.attn_implementation
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=local_only, **kwargs
            )
        except (OSError, ValueError) as err:
            raise BackendError(
                f"Expert '{expert.id}': loading model '{expert.model}' failed: {err}"
            ) from err
        if expert.adapter:
            model = self._attach_adapter(expert, model)
        model.to(opts.device).eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        max_context = opts.max_context or getattr(model.config, "max_position_embeddings", 2048)
        self._loaded[expert.id] = _Loaded(expert, model, tokenizer, int(max_context), opts.device)

    def _attach_adapter(self, expert: ExpertSpec, model):
        from pathlib import Path

        from peft import PeftModel

        path = Path(expert.adapter).expanduser()
        if not path.is_absolute() and self.context.base_dir is not None:
            path = self.context.base_dir / path
        if not (path / "adapter_config.json").is_file():
            raise UserError(
                f"Expert '{expert.id}': adapter '{expert.adapter}' is not a PEFT adapter folder "
                f"(no adapter_config.json at '{path}')."
            )
        return PeftModel.from_pretrained(model, str(path), adapter_name=expert.id)

    def release(self, expert_id: str) -> None:
        if self._loaded.pop(expert_id, None) is not None:
            import gc

            gc.collect()

    # -- generation -------------------------------------------------------------------------

    def _render(self, tokenizer, request: GenerationRequest) -> str:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out: dict[int, GenerationResult] = {}
        def key(i: int):
            return requests[i].expert, astuple(requests[i].sampling)

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
                    text, n_in, n_out = item
                    results[i] = GenerationResult(requests[i], text, n_in, n_out)
        return results

    def _run_batch(self, loaded: _Loaded, texts: list[str], sampling) -> list[tuple[str, int, int]]:
        import torch

        tok = loaded.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(loaded.device) for k, v in enc.items()}
        kwargs = {"max_new_tokens": sampling.max_tokens, "pad_token_id": tok.pad_token_id}
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(sampling.seed)
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=0)
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(**enc, **kwargs)
        seconds = time.perf_counter() - start
        prompt_len = enc["input_ids"].shape[1]
        gen = out[:, prompt_len:]  # [batch, new_tokens], pad after eos
        stops = _stop_ids(tok, loaded.model)
        items = []
        for row, mask in zip(gen.tolist(), enc["attention_mask"]):
            n_out = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
            text = tok.decode(row[:n_out], skip_special_tokens=True).strip()
            items.append((text, int(mask.sum()), n_out))
        report = BatchReport(
            loaded.spec.id, len(texts), sum(i[1] for i in items), sum(i[2] for i in items), seconds
        )
        self.reports.append(report)
        log.debug("%s", report)
        return items


def _stop_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}
