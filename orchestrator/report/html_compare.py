"""The comparison page of `orchestrate view DIR1 DIR2 [...]`: runs on the same questions (by
id), each run's accuracy on them with Wilson's interval, every pair's accuracy difference with a
seeded paired-bootstrap interval, and the questions whose correctness differs between runs."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from ..benchmarks.intervals import paired_bootstrap, wilson
from ..errors import ReportError, UserError
from ..outputs import atomic_write_text
from .html import read_run
from .html_data import interval_dict, records_for_page
from .html_page import render_page
from .rundir import RunDir

RESAMPLES, SEED = 10_000, 0


def read_runs(dirs: Sequence[str | Path]) -> list[RunDir]:
    if len(dirs) < 2:
        raise UserError(f"comparing needs at least two run folders, got {len(dirs)}; give "
                        "`orchestrate view DIR1 DIR2 [...]`.")
    return [read_run(folder) for folder in dirs]


def labels(runs: Sequence[RunDir]) -> list[str]:
    """Folder names, or the paths as given when two folders share a name."""
    names = [run.path.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run.path) for run in runs]


def common_ids(runs: Sequence[RunDir], names: Sequence[str]) -> list[str]:
    """Ids every run answered with a gold answer, in the first run's order; refuses runs whose
    shared ids hold different questions (runs of different benchmarks)."""
    by_id = [{r.get("id"): r for r in run.records} for run in runs]
    ids = [i for i in by_id[0] if all(i in other for other in by_id[1:])]
    if not ids:
        raise UserError(f"no question id is in all of {', '.join(names)}; compare runs of the same "
                        "benchmark (the ids in results.jsonl must match).")
    for i in ids:
        texts = {str(table[i].get("question")) for table in by_id}
        if len(texts) > 1:
            raise UserError(f"question id '{i}' holds different questions in {', '.join(names)}; "
                            "these runs are of different benchmarks.")
    scored = [i for i in ids if all(table[i].get("correct") is not None for table in by_id)]
    if not scored:
        raise UserError(f"none of the {len(ids)} questions common to {', '.join(names)} has a "
                        "gold answer in every run, so correctness cannot be compared.")
    return scored


def compare_payload(runs: Sequence[RunDir]) -> dict[str, Any]:
    names = labels(runs)
    ids = common_ids(runs, names)
    tables = [{r["id"]: r for r in records_for_page(run)} for run in runs]
    marks = [[bool(t[i]["correct"]) for i in ids] for t in tables]
    pairs = []
    for a, b in combinations(range(len(runs)), 2):
        iv = paired_bootstrap(marks[b], marks[a], resamples=RESAMPLES, seed=SEED)
        pairs.append({"a": a, "b": b, **interval_dict(iv),
                      "b_only": sum(y and not x for x, y in zip(marks[a], marks[b])),
                      "a_only": sum(x and not y for x, y in zip(marks[a], marks[b]))})
    differ = [i for n, i in enumerate(ids) if len({m[n] for m in marks}) > 1]
    return {
        "kind": "compare",
        "title": f"{len(runs)} runs on {len(ids)} common questions: " + " vs ".join(names),
        "n_common": len(ids),
        "runs": [{"label": name, "path": str(run.path), "router": run.summary["router"],
                  "aggregator": run.summary["aggregator"], "k": run.summary["k"],
                  "pool": run.summary["pool"], "n": len(run.records),
                  **interval_dict(wilson(sum(m), len(m)), sum(m), len(m))}
                 for name, run, m in zip(names, runs, marks)],
        "pairs": pairs,
        "questions": [_question(i, [t[i] for t in tables]) for i in differ],
    }


def _question(qid: str, records: Sequence[dict]) -> dict[str, Any]:
    first = records[0]
    return {"id": qid, "domain": first.get("domain"), "question": first.get("question"),
            "gold": first.get("gold"), "options": first.get("options") or [],
            "runs": [{"final_answer": r.get("final_answer"), "correct": r.get("correct"),
                      "experts": r.get("experts") or [],
                      "outputs": [{key: o.get(key) for key in ("expert", "answer", "error", "right", "text")}
                                  for o in r.get("outputs") or []]}
                     for r in records]}


def write_compare(dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the comparison page to `out` atomically; returns its path."""
    payload = compare_payload(read_runs(dirs))
    path = Path(out)
    try:
        atomic_write_text(path, render_page(payload["title"], payload, ["compare.js"]))
    except OSError as exc:
        raise ReportError(f"could not write {path}: {exc}") from exc
    return path
