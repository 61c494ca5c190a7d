"""Write-behind: batches committed by one background thread while the next batch generates.

At most `depth` finished batches wait uncommitted (the caller blocks beyond that), so a killed
process loses the batch in flight and at most `depth` finished ones; `flush()` waits for all of
them and re-raises the first StoreError the thread met. SQLite releases the GIL while it
writes, so the commit overlaps generation instead of adding to it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from ..errors import StoreError


class WriteBehind:
    def __init__(self, commit: Callable[[object], None], depth: int = 1):
        self._commit = commit
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._commit(item)
            except BaseException as err:  # surfaced by submit/flush in the caller's thread
                self._error = err
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, StoreError):
                raise err
            raise StoreError(f"Writing to the generation store failed: {err}") from err

    def submit(self, item: object) -> None:
        self._raise()
        self._queue.put(item)

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.join()
        self._queue.put(None)
        self._thread.join()
        self._raise()
