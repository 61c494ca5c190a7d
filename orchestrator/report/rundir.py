"""Reading a run folder: results.jsonl and summary.json as written by `orchestrate run`
(orchestrator/outputs.py), plus sweep.json when `orchestrate sweep` wrote one there."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..evaluation import NO_DOMAIN
from ..safeio import iter_lines, json_loads, read_text

# a JSON escape of a UTF-16 surrogate: json.loads turns a lone one into a str that no font, PNG
# or UTF-8 file can hold
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SUMMARY_KEYS = ("n", "accuracy", "k", "mean_k", "router", "aggregator", "pool", "experts")


@dataclass(frozen=True)
class RunDir:
    path: Path
    summary: dict[str, Any]
    records: tuple[dict[str, Any], ...]
    sweep: dict[str, Any] | None

    @property
    def evaluation(self) -> dict[str, Any] | None:
        return self.summary.get("evaluation") or None

    @property
    def experts(self) -> list[str]:
        """Expert ids in pool order (the order of summary.json's per-expert table)."""
        return list(self.summary["experts"])

    def domain_counts(self) -> Counter:
        return Counter(r.get("domain") or NO_DOMAIN for r in self.records)


def read_run_dir(path: str | Path) -> RunDir:
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"Run folder '{folder}' does not exist; give the --out folder of "
                        "`orchestrate run` (it holds results.jsonl and summary.json).")
    summary = displayable(_read_json(folder / "summary.json"))
    if not isinstance(summary, dict):
        raise UserError(f"{folder / 'summary.json'} is not a JSON object; rerun `orchestrate run`.")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise UserError(f"{folder / 'summary.json'} lacks {', '.join(missing)}; it was not "
                        "written by `orchestrate run` (or by an older version): rerun it.")
    return RunDir(folder, summary, _read_records(folder / "results.jsonl"), _read_sweep(folder, summary))


def _read_sweep(folder: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """DIR/sweep.json, or for a k folder of `orchestrate sweep` (DIR/k{K}/, whose summary
    carries "sweep") the sweep.json one level up."""
    path = folder / "sweep.json"
    if not path.is_file() and "sweep" in summary:
        path = folder.parent / "sweep.json"
    if not path.is_file() or _older(path, folder / "summary.json"):
        return None
    sweep = _read_json(path)
    if not (isinstance(sweep, dict) and isinstance(sweep.get("rows"), list)):
        raise UserError(f"{path} has no 'rows' list; rerun `orchestrate sweep`.")
    return sweep


def displayable(value: Any) -> Any:
    """The same record with each lone surrogate spelled as its escape (`\\ud800`), so that the
    report can draw and write every label; everything else is unchanged."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [displayable(v) for v in value]
    if isinstance(value, dict):
        return {displayable(k): displayable(v) for k, v in value.items()}
    return value


def _older(path: Path, than: Path) -> bool:
    """A sweep.json written before this run's summary.json belongs to an earlier command run in
    the same folder: the report leaves it out rather than mix two experiments."""
    try:
        return path.stat().st_mtime_ns < than.stat().st_mtime_ns
    except OSError:
        return False


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path} is missing; a run folder holds results.jsonl and summary.json "
                        "from `orchestrate run --out DIR`.")
    try:
        return json.loads(read_text(path, "Run file"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{path} is not valid JSON ({getattr(exc, 'msg', 'nested too deeply')}); "
                        "rerun the command that wrote it.") from None


def _read_records(path: Path) -> tuple[dict[str, Any], ...]:
    if not path.is_file():
        raise UserError(f"{path} is missing; a run folder holds results.jsonl and summary.json "
                        "from `orchestrate run --out DIR`.")
    records = []
    for number, line in iter_lines(path, "Results file"):
        if not line.strip():
            continue
        row = json_loads(line, f"{path}, line {number}")
        if _SURROGATE_ESCAPE.search(line):
            row = displayable(row)
        if not isinstance(row, dict) or "experts" not in row:
            raise UserError(f"{path}, line {number}: not a result record (no 'experts' field).")
        records.append(row)
    return tuple(records)
