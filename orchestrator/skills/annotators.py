"""Skill annotators: `annotate(queries) -> list[tuple[str, ...]]`, one tuple of skills per query,
in order, batched.

- `embedding`: the nearest entries of a skill vocabulary to the question (cosine, top-m above a
  threshold).
- `field`: a category field of the benchmark file (Composition-of-Experts style routing and
  ablations only).
- `llm`: Symbolic-MoE's recipe: an annotator expert is asked for 2-5 skill keywords, n samples
  at temperature 0.7; a keyword is kept if it has at most 20 characters and appears in at least
  2 samples. Runs through the executor like any other generation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError
from ..types import GenerationRequest, Message, Query, Sampling
from .vocabulary import Vocabulary, normalize_skill


@runtime_checkable
class Annotator(Protocol):
    name: ClassVar[str]

    def annotate(self, queries: Sequence[Query]) -> list[tuple[str, ...]]: ...


class EmbeddingAnnotator:
    name = "embedding"

    def __init__(self, vocabulary: Vocabulary, embedder, top_m: int = 3, threshold: float = 0.15):
        self.vocabulary, self.embedder = vocabulary, embedder
        self.top_m, self.threshold = top_m, threshold
        self._vocab_emb: np.ndarray | None = None

    @property
    def vocab_emb(self) -> np.ndarray:
        if self._vocab_emb is None:
            self._vocab_emb = self.embedder.encode(list(self.vocabulary.skills))
        return self._vocab_emb

    def annotate(self, queries: Sequence[Query]) -> list[tuple[str, ...]]:
        if not queries:
            return []
        sims = self.embedder.encode([q.question for q in queries]) @ self.vocab_emb.T  # [n, S]
        m = min(self.top_m, sims.shape[1])
        top = np.argsort(-sims, axis=1)[:, :m]
        out = []
        for row, idx in zip(sims, top):
            keep = [self.vocabulary.skills[j] for j in idx if row[j] >= self.threshold]
            out.append(tuple(keep or [self.vocabulary.skills[idx[0]]]))  # never skill-less
        return out


class FieldAnnotator:
    name = "field"

    def __init__(self, field: str = "domain"):
        self.field = field

    def annotate(self, queries: Sequence[Query]) -> list[tuple[str, ...]]:
        out = []
        for q in queries:
            value = q.domain if self.field == "domain" else q.meta.get(self.field)
            if value is None:
                raise ConfigError(
                    f"The field annotator reads '{self.field}', but question '{q.id}' has none. "
                    "Use --annotator embedding, or a benchmark file with that field."
                )
            out.append((normalize_skill(str(value)),))
        return out


KEYWORD_PROMPT = (
    "You are given a question. Identify the key skills or areas of knowledge needed to answer "
    "it. Reply with 2 to 5 short keywords (each at most 3 words), separated by commas, and "
    "nothing else.\n\nQuestion: {question}\n\nKeywords:"
)


def parse_keywords(text: str) -> list[str]:
    text = re.sub(r"(?i)^\s*keywords?\s*:", "", text.strip())
    parts = re.split(r"[,\n;]|\s(?=\d+[.)]\s)", text)
    parts = [re.sub(r"^\s*(?:\d+[.)]|[-*\u2022])\s+", "", p) for p in parts]  # "2. x", "- x"
    return [k for k in (normalize_skill(p) for p in parts) if k]


class LLMAnnotator:
    name = "llm"

    def __init__(self, generation, expert_id: str, samples: int = 5, temperature: float = 0.7,
                 max_chars: int = 20, min_count: int = 2, max_tokens: int = 48, seed: int = 0):
        # generation: the pool's grouped generation (`orchestrator.generation.Generation`)
        self.generation, self.expert_id = generation, expert_id
        self.samples, self.temperature = samples, temperature
        self.max_chars, self.min_count = max_chars, min_count
        self.max_tokens, self.seed = max_tokens, seed
        self._memo: dict[str, tuple[str, ...]] = {}

    def requests(self, queries: Sequence[Query]) -> list[GenerationRequest]:
        reqs = []
        for s in range(self.samples):  # one seed per sample round: one batch per round
            sampling = Sampling(self.max_tokens, self.temperature, 1.0, self.seed + s)
            for q in queries:
                msg = Message("user", KEYWORD_PROMPT.format(question=q.question))
                reqs.append(GenerationRequest(self.expert_id, (msg,), sampling, q.id, len(reqs),
                                              q.question))
        return reqs

    def filter(self, samples: Sequence[Sequence[str]]) -> tuple[str, ...]:
        """Keep keywords of at most `max_chars` that appear in at least `min_count` samples."""
        counts = Counter(k for sample in samples for k in dict.fromkeys(sample))  # ties: first seen
        return tuple(k for k, c in counts.most_common()
                     if c >= self.min_count and len(k) <= self.max_chars)

    def annotate(self, queries: Sequence[Query]) -> list[tuple[str, ...]]:
        """Skills per query; a question already annotated in this process is not asked again
        (profiling then routing the same questions costs one annotation)."""
        todo = list({q.question: q for q in queries if q.question not in self._memo}.values())
        if todo:
            results, _ = self.generation.execute(self.requests(todo))
            per_question: dict[str, list[list[str]]] = {q.question: [] for q in todo}
            by_id = {q.id: q.question for q in todo}
            for res in results:
                if res.error is None:
                    per_question[by_id[res.request.query_id]].append(parse_keywords(res.text))
            for question, samples in per_question.items():
                self._memo[question] = self.filter(samples)
        return [self._memo[q.question] for q in queries]
