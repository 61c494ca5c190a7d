"""Prompts for vLLM engines: token ids rendered with the model's chat template, and the
tokenizer choice that keeps that template for Mistral repositories.

vLLM's tokenizer_mode `auto` switches to its Mistral tokenizer (mistral_common) when the folder
holds `consolidated*.safetensors` and `tekken.json` or `tokenizer.model.v*`
(vllm/tokenizers/registry.py `resolve_tokenizer_args`, vllm/transformers_utils/repo_utils.py
`is_mistral_model_repo`). That tokenizer has no `chat_template` attribute: a renderer that looks
for one sends raw text without `[INST]` or BOS. So: where the folder also has the HF tokenizer
with a chat template, ask vLLM for `tokenizer_mode="hf"`; where it has none, render through the
Mistral tokenizer's own `apply_chat_template`, which returns ids with BOS and `[INST]`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .prompting import fold_system, render_prompt


def is_mistral_format(folder: Path) -> bool:
    """What makes vLLM pick its Mistral tokenizer under tokenizer_mode `auto`."""
    return any(folder.glob("consolidated*.safetensors")) and (
        (folder / "tekken.json").is_file() or any(folder.glob("tokenizer.model.v*")))


def has_hf_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


def tokenizer_mode(folder: Path | None, requested: str | None) -> str | None:
    """The tokenizer_mode to pass to vLLM; None leaves vLLM's default (`auto`)."""
    if requested is not None:
        return requested
    if folder is not None and is_mistral_format(folder) and has_hf_chat_template(folder):
        return "hf"
    return None


def render_ids(tokenizer, messages) -> list[int]:
    """Token ids generation continues from. An HF tokenizer renders its chat template (the same
    text as the transformers backend, prompting.render_prompt) and encodes it without adding
    special tokens again; vLLM's Mistral tokenizer renders and encodes in one step."""
    if not getattr(tokenizer, "chat_template", None) and _is_mistral_tokenizer(tokenizer):
        turns = [{"role": m.role, "content": m.content} for m in messages]
        try:
            ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        except Exception:
            if not any(t["role"] == "system" for t in turns):
                raise
            ids = tokenizer.apply_chat_template(fold_system(turns), add_generation_prompt=True,
                                                tokenize=True)
        return list(ids)
    text = render_prompt(tokenizer, messages)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _is_mistral_tokenizer(tokenizer) -> bool:
    return type(tokenizer).__name__ == "MistralTokenizer"  # vllm/tokenizers/mistral.py
