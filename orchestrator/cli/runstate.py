"""What makes a run durable from the command line: the generation store it reads and writes
(`--store PATH`, the per-user default, `--no-store`), the run folder's `run.json` (the command's
options, the store, the state: running | interrupted | complete), and Ctrl-C: the first one
stops after the batches running now (everything finished is already in the store), says how
many of the planned generations are stored and how to resume, and exits 130; a second one
stops at once, and so does a first one while nothing is in the store for this run yet (a model
still loading, or no store: there is nothing to keep). An interrupted run writes no results.jsonl, so nothing looks complete."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..outputs import atomic_write_text

RUN_FILE = "run.json"
INTERRUPTED_EXIT = 130


@contextlib.contextmanager
def open_store(path: Path | None, disabled: bool):
    """The generation store a command uses (closed at the end): `path`, else the per-user
    default; None with --no-store. A store that cannot be opened is a one-line StoreError
    before any model loads."""
    if disabled:
        yield None
        return
    from ..store import GenerationStore, default_store_path

    with GenerationStore(path or default_store_path()) as store:
        yield store


def write_state(out_dir: Path, state: str, options: Mapping[str, Any], store, **extra: Any) -> None:
    """DIR/run.json: the command and its state, written atomically."""
    record = {"command": "run", "state": state, "options": _jsonable(options),
              "store": str(store.path) if store is not None else None,
              "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write_text(out_dir / RUN_FILE, json.dumps(record, indent=2, ensure_ascii=True) + "\n")


def read_options(run_dir: Path) -> dict[str, Any]:
    """The options a run folder was made with (`orchestrate run --resume DIR`)."""
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        options = record["options"]
        if record.get("command") != "run" or not isinstance(options, dict):
            raise ValueError
    except FileNotFoundError:
        raise UserError(f"'{run_dir}' holds no {RUN_FILE}: it is not the folder of an "
                        "`orchestrate run`; pass the --out folder of the run to resume.") from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"'{path}' is not a run record this version can read; run the "
                        "command again instead of --resume.") from None
    return options


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


class CtrlC:
    """The first SIGINT asks `orch` to stop after the running batches; the second raises
    KeyboardInterrupt. Only in the main thread (elsewhere Python delivers no signals)."""

    def __init__(self, orch):
        self.orch, self.fired = orch, False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.fired or not made_progress(self.orch):  # nothing finished yet: nothing to keep
            raise KeyboardInterrupt
        self.fired = True
        from .common import err

        err.print("\ninterrupted: stopping after the batches now running (Ctrl-C again to "
                  "stop at once)", markup=False)
        self.orch.interrupt()

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def made_progress(orch) -> bool:
    """Whether this run has anything in the store to resume from: a batch it committed, or
    answers it found there (without a store a stopped run keeps nothing)."""
    executor = orch.executor
    return bool(getattr(executor, "written", 0) or getattr(executor, "hits", 0))


@contextlib.contextmanager
def ctrl_c(orch) -> Iterator[CtrlC]:
    with CtrlC(orch) as guard:
        yield guard


def stored_of_planned(result, store) -> tuple[int, int]:
    """(generations stored, generations planned) of an interrupted run: every chosen expert of
    every question is planned (escalation may need fewer)."""
    planned = sum(len(a.selection.experts) for a in result.answers)
    done = sum(1 for a in result.answers for o in a.outputs if o.error is None)
    return (done if store is not None else 0), planned
