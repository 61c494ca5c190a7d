"""Benchmark readers: the Symbolic-MoE JSON format, GSM8K JSONL and a generic JSONL.

Every file is read and validated completely before any model is loaded; a malformed file gets an
error naming the file, the line (JSONL) or index (JSON) and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ..errors import BenchmarkFormatError
from ..safeio import iter_lines, json_loads, read_text
from ..types import AnswerType, Query

Format = Literal["auto", "symbolic-moe", "gsm8k", "jsonl"]
FORMATS: tuple[str, ...] = ("auto", "symbolic-moe", "gsm8k", "jsonl")

_INLINE_OPTION = re.compile(r"\(([A-J])\)\s")
_LETTER = re.compile(r"^[A-J]$")
_NUMBER = re.compile(r"^-?[\d,]*\.?\d+$")


def infer_answer_type(question: str, gold: str | None, options: tuple[str, ...]) -> AnswerType:
    if options:
        return "choice"
    if gold is not None and _LETTER.match(gold.strip()) and len(_INLINE_OPTION.findall(question)) >= 2:
        return "choice"
    if gold is not None and _NUMBER.match(gold.strip().replace("$", "")):
        return "numeric"
    if gold is None and len(_INLINE_OPTION.findall(question)) >= 2:
        return "choice"
    return "text"


def _fail(path: Path, where: str, message: str) -> BenchmarkFormatError:
    return BenchmarkFormatError(f"{path}: {where}: {message}")


def _require_str(path: Path, where: str, item: dict, field: str, *, allow_number=False) -> str:
    if field not in item:
        raise _fail(path, where, f"missing field '{field}'")
    value = item[field]
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"field '{field}' must be a non-empty string")
    return value


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in iter_lines(path, "Benchmark file", BenchmarkFormatError):
        if not line.strip():
            continue
        item = json_loads(line, f"{path}: line {lineno}", BenchmarkFormatError)
        if not isinstance(item, dict):
            raise _fail(path, f"line {lineno}", "each line must be a JSON object")
        yield lineno, item


def _make(qid, question, gold, options=(), domain=None, meta=None) -> Query:
    options = tuple(options)
    return Query(
        id=qid, question=question, gold=None if gold is None else str(gold).strip(),
        options=options, domain=domain,
        answer_type=infer_answer_type(question, gold, options), meta=meta or {},
    )


def read_symbolic_moe(path: Path) -> list[Query]:
    text = read_text(path, "Benchmark file", BenchmarkFormatError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, f"line {err.lineno}", f"not valid JSON ({err.msg})") from None
    except RecursionError:
        raise _fail(path, "top level", "JSON nested too deeply to read") from None
    if not isinstance(data, list):
        raise _fail(path, "top level", "expected a JSON list of {question, gold_answer} objects")
    queries = []
    for i, item in enumerate(data):
        where = f"index {i}"
        if not isinstance(item, dict):
            raise _fail(path, where, "each item must be a JSON object")
        question = _require_str(path, where, item, "question")
        gold = _require_str(path, where, item, "gold_answer", allow_number=True)
        category = item.get("category")
        queries.append(_make(f"{path.stem}-{i}", question, gold, domain=category))
    return queries


def gsm8k_final(answer: str) -> str | None:
    if "####" not in answer:
        return None
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def read_gsm8k(path: Path) -> list[Query]:
    queries = []
    for lineno, item in _iter_jsonl(path):
        where = f"line {lineno}"
        question = _require_str(path, where, item, "question")
        answer = _require_str(path, where, item, "answer")
        gold = gsm8k_final(answer)
        if not gold:
            raise _fail(path, where, "field 'answer' has no final value after '####'")
        # the worked solution stays in meta: `orchestrate lora train` learns from it
        queries.append(_make(f"{path.stem}-{lineno}", question, gold, domain="math",
                             meta={"solution": answer}))
    return queries


def read_jsonl(path: Path) -> list[Query]:
    queries = []
    for lineno, item in _iter_jsonl(path):
        where = f"line {lineno}"
        qid = _require_str(path, where, item, "id", allow_number=True)
        question = _require_str(path, where, item, "question")
        gold = item.get("gold")
        if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int, float))):
            raise _fail(path, where, "field 'gold' must be a string or a number")
        gold = None if gold is None else str(gold)
        options = item.get("options") or ()
        if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
            raise _fail(path, where, "field 'options' must be a list of strings")
        if len(options) > 10:
            raise _fail(path, where, f"field 'options' has {len(options)} entries; at most 10 (A-J)")
        domain = item.get("domain")
        meta = {k: item[k] for k in ("subject", "source", "symbolic_moe") if k in item}
        queries.append(_make(qid, question, gold, options, domain, meta))
    return queries


def detect_format(path: Path) -> str:
    head = ""
    for _, line in iter_lines(path, "Benchmark file", BenchmarkFormatError):
        head += line
        if head.strip():  # the first line that holds anything decides
            break
    head = head.lstrip()
    if not head:
        raise BenchmarkFormatError(f"{path}: the file is empty; it holds no questions.")
    if head.startswith("["):
        return "symbolic-moe"
    first = head.splitlines()[0]
    try:
        item = json.loads(first)
    except json.JSONDecodeError:
        raise _fail(path, "line 1", "not valid JSON; expected a JSON list or JSON lines") from None
    except RecursionError:
        raise _fail(path, "line 1", "JSON nested too deeply to read") from None
    if isinstance(item, dict) and "gold" not in item and "####" in str(item.get("answer", "")):
        return "gsm8k"
    return "jsonl"


_READERS = {"symbolic-moe": read_symbolic_moe, "gsm8k": read_gsm8k, "jsonl": read_jsonl}


def read_benchmark(path: str | Path, fmt: str = "auto", limit: int | None = None) -> list[Query]:
    """Read every question of a benchmark file (all validated), then keep the first `limit`."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"Benchmark file '{path}' does not exist.")
    if fmt not in FORMATS:
        raise BenchmarkFormatError(
            f"Unknown benchmark format '{fmt}'. Available: {', '.join(FORMATS)}."
        )
    if fmt == "auto":
        fmt = detect_format(path)
    queries = _READERS[fmt](path)
    if not queries:
        raise BenchmarkFormatError(f"{path}: the file holds no questions.")
    seen: set[str] = set()
    for q in queries:
        if q.id in seen:
            raise BenchmarkFormatError(f"{path}: id '{q.id}' appears twice; ids must be unique.")
        seen.add(q.id)
    if limit is not None:
        if limit < 1:
            raise BenchmarkFormatError(f"--limit must be at least 1 (got {limit}).")
        queries = queries[:limit]
    return queries
