"""Skill vocabularies (`skills/*.yaml`: a name and a list of short skill phrases) and the
nearest-neighbour mapping of free keywords onto a vocabulary (Symbolic-MoE section 3.1).

The default vocabulary ships inside the package (`orchestrator/data/skills/general.yaml`; the
repository's `skills/general.yaml` links to it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import read_yaml
from ..errors import ConfigError


@dataclass(frozen=True)
class Vocabulary:
    name: str
    skills: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.skills)


def normalize_skill(text: str) -> str:
    return " ".join(text.strip().strip(".,;:*-\"'`").lower().split())


def load_vocabulary(path: str | Path) -> Vocabulary:
    data = read_yaml(path, "Skill vocabulary")
    skills = data.get("skills")
    if not isinstance(skills, list) or not all(isinstance(s, str) and s.strip() for s in skills):
        raise ConfigError(f"Skill vocabulary '{path}' needs `skills:`, a list of non-empty strings.")
    unknown = set(data) - {"name", "skills", "description"}
    if unknown:
        raise ConfigError(f"Skill vocabulary '{path}' has unknown keys: {', '.join(sorted(unknown))}.")
    unique = tuple(dict.fromkeys(normalize_skill(s) for s in skills))
    return Vocabulary(str(data.get("name") or Path(path).stem), unique)


def nearest(keyword_emb: np.ndarray, vocab_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each keyword [n, d] the index of its nearest vocabulary entry [m, d] and the cosine."""
    if keyword_emb.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    sims = keyword_emb @ vocab_emb.T  # [n, m], rows are unit vectors
    best = sims.argmax(axis=1)
    return best, sims[np.arange(len(best)), best]


def map_keywords(keywords: Sequence[Sequence[str]], vocabulary: Sequence[str], embedder,
                 vocab_emb: np.ndarray | None = None) -> list[tuple[int, ...]]:
    """Map each query's keywords to vocabulary indices: exact matches first, the rest by nearest
    neighbour of their embeddings. Duplicates collapse; order of first appearance is kept."""
    index = {s: i for i, s in enumerate(vocabulary)}
    pending = sorted({normalize_skill(k) for ks in keywords for k in ks} - set(index))
    mapped: dict[str, int] = {}
    if pending:
        if vocab_emb is None:
            vocab_emb = embedder.encode(list(vocabulary))
        best, _ = nearest(embedder.encode(pending), vocab_emb)
        mapped = dict(zip(pending, best.tolist()))
    out = []
    for ks in keywords:
        ids = (index.get(normalize_skill(k), mapped.get(normalize_skill(k))) for k in ks)
        out.append(tuple(dict.fromkeys(i for i in ids if i is not None)))
    return out
