"""The hops between a run's event loop and its worker thread.

`run_in_worker` runs the guest on a worker thread: an idle one if there is
one, else a new one that the loop does not wait to see start
(`threading.Thread.start`, which `anyio.to_thread` uses, blocks the loop
until the new thread runs; in a burst of 256 runs on two busy cores that
kept the loop 1 s from answering any run's tool call). The rest of this
module is the way back:

A guest's batch of async tool calls is carried out on the event loop the run
was started from, while the worker thread that runs the guest waits. The hop
is the least that does it: one `call_soon_threadsafe` that starts the batch as
a task (in a copy of the worker's context, so the run's trace span and
anyio's backend are the caller's), and one lock the task's completion
releases. (`anyio.from_thread.run` does the same through a
`concurrent.futures.Future`, a condition variable, a wrapper task and
cancel-scope bookkeeping: about 3x the cost per crossing, measured in
benchmarks/sandbox.py.) `cancel` (on the loop) cancels the tasks in flight and
any started after it: the runner calls it when its caller gives up.

Failure policy: the wait is bounded (a blocking host call is not cut by the
guest's epoch deadline), so a loop that stops answering costs the worker at
most `timeout`; then `run` returns None, as it does for a cancelled task, and
the runner ends the run.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["LoopCrossing", "current_crossing", "run_in_worker"]

T = TypeVar("T")


class LoopCrossing:
    """Runs coroutines on the event loop this was made on, from other threads."""

    def __init__(self) -> None:
        """Raises `RuntimeError` outside a running asyncio loop."""
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cancelled = False

    def cancel(self) -> None:
        """On the loop's thread: cancel every task in flight, and every later one."""
        self._cancelled = True
        for task in list(self._tasks):
            task.cancel()

    def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float) -> T | None:
        """`await fn(*args)` on the loop; its result, or its exception raised
        here; None if it was cancelled or has not finished within `timeout`
        seconds (it is then cancelled). Call from a thread other than the loop's.

        Raises `RuntimeError` if the loop is closed."""
        done = threading.Lock()
        done.acquire()
        box: list[asyncio.Task[T]] = []
        context = contextvars.copy_context()

        def finished(task: asyncio.Task[T]) -> None:
            self._tasks.discard(task)
            done.release()

        def start() -> None:
            task = self._loop.create_task(fn(*args), context=context)
            box.append(task)
            self._tasks.add(task)
            task.add_done_callback(finished)
            if self._cancelled:
                task.cancel()

        self._loop.call_soon_threadsafe(start)
        if not done.acquire(timeout=max(0.0, timeout)):
            self._loop.call_soon_threadsafe(lambda: box[0].cancel() if box else None)
            return None
        task = box[0]
        return None if task.cancelled() else task.result()


current_crossing: contextvars.ContextVar[LoopCrossing] = contextvars.ContextVar("codemode_crossing")
"""The run's crossing, seen by its worker thread (which runs in a copy of the run's context)."""

# Idle workers wait this long for another run before they exit.
_IDLE_S = 10.0
_jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_idle = 0
_idle_lock = threading.Lock()


def _submit(job: Callable[[], None]) -> None:
    global _idle
    with _idle_lock:
        if _idle > 0:
            _idle -= 1
            _jobs.put(job)
            return
    _thread.start_new_thread(_worker, (job,))


def _worker(job: Callable[[], None]) -> None:
    global _idle
    while True:
        job()
        with _idle_lock:
            _idle += 1
        try:
            job = _jobs.get(timeout=_IDLE_S)
        except queue.Empty:
            # A job handed over as the wait ended is still ours (`_submit`
            # counts this worker out and queues under the same lock).
            with _idle_lock:
                try:
                    job = _jobs.get_nowait()
                except queue.Empty:
                    _idle -= 1
                    return


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller gave up: the outcome is dropped
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


async def run_in_worker(fn: Callable[..., T], *args: Any, limiter: anyio.CapacityLimiter) -> T:
    """`fn(*args)` on a worker thread, in a copy of this context, holding a
    token of `limiter` meanwhile. Cancelling the caller abandons the thread
    (its outcome is dropped; `fn` must notice on its own that it should stop)."""
    async with limiter:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()

        def job() -> None:
            value: Any
            try:
                ok, value = True, context.run(fn, *args)
            except BaseException as exc:  # handed to the caller, whatever it is
                ok, value = False, exc
            try:
                loop.call_soon_threadsafe(_settle, future, ok, value)
            except RuntimeError:  # the loop is closed: nobody waits for this any more
                pass

        _submit(job)
        return await future
