"""The run report: report.md with plots in DIR/report/, from a run folder's results.jsonl and
summary.json (and sweep.json when there). matplotlib is imported only when drawing."""

from .rundir import RunDir, read_run_dir
from .writer import write_report

__all__ = ["RunDir", "read_run_dir", "write_report"]
