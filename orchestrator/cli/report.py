"""`orchestrate report`: (re)draw DIR/report.md and its plots from a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import err, handle_errors, out


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A run folder (the --out of `orchestrate run`).")],
) -> None:
    """Write DIR/report.md with plots in DIR/report/ and the viewer DIR/report.html from
    DIR/results.jsonl and DIR/summary.json (plus accuracy vs k when DIR/sweep.json exists);
    prints report.md's path."""
    from ..outlock import claim_output
    from ..report import write_report

    if not run_dir.is_dir():
        write_report(run_dir)  # raises: the folder does not exist
    with claim_output(run_dir, flag="DIR"):  # not while a run writes into it
        path = write_report(run_dir)
    out.print(str(path), markup=False, soft_wrap=True)


def report_after_run(run_dir: Path) -> Path | None:
    """`orchestrate run`'s report: the path, or None after a one-line warning; the run's
    results are already written, so a failed plot never fails the run."""
    from ..errors import OrchestratorError
    from ..report import write_report

    try:
        return write_report(run_dir)
    except OrchestratorError as exc:
        err.print(f"warning: no report.md ({exc}); results.jsonl and summary.json are complete.",
                  markup=False, soft_wrap=True)
        return None
