"""What a transformers expert's prompt looks like: the chat template rendering shared by
generation and LoRA training, and the check that an adapter gets the prompt it was trained
with."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..types import ExpertSpec

log = logging.getLogger(__name__)


def render_prompt(tokenizer, messages) -> str:
    """The text generation continues from: the chat template with the assistant turn opened, or
    the messages joined by blank lines for a model without a template. `lora train` renders its
    training prompts with this same function."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        except Exception:
            if not any(t["role"] == "system" for t in turns):
                raise
            # Templates without a system role (Gemma-2 raises "System role not supported"):
            # the system prompt goes in front of the first user turn, as their model cards do.
            return tokenizer.apply_chat_template(fold_system(turns), add_generation_prompt=True,
                                                 tokenize=False)
    return "\n\n".join(m["content"] for m in turns) + "\n\n"


def fold_system(turns: list[dict]) -> list[dict]:
    """[system, user, ...] -> [user("system\\n\\nuser"), ...]; other turns unchanged."""
    system = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
    rest = [dict(t) for t in turns if t["role"] != "system"]
    for turn in rest:
        if turn["role"] == "user":
            turn["content"] = f"{system}\n\n{turn['content']}" if system else turn["content"]
            return rest
    return [{"role": "user", "content": system}, *rest]


def warn_prompt_mismatch(expert: ExpertSpec, path: Path) -> None:
    """An adapter (or a LoRA-MoE gate) answers best with the system prompt it was trained with
    (training.json)."""
    record = path / "training.json"
    if not record.is_file():
        return
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        trained = data.get("system_prompt", data.get("config", {}).get("system_prompt"))
    except (OSError, ValueError, AttributeError):
        return
    if trained is not None and " ".join(trained.split()) != " ".join((expert.system_prompt or "").split()):
        log.warning("expert %s: adapter %s was trained with the system prompt %r, the pool gives "
                    "%r; copy the trained one into the pool for the best answers", expert.id,
                    expert.adapter or expert.lora_moe or expert.smore, trained, expert.system_prompt)
