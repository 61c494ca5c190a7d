"""The skill profile: how well each expert does on each skill, measured on validation data.

Stored as `NAME.json` (readable: per expert per skill count, correct, the paper's +1/-1 score,
the shrunken success estimate and its standard error; global accuracy and strength) plus
`NAME.npz` beside it (the arrays: skill and validation-question embeddings in float16, per-
question correctness as uint8), so a 10k-question profile stays a few MB.

Shrinkage (empirical Bayes, Beta prior centred on the expert's global accuracy g_e with weight
m): estimate[e, s] = (correct[e, s] + m * g_e) / (count[e, s] + m).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, UnknownNameError
from ..safeio import json_loads, read_text

PROFILE_KIND = "orchestrator-skill-profile"
PROFILE_VERSION = 2  # 2: per-question answer codes (vote-aware routing)


@dataclass
class Profile:
    pool: str
    annotator: dict[str, Any]
    experts: list[str]
    skills: list[str]
    counts: np.ndarray  # [E, S] questions of skill s answered by expert e
    correct: np.ndarray  # [E, S] of those, answered correctly
    n: np.ndarray  # [E] validation questions answered
    n_correct: np.ndarray  # [E]
    skill_emb: np.ndarray  # [S, d] unit rows
    val_ids: list[str]
    val_emb: np.ndarray  # [N, d] unit rows
    val_correct: np.ndarray  # [N, E] bool
    val_skills: list[tuple[int, ...]]  # per validation question, indices into `skills`
    val_answers: np.ndarray | None = None  # [N, E] int16: 0 none, 1 the gold, 2+ other answers
    prior_strength: float = 10.0
    meta: dict[str, Any] = field(default_factory=dict)
    val_options: np.ndarray | None = None  # [N] options per question (0: none); older: absent

    # -- derived numbers (cheap, computed on demand) ---------------------------------------

    @property
    def accuracy(self) -> np.ndarray:  # [E]
        return self.n_correct / np.maximum(self.n, 1)

    @property
    def scores(self) -> np.ndarray:  # [E, S], Symbolic-MoE: +1 per right, -1 per wrong answer
        return 2 * self.correct - self.counts

    @property
    def strength(self) -> np.ndarray:  # [E], the paper's global competence: sum of all scores
        return self.scores.sum(axis=1)

    @property
    def estimate(self) -> np.ndarray:  # [E, S]
        m = self.prior_strength
        return (self.correct + m * self.accuracy[:, None]) / (self.counts + m)

    @property
    def stderr(self) -> np.ndarray:  # [E, S], posterior standard deviation of the estimate
        est, m = self.estimate, self.prior_strength
        return np.sqrt(est * (1 - est) / (self.counts + m + 1))

    def expert_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.experts)}

    def restrict(self, experts: Sequence[str]) -> Profile:
        """The same profile over a subset of its experts (in the given order)."""
        idx = [self.expert_index()[e] for e in experts]
        return Profile(
            self.pool, self.annotator, list(experts), self.skills, self.counts[idx],
            self.correct[idx], self.n[idx], self.n_correct[idx], self.skill_emb, self.val_ids,
            self.val_emb, self.val_correct[:, idx], self.val_skills,
            None if self.val_answers is None else self.val_answers[:, idx], self.prior_strength,
            self.meta, self.val_options,
        )

    # -- storage ---------------------------------------------------------------------------

    def to_json(self, arrays_name: str) -> dict[str, Any]:
        est, err = self.estimate, self.stderr
        experts = {}
        for i, e in enumerate(self.experts):
            skills = {
                s: {"count": int(self.counts[i, j]), "correct": int(self.correct[i, j]),
                    "score": int(self.scores[i, j]), "estimate": round(float(est[i, j]), 4),
                    "stderr": round(float(err[i, j]), 4)}
                for j, s in enumerate(self.skills) if self.counts[i, j]
            }
            experts[e] = {"n": int(self.n[i]), "correct": int(self.n_correct[i]),
                          "accuracy": round(float(self.accuracy[i]), 4),
                          "strength": int(self.strength[i]), "skills": skills}
        return {
            "kind": PROFILE_KIND, "version": PROFILE_VERSION, "pool": self.pool,
            "annotator": self.annotator, "prior_strength": self.prior_strength,
            "n_questions": len(self.val_ids), "skills": self.skills, "experts": experts,
            "arrays": arrays_name, "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """NAME.json and NAME.npz, both written to temporary files first and renamed only when
        both are complete: a failure leaves neither half of a profile behind."""
        import os
        import tempfile

        from ..outputs import atomic_write_text

        path = Path(path)
        arrays = path.with_suffix(".npz")
        for target in (path, arrays):
            if target.is_dir():
                raise ConfigError(f"Profile output '{target}' is a folder; give the path of a "
                                  "file such as runs/profile.json.")
        indptr = np.cumsum([0] + [len(s) for s in self.val_skills]).astype(np.int64)
        indices = np.fromiter((j for s in self.val_skills for j in s), dtype=np.int32)
        arrays.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{arrays.name}.", suffix=".tmp.npz",
                                        dir=arrays.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            np.savez_compressed(
                tmp, experts=np.array(self.experts), skills=np.array(self.skills),
                counts=self.counts.astype(np.int32), correct=self.correct.astype(np.int32),
                n=self.n.astype(np.int32), n_correct=self.n_correct.astype(np.int32),
                skill_emb=self.skill_emb.astype(np.float16), val_ids=np.array(self.val_ids),
                val_emb=self.val_emb.astype(np.float16),
                val_correct=self.val_correct.astype(np.uint8),
                val_skill_indptr=indptr, val_skill_indices=indices,
                **({} if self.val_answers is None
                   else {"val_answers": self.val_answers.astype(np.int16)}),
                **({} if self.val_options is None
                   else {"val_options": self.val_options.astype(np.int16)}),
            )
            tmp.replace(arrays)
            atomic_write_text(path, json.dumps(self.to_json(arrays.name), indent=1) + "\n")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, pool_experts: Sequence[str] | None = None) -> Profile:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Profile '{path}' does not exist. Build one with "
                              "`orchestrate profile --pool POOL --data FILE --out PROFILE.json`.")
        doc = json_loads(read_text(path, "Profile", ConfigError), f"Profile '{path}'", ConfigError)
        if not isinstance(doc, dict) or doc.get("kind") != PROFILE_KIND:
            raise ConfigError(f"'{path}' is not a skill profile (no kind '{PROFILE_KIND}').")
        if doc.get("version") != PROFILE_VERSION:
            raise ConfigError(
                f"Profile '{path}' has version {doc.get('version')}; this orchestrator reads "
                f"version {PROFILE_VERSION}. Rebuild it with `orchestrate profile`."
            )
        arrays = path.parent / str(doc.get("arrays", ""))
        if not arrays.is_file():
            raise ConfigError(f"Profile '{path}' needs its arrays file '{arrays}', which is missing.")
        try:
            with np.load(arrays) as z:
                a = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ConfigError(f"Profile arrays '{arrays}' cannot be read ({type(err).__name__}: "
                              f"{err}); rebuild the profile with `orchestrate profile`.") from None
        missing = [k for k in ("experts", "skills", "counts", "correct", "n", "n_correct",
                               "skill_emb", "val_ids", "val_emb", "val_correct",
                               "val_skill_indptr", "val_skill_indices") if k not in a]
        if missing:
            raise ConfigError(f"Profile arrays '{arrays}' lack {', '.join(missing)}; rebuild the "
                              "profile with `orchestrate profile`.")
        experts = [str(e) for e in a["experts"]]
        if pool_experts is not None:
            unknown = [e for e in experts if e not in pool_experts]
            if unknown:
                raise UnknownNameError(
                    "expert", unknown[0], pool_experts,
                    f" Profile '{path}' scores experts that the pool does not have "
                    f"({', '.join(unknown[:5])}); build the profile with this pool.",
                )
        indptr, indices = a["val_skill_indptr"], a["val_skill_indices"]
        val_skills = [tuple(indices[indptr[i]:indptr[i + 1]].tolist()) for i in range(len(indptr) - 1)]
        return cls(
            pool=doc["pool"], annotator=doc.get("annotator", {}), experts=experts,
            skills=[str(s) for s in a["skills"]], counts=a["counts"], correct=a["correct"],
            n=a["n"], n_correct=a["n_correct"], skill_emb=a["skill_emb"].astype(np.float32),
            val_ids=[str(i) for i in a["val_ids"]], val_emb=a["val_emb"].astype(np.float32),
            val_correct=a["val_correct"].astype(bool), val_skills=val_skills,
            val_answers=a["val_answers"].astype(np.int16) if "val_answers" in a else None,
            prior_strength=float(doc.get("prior_strength", 10.0)), meta=doc.get("meta", {}),
            val_options=a["val_options"].astype(np.int16) if "val_options" in a else None,
        )
