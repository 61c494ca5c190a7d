"""A backend that answers from recorded answers of real LLMs (replay files).

Each line of a replay file is one question with the answer every recorded model gave:

    {"id": ..., "question": ..., "gold": ..., "options": [...]?,
     "models": {"<model>": {"answer": "C" | "18" | null, "correct": bool}, ...}}

Options:
  recordings: path or [paths]   JSONL replay files; relative paths are tried against the working
                                directory, then the pool manifest's folder
  model: name                   the key in each line's `models` map (default: the expert's `model`)

A request is looked up by question id, else by its normalised text (whitespace and case folded;
options written inline after the question are ignored). The reply states the recorded answer so
that the normal extraction path reads it back; a recorded `null` becomes a reply with no answer.
A question with no recording fails alone. Parsed files are shared by all experts in a process.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import field_validator

from ..errors import BenchmarkFormatError, ConfigError, ModelNotFoundError
from ..safeio import iter_lines, json_loads
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .base import BackendOptions, BaseBackend, apply_stop, failed

NO_ANSWER = "I could not reach a final answer."
_OPTIONS_ARE = re.compile(r"\s*\b(?:the\s+)?options\s+are\s*:?\s*\(A\)\s.*$", re.I | re.S)
_INLINE_OPTIONS = re.compile(r"\s*\(A\)\s.*\(B\)\s.*$", re.S)
_SPACE = re.compile(r"\s+")
_LETTER = re.compile(r"^[A-J]$")


class ReplayOptions(BackendOptions):
    recordings: list[str]
    model: str | None = None

    @field_validator("recordings", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and not value:
            raise ValueError("give at least one replay file")
        return value


def normalize_question(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def question_keys(text: str) -> list[str]:
    """Normalised lookup keys of a question: as written, then without options written inline
    ('Which ...? The options are: (A) x (B) y' -> 'which ...?')."""
    keys = [normalize_question(text)]
    for pattern in (_OPTIONS_ARE, _INLINE_OPTIONS):
        stripped = normalize_question(pattern.sub("", text))
        if stripped and stripped not in keys:
            keys.append(stripped)
    return keys


def answer_text(answer: object) -> str:
    """The reply that states a recorded answer in the form extract.py reads back."""
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return NO_ANSWER
    value = str(answer).strip()
    if _LETTER.match(value):
        return f"The answer is ({value})."
    if "\n" in value:
        return f"The answer is:\n{value}"
    return f"The answer is {value}"


@dataclass
class Recording:
    """One parsed replay file."""

    path: Path
    models: tuple[str, ...]
    answers: dict[str, list[object]] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)
    by_text: dict[str, int] = field(default_factory=dict)

    def find(self, query_id: str, question: str) -> int | None:
        row = self.by_id.get(query_id)
        if row is None and question:
            for key in question_keys(question):
                row = self.by_text.get(key)
                if row is not None:
                    break
        return row


def parse_recording(path: Path) -> Recording:
    models: list[str] | None = None
    answers: dict[str, list[object]] = {}
    by_id: dict[str, int] = {}
    by_text: dict[str, int] = {}
    row = 0
    with contextlib.closing(iter_lines(path, "Replay file", BenchmarkFormatError)) as lines:
        for lineno, line in lines:
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            item = json_loads(line, where, BenchmarkFormatError)
            recorded = item.get("models") if isinstance(item, dict) else None
            if not isinstance(recorded, dict) or "question" not in item:
                raise BenchmarkFormatError(
                    f"{where}: a replay line needs 'question' and a 'models' map "
                    "({model: {answer, correct}})."
                )
            if models is None:
                models = list(recorded)
                answers = {m: [] for m in models}
            for model in models:
                entry = recorded.get(model)
                answers[model].append(entry.get("answer") if isinstance(entry, dict) else None)
            for model in recorded.keys() - answers.keys():
                # A model absent from earlier lines has no answer there.
                answers[model] = [None] * row + [recorded[model].get("answer")]
                models.append(model)
            if "id" in item:
                by_id.setdefault(str(item["id"]), row)
            by_text.setdefault(normalize_question(str(item["question"])), row)
            row += 1
    if models is None:
        raise BenchmarkFormatError(f"{path}: the replay file is empty.")
    return Recording(path, tuple(models), answers, by_id, by_text)


_CACHE: dict[tuple[str, int, int], Recording] = {}
_CACHE_LOCK = threading.Lock()


def load_recording(path: Path) -> Recording:
    """Parse once per process; reparsed when the file changes."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = parse_recording(path)
        return _CACHE[key]


def first_line_models(path: Path) -> list[str]:
    with contextlib.closing(iter_lines(path, "Replay file", BenchmarkFormatError)) as lines:
        for lineno, line in lines:
            if line.strip():
                item = json_loads(line, f"{path}: line {lineno}", BenchmarkFormatError)
                recorded = item.get("models") if isinstance(item, dict) else None
                return list(recorded) if isinstance(recorded, dict) else []
    return []


class ReplayBackend(BaseBackend):
    name = "replay"
    Options = ReplayOptions
    answers_by_id = True  # two questions with one text may have different recordings

    def _paths(self, expert: ExpertSpec, opts: ReplayOptions) -> list[Path]:
        paths = []
        for raw in opts.recordings:
            path = Path(raw).expanduser()
            if not path.is_absolute() and not path.exists() and self.context.base_dir is not None:
                path = self.context.base_dir / path
            if not path.is_file():
                raise ModelNotFoundError(
                    f"Expert '{expert.id}': replay file '{raw}' not found (tried the working "
                    f"directory and {self.context.base_dir or 'nothing else'}). Fix "
                    "options.recordings in the pool manifest."
                )
            paths.append(path)
        return paths

    def _model(self, expert: ExpertSpec, opts: ReplayOptions) -> str:
        model = opts.model or expert.model
        if not model:
            raise ConfigError(
                f"Expert '{expert.id}' (backend replay) names no recorded model; set `model:` "
                "(or options.model) to a key of the replay file's `models` map."
            )
        return model

    def _missing_model(self, expert: ExpertSpec, model: str, path: Path, available) -> ConfigError:
        close = difflib.get_close_matches(model, list(available), n=1)
        guess = f" Did you mean '{close[0]}'?" if close else ""
        return ConfigError(
            f"Expert '{expert.id}': model '{model}' is not recorded in {path}. "
            f"Recorded models: {', '.join(sorted(available))}.{guess}"
        )

    def check(self, expert: ExpertSpec, probe: bool = False) -> str:
        opts = self.options(expert)
        model = self._model(expert, opts)
        paths = self._paths(expert, opts)
        for path in paths:
            available = first_line_models(path)
            if model not in available:
                raise self._missing_model(expert, model, path, available)
        return f"{model} @ {', '.join(p.name for p in paths)}"

    def load(self, expert: ExpertSpec) -> None:
        opts = self.options(expert)
        model = self._model(expert, opts)
        paths = self._paths(expert, opts)
        self._recording(expert, model, paths[0])  # later files are parsed when first needed
        self._loaded[expert.id] = (expert, model, paths)

    def _recording(self, expert: ExpertSpec, model: str, path: Path) -> Recording:
        recording = load_recording(path)
        if model not in recording.answers:
            raise self._missing_model(expert, model, path, recording.models)
        return recording

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for request in requests:
            expert, model, paths = self.loaded(request.expert)
            for path in paths:
                recording = self._recording(expert, model, path)
                row = recording.find(request.query_id, request.question)
                if row is not None:
                    text = answer_text(recording.answers[model][row])
                    text, _ = apply_stop(text, request.sampling.stop)
                    results.append(GenerationResult(request, text, finish_reason="stop"))
                    break
            else:
                files = ", ".join(p.name for p in paths)
                results.append(failed(
                    request,
                    f"no recorded answer of '{model}' for question '{request.query_id}' in {files} "
                    "(looked up by id and by question text)",
                ))
        return results
