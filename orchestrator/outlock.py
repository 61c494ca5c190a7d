"""Claiming an output location before any work: checked, created and locked.

`claim_output(path)` (a run folder) or `claim_output(path, file=True)` (a file such as a profile)
is a context manager entered before any model loads. It raises OutputError (exit 2, one line)
when the location is a file, lies under a file, cannot be created or written, or is held by
another live run. While held, `DIR/.orchestrator.lock` (for a file: `.NAME.lock` beside it)
names the holder (pid, host, start, command). The lock is an advisory `fcntl.flock`, which the
kernel drops when its process dies, so a lock file left by a killed run never blocks the next
one; where flock is unavailable, a lock whose pid is no longer alive on this host is taken over.
On leaving with an exception, folders the claim created are removed again if nothing was
written into them.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputError
from .procs import pid_alive

LOCK_NAME = ".orchestrator.lock"

try:
    import fcntl
except ImportError:  # not POSIX: the pid-liveness check alone
    fcntl = None  # type: ignore[assignment]


def _describe(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    return "not a regular file (a device, pipe or socket)"


def check_location(path: Path, *, file: bool = False, flag: str = "--out",
                   companions: Sequence[Path] = ()) -> list[Path]:
    """Create the folder (or the file's folder) and prove it writable; returns the folders
    created, outermost first. Nothing else is written. `companions`: files written beside a
    file output (a profile's .npz), which must not be folders either."""
    path = Path(path)
    folder = path.parent if file else path
    for target in (path, *companions) if file else ():
        if target.exists() and not target.is_file():
            raise OutputError(f"{flag} '{path}': '{target}' is {_describe(target)}; give the "
                              "path of a file to write, such as runs/profile.json.")
    if not file and path.exists() and not path.is_dir():
        raise OutputError(f"{flag} '{path}' is {_describe(path)}; give a folder (it is created "
                          "if missing).")
    missing = []
    probe = folder
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail with a confusing error
            raise OutputError(f"{flag} '{path}': '{probe}' is a broken symbolic link.")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{flag} '{path}': '{probe}' is {_describe(probe)}, so no folder can "
                          "be created under it; choose another location.")
    created = []
    try:
        for item in reversed(missing):
            item.mkdir()
            created.append(item)
        fd, tmp = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        _remove_empty(created)
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = "it is not writable" + (" (read-only file system)"
                                             if exc.errno == errno.EROFS else "")
        raise OutputError(f"{flag} '{path}' cannot be written: {reason}; choose a writable "
                          "location.") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return  # something was written into it (or above): keep it


class OutputLock:
    """An exclusive advisory lock on one lock file; `holder` describes the current owner."""

    def __init__(self, lock_path: Path, target: Path, flag: str = "--out"):
        self.path, self.target, self.flag = Path(lock_path), Path(target), flag
        self._fd: int | None = None

    def acquire(self) -> None:
        for _ in range(5):  # the holder may unlink the file between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    raise self._busy(read_holder(self.path))
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    continue  # we locked a file that was just removed: try the new one
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8", "backslashreplace"), 0)
            self._fd = fd
            return
        raise self._busy(read_holder(self.path))

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        holder = read_holder(self.path)  # no flock here: decide by the recorded pid
        return holder is None or not holder_alive(holder)

    def _busy(self, holder: dict[str, Any] | None) -> OutputError:
        who = "another run"
        if holder:
            who = (f"another run (pid {holder.get('pid')} on {holder.get('host')}, since "
                   f"{holder.get('started')})")
        return OutputError(f"{self.flag} '{self.target}' is in use by {who}; wait for it to "
                           f"finish or choose another {self.flag}.")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8", errors="replace") or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def holder_alive(holder: dict[str, Any]) -> bool:
    """False when the holder ran on this host and its pid is gone (a killed run)."""
    if holder.get("host") != socket.gethostname():
        return True  # another machine's run: we cannot tell, so respect it
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    return pid == os.getpid() or pid_alive(pid)


@contextmanager
def claim_output(path: str | Path, *, file: bool = False, flag: str = "--out",
                 companions: Sequence[str | Path] = ()):
    """Check, create and lock an output location for the duration of the block; yields the
    path. On an exception, folders created here are removed if they are still empty."""
    path = Path(path)
    created = check_location(path, file=file, flag=flag,
                             companions=[Path(c) for c in companions])
    lock_path = (path.parent / f".{path.name}.lock") if file else path / LOCK_NAME
    lock = OutputLock(lock_path, path, flag)
    try:
        lock.acquire()
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield path
    except BaseException:
        lock.release()
        _remove_empty(created)
        raise
    lock.release()
