"""A backend with queued or scripted answers, for tests and `--dry-run`.

Options (all optional):
  responses: [text, ...]      answered in order; afterwards `default` applies
  script: {substring: text}   the first substring found in the prompt picks the answer
  fail: [substring, ...]      a prompt containing one of these fails alone (per-item error)
  fail_load: true             load() raises, as a backend whose model is missing would
  default: text               the answer when nothing else applies; without it, a
                              deterministic pseudo answer derived from the prompt
  load_s / token_s            simulated seconds per load and per generated token
  batch_s                     simulated seconds per generate call, whatever its batch size
                              (a batched forward pass; benchmarks/server_load.py)
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from collections.abc import Sequence

from ..errors import BackendError
from ..types import ExpertSpec, GenerationRequest, GenerationResult
from .base import BackendOptions, BaseBackend, apply_stop, failed

HISTORY_LIMIT = 10_000


class FakeOptions(BackendOptions):
    responses: list[str] = []
    script: dict[str, str] = {}
    fail: list[str] = []
    fail_load: bool = False
    default: str | None = None
    load_s: float = 0.0
    token_s: float = 0.0
    batch_s: float = 0.0


def pseudo_answer(expert_id: str, prompt: str) -> str:
    """Stable across runs and processes (no Python hash randomisation)."""
    digest = int(hashlib.sha256(f"{expert_id}\0{prompt}".encode()).hexdigest(), 16)
    letters = sorted(set(re.findall(r"\(([A-J])\)", prompt)))
    if letters:
        return f"The answer is ({letters[digest % len(letters)]})."
    return f"The answer is {digest % 100}."


class FakeBackend(BaseBackend):
    name = "fake"
    Options = FakeOptions

    def __init__(self, context=None):
        super().__init__(context)
        # recent requests, for tests to inspect; bounded (2 x HISTORY_LIMIT at most) because
        # `serve --dry-run` runs the fake backend for as long as the server lives
        self.history: list[GenerationRequest] = []
        self.load_counts: dict[str, int] = {}
        self._queues: dict[str, deque[str]] = {}

    def enqueue(self, expert_id: str, texts: Sequence[str]) -> None:
        self._queues.setdefault(expert_id, deque()).extend(texts)

    def load(self, expert: ExpertSpec) -> None:
        opts = self.options(expert)
        if opts.fail_load:
            raise BackendError(f"Expert '{expert.id}': fake load failure (options.fail_load)")
        if opts.load_s:
            time.sleep(opts.load_s)
        if expert.id not in self.load_counts:
            self.enqueue(expert.id, opts.responses)
        self.load_counts[expert.id] = self.load_counts.get(expert.id, 0) + 1
        self._loaded[expert.id] = (expert, opts)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        batch_s = max((self.loaded(r.expert)[1].batch_s for r in requests), default=0.0)
        if batch_s:
            time.sleep(batch_s)
        results = []
        for request in requests:
            try:
                results.append(self._answer(request))
            except Exception as exc:  # one bad prompt fails alone, as the contract says
                results.append(failed(request, f"{type(exc).__name__}: {exc}"))
        return results

    def _answer(self, request: GenerationRequest) -> GenerationResult:
        expert, opts = self.loaded(request.expert)
        self.history.append(request)
        if len(self.history) > 2 * HISTORY_LIMIT:
            del self.history[:-HISTORY_LIMIT]
        prompt = "\n".join(m.content for m in request.messages)
        if any(s in prompt for s in opts.fail):
            return failed(request, f"scripted failure of expert '{expert.id}'")
        queue = self._queues.get(expert.id)
        if queue:
            text = queue.popleft()
        else:
            text = next((t for s, t in opts.script.items() if s in prompt), None)
            if text is None:
                text = opts.default or pseudo_answer(expert.id, prompt)
        text, stopped = apply_stop(text, request.sampling.stop)
        words = text.split()[: request.sampling.max_tokens]  # a word is a token here
        cut = len(words) < len(text.split())
        text = " ".join(words) if cut else text
        if opts.token_s:
            time.sleep(opts.token_s * len(words))
        return GenerationResult(
            request, text, tokens_in=len(prompt.split()), tokens_out=len(words),
            finish_reason="length" if cut and not stopped else "stop")
