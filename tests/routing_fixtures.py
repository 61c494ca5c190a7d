"""A tiny replay world where the right routing is known: `mathy` is right on every math
question and wrong on history, `histy` the reverse, `meh` right on 2 of 4 math and 1 of 4
history questions. A bag-of-words embedder stands in for MiniLM in fast tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from orchestrator.core import Orchestrator
from orchestrator.types import Query

from .conftest import write_pool

WORDS = ["add", "sum", "number", "numbers", "multiply", "king", "war", "empire", "battle",
         "crown", "math", "history"]

MATH = ["Add the numbers 2 and 3; what is the sum?", "Multiply a number by 4: what number?",
        "What sum do the numbers 7 and 8 add to?", "Multiply the numbers 6 and 7."]
HISTORY = ["Which king won the war?", "When did the empire fall after the battle?",
           "Which war ended the empire?", "Who wore the crown after the king?"]
MEH_RIGHT = {"math-0", "math-1", "history-0"}


class BagOfWordsEmbedder:
    """Deterministic unit vectors over a fixed word list (plus one bias dimension)."""

    key = "bag-of-words-test"

    def encode(self, texts):
        out = np.zeros((len(texts), len(WORDS) + 1), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                if word in WORDS:
                    out[i, WORDS.index(word)] += 1.0
            out[i, -1] = 0.1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def rows() -> list[dict]:
    items = []
    for domain, questions in (("math", MATH), ("history", HISTORY)):
        for i, question in enumerate(questions):
            qid = f"{domain}-{i}"
            right = {"mathy": domain == "math", "histy": domain == "history",
                     "meh": qid in MEH_RIGHT}
            items.append({
                "id": qid, "question": question, "domain": domain, "gold": "7",
                "models": {m: {"answer": "7" if ok else "1", "correct": ok}
                           for m, ok in right.items()},
            })
    return items


def write_world(folder: Path) -> tuple[Path, Path]:
    """(replay file, pool manifest) of the tiny world."""
    data = folder / "world.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    pool = write_pool(folder / "world-pool.yaml", [
        {"id": m, "backend": "replay", "model": m, "options": {"recordings": data.name}}
        for m in ("mathy", "histy", "meh")], resident_limit=3, name="world")
    return data, pool


def queries() -> list[Query]:
    return [Query(r["id"], r["question"], r["gold"], domain=r["domain"], answer_type="numeric")
            for r in rows()]


def orchestrator(pool: Path, **overrides) -> Orchestrator:
    orch = Orchestrator.from_files(pool, **overrides)
    orch._embedder = BagOfWordsEmbedder()
    return orch
