"""Numbers the plots and tables share, derived from a run folder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..benchmarks.intervals import wilson
from ..evaluation import NO_DOMAIN
from .rundir import RunDir

OVERALL = "all"


def domain_accuracy(run: RunDir) -> dict[str, dict]:
    """{"all" then each domain (alphabetical): {n, routed[, best_single, oracle]}}, from the
    evaluation's per-domain map when the run has one, else the routed accuracy alone from
    results.jsonl. Empty when no question has a gold answer."""
    ev = run.evaluation or {}
    if ev.get("per_domain"):
        table = {OVERALL: {"n": ev["n"], "routed": ev["routed"],
                           "best_single": ev["best_single"]["accuracy"], "oracle": ev["oracle"]}}
        table |= {d: dict(row) for d, row in sorted(ev["per_domain"].items())}
    else:
        marks: dict[str, list[bool]] = {}
        for r in run.records:
            if r.get("correct") is not None:
                marks.setdefault(r.get("domain") or NO_DOMAIN, []).append(bool(r["correct"]))
        if not marks:
            return {}
        every = [m for ms in marks.values() for m in ms]
        table = {OVERALL: {"n": len(every), "routed": float(np.mean(every))}}
        table |= {d: {"n": len(ms), "routed": float(np.mean(ms))} for d, ms in sorted(marks.items())}
    for row in table.values():  # the 95% Wilson interval of every routed accuracy
        ci = wilson(round(row["routed"] * row["n"]), row["n"])
        row["routed_ci"] = [ci.low, ci.high]
    return table


@dataclass(frozen=True)
class Usage:
    """How many questions carrying each row label (a skill, or the domain when the run has no
    skills) were sent to each expert: counts[row, expert]."""

    kind: str  # "skill" or "domain"
    rows: list[str]
    row_n: list[int]  # questions per row label
    total_rows: int  # distinct labels before keeping the top ones
    experts: list[str]
    counts: np.ndarray  # [rows, experts] int


def expert_usage(run: RunDir, top: int = 20) -> Usage | None:
    has_skills = any(r.get("skills") for r in run.records)
    kind = "skill" if has_skills else "domain"

    def labels(r: dict) -> list[str]:
        return list(dict.fromkeys(r.get("skills") or [])) if has_skills else [
            r.get("domain") or NO_DOMAIN]

    freq = Counter(label for r in run.records for label in labels(r))
    if not freq or (kind == "domain" and set(freq) == {NO_DOMAIN}):
        return None
    rows = [label for label, _ in sorted(freq.items(), key=lambda x: (-x[1], x[0]))[:top]]
    # the whole pool when the evaluation lists it (never-chosen experts show as zeros)
    experts = list(run.summary.get("pool_experts") or [])
    experts += [e for e in (run.evaluation or {}).get("per_expert") or {} if e not in experts]
    experts += [e for e in run.experts if e not in experts]
    for r in run.records:
        experts += [e for e in dict.fromkeys(r["experts"]) if e not in experts]
    row_of = {label: i for i, label in enumerate(rows)}
    col_of = {e: j for j, e in enumerate(experts)}
    counts = np.zeros((len(rows), len(experts)), dtype=int)
    for r in run.records:
        chosen = [col_of[e] for e in dict.fromkeys(r["experts"])]  # a question counts once
        for label in labels(r):
            if label in row_of:
                counts[row_of[label], chosen] += 1
    return Usage(kind, rows, [freq[x] for x in rows], len(freq), experts, counts)
