"""DIR/report.html: the run viewer, one self-contained file beside results.jsonl (written by
`orchestrate run` and redrawn by `orchestrate report`); opens from the file system."""

from __future__ import annotations

from pathlib import Path

from ..errors import ReportError, UserError
from ..outputs import atomic_write_text
from .html_data import run_payload
from .html_page import render_page
from .rundir import RunDir, read_run_dir

PAGE = "report.html"


def run_page(run: RunDir) -> str:
    payload = run_payload(run)
    return render_page(payload["title"], payload, ["svg.js", "run.js"])


def read_run(folder: str | Path) -> RunDir:
    """read_run_dir, with a file that is not UTF-8 reported as a UserError."""
    try:
        return read_run_dir(folder)
    except UnicodeDecodeError as exc:
        raise UserError(f"a file in run folder '{folder}' is not UTF-8 text ({exc.reason} at byte "
                        f"{exc.start}); results.jsonl and summary.json are written as UTF-8 by "
                        "`orchestrate run`: rerun it.") from None


def write_html(run: RunDir | str | Path, out: str | Path | None = None) -> Path:
    """Write DIR/report.html (or `out`) atomically; returns its path."""
    run = run if isinstance(run, RunDir) else read_run(run)
    path = Path(out) if out else run.path / PAGE
    try:
        atomic_write_text(path, run_page(run))
    except OSError as exc:
        raise ReportError(f"could not write {path}: {exc}") from exc
    return path
