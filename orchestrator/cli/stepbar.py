"""A progress bar over training steps, with the latest losses, on stderr; without a bar (CI logs,
--no-progress), a line every tenth of the run."""

from __future__ import annotations

from .common import err


class StepBar:
    def __init__(self, enabled: bool, label: str = "training", fields: tuple[str, ...] = ("loss",)):
        self.enabled, self.label, self.fields = enabled, label, fields
        self._progress, self._task, self._total = None, None, 0

    def start(self, total: int) -> None:
        self._total = total
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        shown = " ".join(f"{f} {{task.fields[{f}]}}" for f in self.fields)
        self._progress = Progress(
            TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(shown), TimeElapsedColumn(), console=err,
        )
        self._task = self._progress.add_task(self.label, total=total,
                                             **{f: "-" for f in self.fields})
        self._progress.start()

    def step(self, step: int, *values: float) -> None:
        shown = {f: f"{v:.3f}" for f, v in zip(self.fields, values)}
        if self._progress is not None:
            self._progress.update(self._task, completed=step, **shown)
        elif step % max(1, self._total // 10) == 0 or step == self._total:
            err.print(f"step {step}/{self._total} " + " ".join(f"{f} {v}" for f, v in shown.items()),
                      markup=False)

    def log(self, line: str) -> None:
        (self._progress.console if self._progress is not None else err).print(line, markup=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
