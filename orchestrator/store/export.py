"""Export: the stored generations of a pool over a benchmark as a replay recordings file (the
format backends/replay.py reads), plus a replay pool manifest, so any real pool becomes a replay
pool for offline routing research.

A line per question, the pool's expert ids as the recorded model names:

    {"id", "question", "gold", "options"?, "domain"?,
     "models": {"<expert id>": {"answer": "C" | "18" | null, "correct": bool | null}}}

Keys are computed exactly as a run computes them (the orchestrator's own prompts and sampling),
so only generations a run over this benchmark with this pool and preset made are found.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreError, UserError
from ..types import Query
from .db import GenerationStore
from .executor import key_maker


@dataclass(frozen=True)
class Export:
    lines: list[dict[str, Any]]
    experts: tuple[str, ...]
    questions: int           # in the benchmark
    stored: int              # (question, expert) generations found
    skipped: int             # questions left out (a generation missing, or none at all)


def collect(store: GenerationStore, orch, queries: Sequence[Query],
            experts: Sequence[str] | None = None, partial: bool = False) -> Export:
    """The recordings of `experts` (default: the whole pool) over `queries`. A question lacking
    one expert's generation is left out, unless `partial` (then that model is absent from its
    line, which the replay backend reads as no answer)."""
    from ..benchmarks.extract import extract_answer, is_correct

    experts = tuple(experts or orch.specs)
    for expert in experts:
        if expert not in orch.specs:
            raise UserError(f"Expert '{expert}' is not in pool '{orch.pool.name}'; its experts "
                            f"are: {', '.join(orch.specs)}.")
    requests = [orch.generation.request(e, q, i * len(experts) + j)
                for i, q in enumerate(queries) for j, e in enumerate(experts)]
    keys = key_maker(orch.residency, store).keys(requests)
    found = store.lookup(keys, reuse_unseeded=True)
    lines, stored, skipped = [], 0, 0
    for i, query in enumerate(queries):
        models = {}
        for j, expert in enumerate(experts):
            hit = found.get(keys[i * len(experts) + j])
            if hit is None:
                continue
            answer = hit.answer if hit.answer is not None else extract_answer(
                hit.text, query.answer_type, query.options)
            models[expert] = {"answer": answer,
                              "correct": is_correct(answer, query.gold, query.answer_type)}
        stored += len(models)
        if not models or (len(models) < len(experts) and not partial):
            skipped += 1
            continue
        line: dict[str, Any] = {"id": query.id, "question": query.question, "gold": query.gold}
        if query.options:
            line["options"] = list(query.options)
        if query.domain:
            line["domain"] = query.domain
        line["models"] = models
        lines.append(line)
    return Export(lines, experts, len(queries), stored, skipped)


def recordings_text(lines: Sequence[dict[str, Any]]) -> str:
    # ensure_ascii: any text (lone surrogates included) is written as valid JSON
    return "".join(json.dumps(line, ensure_ascii=True) + "\n" for line in lines)


def replay_manifest(name: str, experts: Sequence[str], recordings: Path, manifest: Path,
                    description: str) -> dict[str, Any]:
    """A pool manifest whose experts replay `recordings` (a path relative to the manifest)."""
    rel = os.path.relpath(recordings.resolve(), manifest.resolve().parent)
    return {
        "name": name, "description": description, "resident_limit": len(experts),
        "experts": [{"id": e, "backend": "replay", "model": e, "options": {"recordings": [rel]}}
                    for e in experts],
    }


def write_outputs(export: Export, out: Path, pool_out: Path | None, pool_name: str,
                  bench: Path) -> None:
    """The recordings file and, if asked, the manifest; each written to a temporary file in
    its folder, then renamed."""
    import yaml

    from ..outputs import atomic_write_text

    if not export.lines:
        raise StoreError(
            f"Nothing to export: none of the {export.questions} questions of {bench} has a "
            f"stored generation of every expert ({', '.join(export.experts)}) of pool "
            f"'{pool_name}'. Run the pool over {bench} first (same preset), choose experts with "
            "--experts, or pass --partial.")
    targets = [(out, recordings_text(export.lines))]
    if pool_out is not None:
        manifest = replay_manifest(
            f"replay-{pool_name}", export.experts, out, pool_out,
            f"Stored generations of pool {pool_name} over {bench.name}, replayed.")
        targets.append((pool_out, yaml.safe_dump(manifest, sort_keys=False)))
    for path, text in targets:
        try:
            atomic_write_text(path, text)
        except OSError as err:
            raise UserError(f"Cannot write {path}: {err.strerror or err}. Choose another "
                            "path.") from None
