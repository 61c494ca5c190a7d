"""Supervised examples for LoRA training, from the same benchmark files `orchestrate run` reads.

Each example is (prompt messages, answer text): the messages are exactly what the executor sends
an expert (`benchmarks.prompts.messages_for` with the expert's system prompt), rendered by the
transformers backend's own chat-template code; the answer is short and in the form our
extractors read back: 'The answer is (X).' for multiple choice, and for GSM8K the worked
solution (calculator annotations removed) ending 'The answer is N.'. The loss covers the answer
tokens only (prompt tokens get label -100).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..benchmarks.prompts import messages_for
from ..benchmarks.readers import read_benchmark
from ..errors import BenchmarkFormatError, UserError
from ..types import Message, Query

IGNORE = -100  # label of tokens that carry no loss (torch cross_entropy's ignore_index)

_CALC = re.compile(r"<<[^>]*>>")  # GSM8K calculator annotations: "48/2 = <<48/2=24>>24"
_OPTIONS_AT = re.compile(r"\s*the options are:.*$", re.I | re.S)


@dataclass(frozen=True)
class Example:
    query_id: str
    messages: tuple[Message, ...]
    answer: str


def answer_text(query: Query) -> str:
    """The target reply for one query, in the format `benchmarks.extract` reads."""
    if query.gold is None:
        raise BenchmarkFormatError(
            f"Question '{query.id}' has no gold answer; training needs one per question."
        )
    if query.answer_type == "choice":
        return f"The answer is ({query.gold.strip().upper()})."
    solution = query.meta.get("solution") if query.meta else None
    if query.answer_type == "numeric" and solution:
        body = _CALC.sub("", solution.rsplit("####", 1)[0]).strip()
        body = "\n".join(line.strip() for line in body.splitlines() if line.strip())
        return f"{body}\nThe answer is {query.gold}." if body else f"The answer is {query.gold}."
    return f"The answer is {query.gold}."


def question_key(text: str) -> str:
    """A question's stem, normalised, for matching one item across file formats (options given
    inline after 'The options are:' or as a list)."""
    return re.sub(r"\s+", " ", _OPTIONS_AT.sub("", text)).strip().lower()


def load_examples(
    paths: str | Path | Sequence[str | Path], system_prompt: str | None, fmt: str = "auto",
    exclude: Sequence[str | Path] = (), limit: int | None = None,
) -> tuple[list[Example], int]:
    """Examples of one or more benchmark files, minus questions that also appear in `exclude`
    files (say the validation questions a pool is profiled on); `limit` keeps the first N.
    Returns (examples, number excluded)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise UserError("No training data given; pass --data FILE (repeatable).")
    queries = [q for path in paths for q in read_benchmark(path, fmt)]
    held_out = {question_key(q.question) for f in exclude for q in read_benchmark(f)}
    kept = [q for q in queries if question_key(q.question) not in held_out]
    n_excluded = len(queries) - len(kept)
    if limit is not None:
        kept = kept[:limit]
    if not kept:
        raise UserError(
            f"No training questions left in {', '.join(map(str, paths))} ({len(queries)} read, "
            f"{n_excluded} excluded). Give a file with questions that are not in "
            "the --exclude files."
        )
    examples = [Example(q.id, messages_for(q, system_prompt), answer_text(q)) for q in kept]
    return examples, n_excluded


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt, the token id on the answer


def tokenize(tokenizer, example: Example) -> Tokenized:
    """Prompt exactly as the backend renders it at inference (then generation continues from
    there), followed by the answer as the chat template closes an assistant turn."""
    from ..backends.prompting import render_prompt

    prompt = render_prompt(tokenizer, example.messages)
    reply = _reply_text(tokenizer, example, prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return Tokenized(prompt_ids + reply_ids, [IGNORE] * len(prompt_ids) + reply_ids)


def _reply_text(tokenizer, example: Example, prompt: str) -> str:
    """The answer plus the template's end-of-turn marker (so the model learns to stop)."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": m.role, "content": m.content} for m in example.messages]
        turns.append({"role": "assistant", "content": example.answer})
        full = tokenizer.apply_chat_template(turns, tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt):].rstrip("\n")
    return example.answer + (tokenizer.eos_token or "")
