"""The SDK's questions, validated before any work: `to_queries(items) -> list[Query]`.

`Orchestrator.run` / `evaluate` accept one question or an iterable of them; a question is a
string, a `Query`, or a mapping with the keys of ALLOWED_KEYS. Every item is checked before the
first one is routed, and a bad one raises InvalidQuestionError naming its position, what was
given and what is allowed: a bare string is one question (never its characters), an empty
question, `options="abc"` (a string, not a list), non-string options or an unknown `answer_type`
are refused rather than silently reinterpreted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, get_args

from .benchmarks.readers import infer_answer_type
from .errors import ConfigError, InvalidQuestionError
from .types import AnswerType, Query

ANSWER_TYPES: tuple[str, ...] = get_args(AnswerType)
ALLOWED_KEYS = ("id", "question", "gold", "options", "domain", "answer_type", "meta")
MAX_OPTIONS = 10  # letters A-J, as the extractors read them


def to_queries(items: Any) -> list[Query]:
    """Every item as a Query, in order; ids unique. One string, Query or mapping is one
    question."""
    if isinstance(items, (str, Query, Mapping)):
        items = [items]
    elif isinstance(items, (bytes, bytearray)):
        raise InvalidQuestionError("Questions were given as bytes; decode them to str first.")
    elif not isinstance(items, Iterable):
        raise InvalidQuestionError(
            f"Questions must be a string, a Query, a mapping or a list of them; got "
            f"{type(items).__name__}.")
    queries = [to_query(item, i) for i, item in enumerate(items)]
    if not queries:
        raise InvalidQuestionError("No questions were given; pass at least one.")
    seen: set[str] = set()
    for q in queries:
        if q.id in seen:
            raise InvalidQuestionError(f"Question id '{q.id}' appears twice in one batch; ids "
                                       "must be unique.")
        seen.add(q.id)
    return queries


def to_query(item: Any, index: int) -> Query:
    """One question (position `index` in its batch) as a validated Query."""
    if isinstance(item, Query):
        _check_query(item, f"Question {index} (id '{item.id}')")
        return item
    if isinstance(item, str):
        _check_text(item, f"Question {index}")
        return Query(id=f"q{index}", question=item,
                     answer_type=infer_answer_type(item, None, ()))
    if not isinstance(item, Mapping):
        raise InvalidQuestionError(
            f"Question {index} is a {type(item).__name__}; pass a string, a Query, or a "
            "mapping with a 'question' string.")
    where = f"Question {index}"
    unknown = [str(k) for k in item if k not in ALLOWED_KEYS]
    if unknown:
        raise InvalidQuestionError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown[:5]))}; allowed: "
            f"{', '.join(ALLOWED_KEYS)} (put anything else under 'meta').")
    if "question" not in item:
        raise InvalidQuestionError(f"{where} has no 'question'; a mapping needs a 'question' "
                                   "string.")
    question = item["question"]
    _check_text(question, where)
    qid = item.get("id", f"q{index}")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise InvalidQuestionError(f"{where}: 'id' must be a non-empty string or an integer; "
                                   f"got {_shown(qid)}.")
    where = f"Question {index} (id '{qid}')"
    gold = item.get("gold")
    if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int, float))):
        raise InvalidQuestionError(f"{where}: 'gold' must be a string or a number; got "
                                   f"{_shown(gold)}.")
    gold = None if gold is None else str(gold)
    options = _options(item.get("options"), where)
    domain = item.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise InvalidQuestionError(f"{where}: 'domain' must be a string; got {_shown(domain)}.")
    meta = item.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise InvalidQuestionError(f"{where}: 'meta' must be a mapping; got {_shown(meta)}.")
    answer_type = item.get("answer_type")
    if answer_type is None:
        answer_type = infer_answer_type(question, gold, options)
    _check_answer_type(answer_type, where)
    return Query(id=str(qid), question=question, gold=gold, options=options, domain=domain,
                 answer_type=answer_type, meta=meta)


def _check_query(q: Query, where: str) -> None:
    _check_text(q.question, where)
    if not isinstance(q.id, str) or not q.id.strip():
        raise InvalidQuestionError(f"{where}: Query.id must be a non-empty string.")
    _options(q.options, where)
    _check_answer_type(q.answer_type, where)


def _check_text(question: Any, where: str) -> None:
    if not isinstance(question, str):
        raise InvalidQuestionError(f"{where}: the question must be a string; got "
                                   f"{_shown(question)}.")
    if not question.strip():
        raise InvalidQuestionError(f"{where} is empty; every question needs text.")


def _options(options: Any, where: str) -> tuple[str, ...]:
    if options is None:
        return ()
    if isinstance(options, (str, bytes)):
        raise InvalidQuestionError(
            f"{where}: 'options' is one string ({_shown(options)}); give a list of option "
            "strings, such as ['Paris', 'Rome'].")
    if not isinstance(options, (list, tuple)):
        raise InvalidQuestionError(f"{where}: 'options' must be a list of strings; got "
                                   f"{_shown(options)}.")
    bad = next((o for o in options if not isinstance(o, str)), None)
    if bad is not None or any(isinstance(o, str) and not o.strip() for o in options):
        raise InvalidQuestionError(f"{where}: every option must be a non-empty string; got "
                                   f"{_shown(bad if bad is not None else '')}.")
    if len(options) > MAX_OPTIONS:
        raise InvalidQuestionError(f"{where}: {len(options)} options; at most {MAX_OPTIONS} "
                                   "(letters A-J).")
    return tuple(options)


def _check_answer_type(answer_type: Any, where: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise InvalidQuestionError(f"{where}: unknown answer_type {_shown(answer_type)}; "
                                   f"allowed: {', '.join(ANSWER_TYPES)}.")


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"


def check_configs(pool: Any, config: Any) -> None:
    """Orchestrator(pool, config) takes validated models; a path or a dict is a ConfigError
    that says how to build one (`Orchestrator.from_files`, `load_pool`, `model_validate`)."""
    from .config import PoolConfig, RunConfig

    if not isinstance(pool, PoolConfig):
        raise ConfigError(f"Orchestrator(pool=...) takes a PoolConfig; got {_shown(pool)}. Use "
                          "Orchestrator.from_files(POOL_YAML) or load_pool(POOL_YAML) for a file, "
                          "PoolConfig.model_validate(mapping) for a mapping.")
    if config is not None and not isinstance(config, RunConfig):
        raise ConfigError(f"Orchestrator(config=...) takes a RunConfig or None; got "
                          f"{_shown(config)}. Use load_config(PRESET_YAML) or "
                          "RunConfig.model_validate(mapping).")
