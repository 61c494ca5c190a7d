"""An asyncio micro-batcher: coalesce concurrent requests into one batched, synchronous model call.

Requests that arrive within `window_s` of the first waiting one are cut into one batch (or
sooner, once `max_batch` are waiting); the batch runs in a worker thread, so the event loop
keeps serving while models run. Up to `concurrency` batches run at once (default 1: one at a
time); a batch is cut only when a slot is free, so while all slots are busy the queue keeps
coalescing. With the grouped executor behind it (one lock per placement, workers/executor.py),
`concurrency > 1` means a batch that waits on a hung placement never holds up a later batch
for other placements. The queue is bounded (admission
control: vLLM `--max-num-queued-reqs`, TGI `--max-concurrent-requests`, Ollama
`OLLAMA_MAX_QUEUE`; see shared/reference/serving-behaviours.md 2c-2d).

`process_batch(items) -> results` keeps order: one result per item, an exception object for an
item that failed. A backend that wants to skip abandoned work declares a second parameter,
`process_batch(items, cancelled)`; `cancelled(i)` is True once the caller of `items[i]` stopped
waiting (disconnected, deadline passed, or failed by shutdown). It is safe to call from the
worker thread; the batcher passes it only when `process_batch` accepts two positional arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import BackendError, DeadlineExceededError, QueueFullError, ShuttingDownError

T = TypeVar("T")
R = TypeVar("R")

Cancelled = Callable[[int], bool]
ProcessBatch = Callable[..., Sequence[Any]]  # (items) or (items, cancelled) -> [R | BaseException]


@dataclass(eq=False)
class Pending(Generic[T, R]):
    """One waiting request; compared by identity so it can be removed from the queue."""

    item: T
    future: asyncio.Future[R]
    arrived: float  # time.monotonic() at submit
    abandoned: bool = False  # the caller stopped waiting; read by the worker


def _accepts_cancelled(fn: Callable[..., Any]) -> bool:
    try:
        inspect.signature(fn).bind(None, None)
    except (TypeError, ValueError):  # one parameter, or a signature inspect cannot read
        return False
    return True


class MicroBatcher(Generic[T, R]):
    """Batch concurrent `submit` calls into `process_batch` calls; see the module docstring."""

    def __init__(
        self,
        process_batch: ProcessBatch,
        *,
        window_s: float = 0.02,
        max_batch: int = 32,
        max_queue: int = 256,
        name: str = "orchestrator",
        concurrency: int = 1,
    ):
        if window_s < 0 or max_batch < 1 or max_queue < 1 or concurrency < 1:
            raise ValueError(
                f"MicroBatcher needs window_s >= 0, max_batch >= 1, max_queue >= 1 and "
                f"concurrency >= 1; got window_s={window_s}, max_batch={max_batch}, "
                f"max_queue={max_queue}, concurrency={concurrency}."
            )
        if inspect.iscoroutinefunction(process_batch):
            raise TypeError(
                f"MicroBatcher runs process_batch in a worker thread, so it must be a plain function; "
                f"got the coroutine function {getattr(process_batch, '__qualname__', process_batch)!r}."
            )
        self._process_batch = process_batch
        self._wants_cancelled = _accepts_cancelled(process_batch)
        self.window_s, self.max_batch, self.max_queue, self.name = window_s, max_batch, max_queue, name
        self.concurrency = concurrency

        self._queue: deque[Pending[T, R]] = deque()
        self._batches: list[list[Pending[T, R]]] = []  # the batches in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._changed = asyncio.Event()  # queue grew or shrank, or draining began
        self._idle = asyncio.Event()  # nothing queued and nothing in flight
        self._idle.set()
        self._accepting = True
        self._runner: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._recent_batch_s: deque[float] = deque(maxlen=32)

        # Metrics (plain counters for an exporter). Batch counts are taken when process_batch
        # returns or raises.
        self.batches = 0
        self.items_processed = 0
        self.rejections = 0  # QueueFullError
        self.cancellations = 0  # callers cancelled while queued or in flight
        self.deadline_exceeded = 0
        self.batch_sizes: Counter[int] = Counter()  # size -> number of batches
        self.batch_seconds_total = 0.0

    # -- metrics ------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return sum(len(b) for b in self._batches)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def mean_batch_s(self) -> float:
        """Mean duration of the last 32 batches (0.0 before the first)."""
        return sum(self._recent_batch_s) / len(self._recent_batch_s) if self._recent_batch_s else 0.0

    def retry_after_s(self) -> float:
        """Whole seconds until the queue is likely to have room: batches ahead x mean batch time."""
        batches_ahead = math.ceil(len(self._queue) / self.max_batch) + len(self._batches)
        per_batch = self.mean_batch_s or self.window_s
        return float(max(1, math.ceil(math.ceil(batches_ahead / self.concurrency) * per_batch)))

    # -- submit -------------------------------------------------------------------------------

    async def submit(self, item: T, deadline_s: float | None = None) -> R:
        """Queue `item` and return its result; `deadline_s` counts from now (None: no deadline).

        Raises the item's own exception, QueueFullError when max_queue requests are already
        waiting, DeadlineExceededError, or ShuttingDownError once `drain`/`close` began.
        """
        if not self._accepting:
            raise ShuttingDownError(self.name)
        if deadline_s is not None and deadline_s <= 0:
            self.deadline_exceeded += 1
            raise DeadlineExceededError(deadline_s, "before it was queued")
        if len(self._queue) >= self.max_queue:
            self.rejections += 1
            raise QueueFullError(self.name, self.max_queue, self.retry_after_s())
        self._ensure_running()
        pending: Pending[T, R] = Pending(item, asyncio.get_running_loop().create_future(), time.monotonic())
        self._queue.append(pending)
        self._idle.clear()
        self._changed.set()

        timeout = asyncio.timeout(deadline_s)
        try:
            async with timeout:
                return await pending.future
        except TimeoutError:
            if not timeout.expired():  # a TimeoutError that process_batch returned for this item
                raise
            assert deadline_s is not None
            stage = "while queued" if self._abandon(pending) else "while its batch ran; result dropped"
            self.deadline_exceeded += 1
            raise DeadlineExceededError(deadline_s, stage) from None
        except asyncio.CancelledError:
            self._abandon(pending)
            self.cancellations += 1
            raise

    def _abandon(self, pending: Pending[T, R]) -> bool:
        """Mark the caller gone; drop the item if still queued. Returns whether it was queued."""
        pending.abandoned = True
        try:
            self._queue.remove(pending)
        except ValueError:
            return False
        self._changed.set()
        self._update_idle()
        return True

    def _update_idle(self) -> None:
        if self._queue or self._batches:
            self._idle.clear()
        else:
            self._idle.set()

    # -- the runner: cut batches when a slot is free and run them -----------------------------

    def _ensure_running(self) -> None:
        if self._runner is None:
            self._executor = ThreadPoolExecutor(max_workers=self.concurrency,
                                                thread_name_prefix=f"{self.name}-batch")
            self._slots = asyncio.Semaphore(self.concurrency)
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-batcher")

    async def _run(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            self._batches.append(batch)  # before the next cut, so in_flight counts it
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(lambda t, b=batch: self._batch_done(t, b))

    def _batch_done(self, task: asyncio.Task[None], batch: list[Pending[T, R]]) -> None:
        self._tasks.discard(task)
        assert self._slots is not None
        self._slots.release()
        if batch in self._batches:  # cancelled before it started: answer everyone
            self._batches.remove(batch)
            for pending in batch:
                self._fail(pending, "its batch was stopped")
            self._update_idle()

    async def _next_batch(self) -> list[Pending[T, R]]:
        while True:
            self._changed.clear()
            wait: float | None = None
            if self._queue:
                if len(self._queue) >= self.max_batch or not self._accepting:
                    break  # full, or draining: nothing more will arrive
                wait = self._queue[0].arrived + self.window_s - time.monotonic()
                if wait <= 0:
                    break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()
        size = min(self.max_batch, len(self._queue))
        batch = [self._queue.popleft() for _ in range(size)]
        return [p for p in batch if not p.future.done()]

    async def _run_batch(self, batch: list[Pending[T, R]]) -> None:
        items = [p.item for p in batch]
        args: tuple[Any, ...] = (items,)
        if self._wants_cancelled:
            args = (items, lambda i: batch[i].abandoned)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            try:
                results: Sequence[Any] | BaseException = list(
                    await loop.run_in_executor(self._executor, self._process_batch, *args)
                )
                if len(results) != len(batch):
                    results = BackendError(
                        f"process_batch of '{self.name}' returned {len(results)} results for "
                        f"{len(batch)} items; it must return one result (or exception) per item, in order."
                    )
            except Exception as exc:  # the whole batch failed: every item gets it
                results = exc
            self._record(len(batch), time.monotonic() - started)
            for i, pending in enumerate(batch):
                if pending.future.done():  # cancelled, deadline passed or failed by drain
                    continue
                result = results if isinstance(results, BaseException) else results[i]
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
        finally:  # the runner was cancelled (close) or hit a BaseException: answer everyone
            for pending in batch:
                if not pending.future.done():
                    pending.abandoned = True
                    pending.future.set_exception(ShuttingDownError(self.name, "its batch was stopped"))
            self._batches.remove(batch)
            self._update_idle()

    def _record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.items_processed += size
        self.batch_sizes[size] += 1
        self.batch_seconds_total += seconds
        self._recent_batch_s.append(seconds)

    # -- shutdown -----------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, wait up to `timeout_s` for queued and in-flight items, then fail the
        rest with ShuttingDownError. Returns True when everything finished in time."""
        self._accepting = False
        self._changed.set()  # cut the waiting batch now instead of at the end of its window
        if self._idle.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                return True
        detail = f"the request did not finish within the drain timeout of {timeout_s:g}s"
        while self._queue:
            self._fail(self._queue.popleft(), detail)
        for batch in self._batches:  # a running batch cannot be interrupted; its results are dropped
            for pending in batch:
                self._fail(pending, detail)
        self._update_idle()
        return False

    def _fail(self, pending: Pending[T, R], detail: str) -> None:
        pending.abandoned = True
        if not pending.future.done():
            pending.future.set_exception(ShuttingDownError(self.name, detail))

    async def close(self, timeout_s: float = 0.0) -> None:
        """`drain(timeout_s)`, then stop the runner. A batch still running in the worker thread
        finishes there (threads cannot be interrupted); `cancelled(i)` is True for all its items."""
        await self.drain(timeout_s)
        if self._runner is not None:
            self._runner.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.wait([self._runner, *self._tasks])
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> MicroBatcher[T, R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
