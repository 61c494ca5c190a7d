"""write_report: DIR/report.md and its PNGs in DIR/report/, and the viewer DIR/report.html,
every file written atomically."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import ReportError
from ..extras import require_installed
from ..outputs import atomic_save_figure, atomic_write_text
from . import plots
from .html import read_run, write_html
from .markdown import render
from .rundir import RunDir

log = logging.getLogger(__name__)

IMAGE_DIR = "report"
# (file stem, alt text, drawing function) in display order
FIGURES: tuple[tuple[str, str, Callable], ...] = (
    ("accuracy_per_domain", "Accuracy per domain", plots.accuracy_per_domain),
    ("expert_usage", "Expert usage", plots.expert_usage_heatmap),
    ("accuracy_vs_k", "Accuracy and expert calls vs k", plots.accuracy_vs_k),
    ("expert_time", "Load and generate seconds per expert", plots.expert_time),
)


def write_report(run_dir: str | Path) -> Path:
    """Read DIR/results.jsonl and DIR/summary.json (and DIR/sweep.json if there), draw the
    plots into DIR/report/, write DIR/report.md and DIR/report.html; returns report.md's path.
    Raises UserError for a missing or invalid folder, ReportError if drawing fails."""
    run = read_run(run_dir)  # read_run_dir, a non-UTF-8 file as a one-line UserError
    require_installed(("matplotlib",), "the run report")
    images = []
    for stem, alt, draw in FIGURES:
        path = run.path / IMAGE_DIR / f"{stem}.png"
        if _draw(run, stem, draw, path):
            images.append((alt, f"{IMAGE_DIR}/{path.name}"))
        else:
            path.unlink(missing_ok=True)  # a plot of an earlier report that no longer applies
    report = run.path / "report.md"
    try:
        atomic_write_text(report, render(run, images))
    except OSError as exc:
        raise ReportError(f"could not write {report}: {exc}") from exc
    write_html(run)
    return report


def _draw(run: RunDir, stem: str, draw: Callable, path: Path) -> bool:
    try:
        fig = draw(run)
        if fig is None:
            return False
        save_png(fig, path)
    except Exception as exc:  # matplotlib raises many types; the run's results stay valid
        log.debug("drawing %s failed", stem, exc_info=True)
        detail = " ".join(str(exc).split())[:300]  # one line, whatever matplotlib says
        raise ReportError(f"could not draw {path}: {type(exc).__name__}: {detail}") from exc
    return True


def save_png(fig, path: Path) -> None:
    """A temporary file in the same folder, then a rename: never a half-written PNG."""
    atomic_save_figure(fig, path, dpi=plots.DPI, metadata={"Software": None})
