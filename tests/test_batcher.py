from __future__ import annotations

import asyncio
import threading
import time

import pytest

from orchestrator.errors import (
    BackendError,
    DeadlineExceededError,
    OrchestratorError,
    QueueFullError,
    ShuttingDownError,
)
from orchestrator.workers.batcher import MicroBatcher


def run(coro):
    """pytest-asyncio is not a dependency: run each test's coroutine on a fresh loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, 5))


async def until(predicate, timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


class Recorder:
    """A process_batch that records its calls and answers item * 10.

    `gate` (when given) holds each batch in the worker thread until it is set; `started` is set
    as soon as a batch begins."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.delay, self.gate = delay, gate
        self.calls: list[list[int]] = []
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(2)
        time.sleep(self.delay)
        return [i * 10 for i in items]

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 1)


def test_concurrent_submits_within_one_window_make_one_batch():
    async def main():
        proc = Recorder()
        async with MicroBatcher(proc, window_s=0.03) as batcher:
            results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        assert results == [0, 10, 20, 30, 40]
        assert proc.calls == [[0, 1, 2, 3, 4]]
        assert batcher.batches == 1 and batcher.items_processed == 5
        assert batcher.batch_sizes == {5: 1}

    run(main())


def test_max_batch_cuts_a_batch_before_the_window_ends():
    async def main():
        proc = Recorder()
        async with MicroBatcher(proc, window_s=10.0, max_batch=3) as batcher:
            start = time.monotonic()
            assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 10, 20]
            assert time.monotonic() - start < 0.5  # did not wait for the 10 s window
        async with MicroBatcher(proc, window_s=0.02, max_batch=3) as batcher:
            await asyncio.gather(*(batcher.submit(i) for i in range(7)))
        assert [len(c) for c in proc.calls] == [3, 3, 3, 1]
        assert proc.calls[1:] == [[0, 1, 2], [3, 4, 5], [6]]
        assert batcher.batch_sizes == {3: 2, 1: 1}

    run(main())


def test_requests_in_two_windows_make_two_batches():
    async def main():
        proc = Recorder()
        async with MicroBatcher(proc, window_s=0.02) as batcher:
            first = asyncio.create_task(batcher.submit(1))
            await asyncio.sleep(0.06)
            second = asyncio.create_task(batcher.submit(2))
            assert await first == 10 and await second == 20
        assert proc.calls == [[1], [2]]
        assert batcher.batches == 2

    run(main())


def test_an_exception_object_fails_only_its_item():
    def proc(items):
        return [
            ValueError(f"bad {i}") if i == 1 else TimeoutError("backend timeout") if i == 2 else i
            for i in items
        ]

    async def main():
        async with MicroBatcher(proc, window_s=0.02) as batcher:
            results = await asyncio.gather(
                batcher.submit(0), batcher.submit(1), batcher.submit(2, deadline_s=5), batcher.submit(3),
                return_exceptions=True,
            )
        assert results[0] == 0 and results[3] == 3
        assert isinstance(results[1], ValueError) and str(results[1]) == "bad 1"
        # A TimeoutError the backend returns is its own error, not the caller's deadline.
        assert type(results[2]) is TimeoutError

    run(main())


def test_a_raising_process_batch_fails_every_item_of_the_batch():
    def proc(items):
        raise RuntimeError("model crashed")

    async def main():
        async with MicroBatcher(proc, window_s=0.02) as batcher:
            results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and str(r) == "model crashed" for r in results)
        assert batcher.batches == 1

    run(main())


def test_wrong_number_of_results_is_a_backend_error():
    async def main():
        async with MicroBatcher(lambda items: items[:1], window_s=0.02) as batcher:
            results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(r, BackendError) and "2 items" in str(r) for r in results)

    run(main())


def test_full_queue_rejects_at_once_with_retry_after():
    async def main():
        gate = threading.Event()
        proc = Recorder(gate=gate)
        async with MicroBatcher(proc, window_s=0.0, max_queue=2) as batcher:
            in_flight = asyncio.create_task(batcher.submit(0))
            await proc.wait_started()
            waiting = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
            await until(lambda: batcher.queue_depth == 2)
            with pytest.raises(QueueFullError) as err:
                await batcher.submit(3)
            assert isinstance(err.value, OrchestratorError)
            assert err.value.retry_after_s >= 1 and "max_queue=2" in str(err.value)
            assert batcher.rejections == 1 and batcher.in_flight == 1
            gate.set()
            assert await in_flight == 0 and await asyncio.gather(*waiting) == [10, 20]
        assert proc.calls == [[0], [1, 2]]

    run(main())


def test_cancelled_before_its_batch_starts_is_never_processed():
    async def main():
        gate = threading.Event()
        proc = Recorder(gate=gate)
        async with MicroBatcher(proc, window_s=0.0) as batcher:
            first = asyncio.create_task(batcher.submit(1))
            await proc.wait_started()
            gone = asyncio.create_task(batcher.submit(2))
            kept = asyncio.create_task(batcher.submit(3))
            await until(lambda: batcher.queue_depth == 2)
            gone.cancel()
            await asyncio.wait([gone])
            assert gone.cancelled() and batcher.queue_depth == 1
            gate.set()
            assert await first == 10 and await kept == 30
        assert proc.calls == [[1], [3]]
        assert batcher.cancellations == 1

    run(main())


def test_cancelled_during_processing_is_visible_to_the_backend_and_dropped():
    seen: list[bool] = []
    started = threading.Event()

    def proc(items, cancelled):  # two parameters: the batcher passes the cancelled check
        if items == [7]:  # wait for the caller of 7 to go away
            started.set()
            stop = time.monotonic() + 1.0
            while not cancelled(0) and time.monotonic() < stop:
                time.sleep(0.002)
        seen.append(cancelled(0))
        return items

    async def main():
        async with MicroBatcher(proc, window_s=0.0) as batcher:
            task = asyncio.create_task(batcher.submit(7))
            assert await asyncio.to_thread(started.wait, 1)
            task.cancel()
            await asyncio.wait([task])
            await until(lambda: batcher.in_flight == 0)
            assert task.cancelled() and seen == [True]
            assert batcher.cancellations == 1 and batcher.batches == 1
            assert await batcher.submit(8) == 8  # the batcher keeps serving
        assert seen == [True, False]

    run(main())


def test_deadline_passing_in_the_queue_removes_the_item():
    async def main():
        gate = threading.Event()
        proc = Recorder(gate=gate)
        async with MicroBatcher(proc, window_s=0.0) as batcher:
            first = asyncio.create_task(batcher.submit(1))
            await proc.wait_started()
            start = time.monotonic()
            with pytest.raises(DeadlineExceededError, match="while queued"):
                await batcher.submit(2, deadline_s=0.05)
            assert time.monotonic() - start < 0.3
            assert batcher.queue_depth == 0 and batcher.deadline_exceeded == 1
            gate.set()
            assert await first == 10
        assert proc.calls == [[1]]

    run(main())


def test_deadline_passing_during_processing_answers_at_the_deadline():
    async def main():
        proc = Recorder(delay=0.3)
        async with MicroBatcher(proc, window_s=0.0) as batcher:
            start = time.monotonic()
            with pytest.raises(DeadlineExceededError, match="while its batch ran"):
                await batcher.submit(1, deadline_s=0.05)
            assert time.monotonic() - start < 0.2
            assert batcher.in_flight == 1 and batcher.deadline_exceeded == 1
            await until(lambda: batcher.in_flight == 0)  # the late result is dropped quietly
        assert proc.calls == [[1]]

    run(main())


def test_drain_finishes_queued_and_in_flight_work_then_rejects():
    async def main():
        gate = threading.Event()
        proc = Recorder(gate=gate)
        batcher = MicroBatcher(proc, window_s=0.0)
        first = asyncio.create_task(batcher.submit(1))
        await proc.wait_started()
        queued = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.queue_depth == 1)
        draining = asyncio.create_task(batcher.drain(1.0))
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDownError):
            await batcher.submit(3)
        assert not draining.done()
        gate.set()
        assert await draining is True
        assert await first == 10 and await queued == 20
        await batcher.close()
        with pytest.raises(ShuttingDownError):
            await batcher.submit(4)
        assert proc.calls == [[1], [2]]

    run(main())


def test_drain_timeout_fails_what_is_left():
    async def main():
        gate = threading.Event()
        proc = Recorder(gate=gate)
        batcher = MicroBatcher(proc, window_s=0.0)
        first = asyncio.create_task(batcher.submit(1))
        await proc.wait_started()
        queued = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.queue_depth == 1)
        assert await batcher.drain(0.05) is False
        for task in (first, queued):
            with pytest.raises(ShuttingDownError, match="drain timeout"):
                await task
        assert batcher.queue_depth == 0
        gate.set()
        await batcher.close()
        assert proc.calls == [[1]]

    run(main())


def test_bad_arguments_are_refused():
    async def coroutine_batch(items):
        return items

    with pytest.raises(TypeError, match="plain function"):
        MicroBatcher(coroutine_batch)
    with pytest.raises(ValueError, match="max_batch >= 1"):
        MicroBatcher(Recorder(), max_batch=0)


def test_drain_and_close_on_an_unused_batcher():
    async def main():
        batcher = MicroBatcher(Recorder())
        assert await batcher.drain(0.0) is True
        await batcher.close()
        await batcher.close()

    run(main())


def test_event_loop_stays_responsive_while_a_slow_batch_runs():
    async def main():
        ticks = 0

        async def ticker(stop: asyncio.Event):
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        stop = asyncio.Event()
        async with MicroBatcher(Recorder(delay=0.2), window_s=0.0) as batcher:
            tick_task = asyncio.create_task(ticker(stop))
            assert await batcher.submit(1) == 10
            stop.set()
            await tick_task
        assert ticks >= 8

    run(main())


# --- concurrent batches (concurrency > 1) ------------------------------------------------------


class Gated:
    """process_batch whose batches containing a gated item wait for that item's event."""

    def __init__(self):
        self.gates: dict[int, threading.Event] = {}
        self.calls: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.calls.append(list(items))
        for i in items:
            if i in self.gates:
                self.gates[i].wait(3)
        return [i * 10 for i in items]


def test_a_stuck_batch_does_not_hold_later_batches():
    async def main():
        proc = Gated()
        proc.gates[0] = threading.Event()
        async with MicroBatcher(proc, window_s=0.0, concurrency=2) as batcher:
            stuck = asyncio.create_task(batcher.submit(0))
            await until(lambda: batcher.in_flight == 1)
            t0 = time.monotonic()
            assert await batcher.submit(1) == 10  # its own batch, beside the stuck one
            assert time.monotonic() - t0 < 0.5
            assert not stuck.done() and batcher.in_flight == 1
            proc.gates[0].set()
            assert await stuck == 0
        assert proc.calls == [[0], [1]]

    run(main())


def test_with_every_slot_busy_the_queue_coalesces():
    async def main():
        proc = Gated()
        proc.gates[0], proc.gates[1] = threading.Event(), threading.Event()
        async with MicroBatcher(proc, window_s=0.0, concurrency=2) as batcher:
            busy = []
            for i in (0, 1):  # two batches of one
                busy.append(asyncio.create_task(batcher.submit(i)))
                await until(lambda i=i: batcher.in_flight == i + 1)
            waiting = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
            await until(lambda: batcher.queue_depth == 3)
            assert batcher.retry_after_s() >= 1
            proc.gates[0].set()
            assert await asyncio.gather(*waiting) == [20, 30, 40]
            proc.gates[1].set()
            assert await asyncio.gather(*busy) == [0, 10]
        assert sorted(proc.calls) == [[0], [1], [2, 3, 4]]  # one batch for the three

    run(main())


def test_drain_timeout_fails_every_batch_in_flight():
    async def main():
        proc = Gated()
        proc.gates[0], proc.gates[1] = threading.Event(), threading.Event()
        batcher = MicroBatcher(proc, window_s=0.0, concurrency=2)
        tasks = []
        for i in (0, 1):
            tasks.append(asyncio.create_task(batcher.submit(i)))
            await until(lambda i=i: batcher.in_flight == i + 1)
        assert await batcher.drain(0.05) is False
        for task in tasks:
            with pytest.raises(ShuttingDownError, match="drain timeout"):
                await task
        proc.gates[0].set()
        proc.gates[1].set()
        await batcher.close()
        assert batcher.in_flight == 0

    run(main())


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="concurrency >= 1"):
        MicroBatcher(Recorder(), concurrency=0)
