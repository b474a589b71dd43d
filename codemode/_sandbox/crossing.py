"""The hop from a run's worker thread to its event loop and back.

A guest's batch of async tool calls is carried out on the event loop the run
was started from, while the worker thread that runs the guest waits. The hop
is the least that does it: one `call_soon_threadsafe` that starts the batch as
a task (in a copy of the worker's context, so the run's trace span and
anyio's backend are the caller's), and one lock the task releases as it
ends. (`anyio.from_thread.run` does the same through a
`concurrent.futures.Future`, a condition variable, a wrapper task and
cancel-scope bookkeeping: about 3x the cost per crossing, measured in
benchmarks/sandbox.py.) `cancel` (on the loop) cancels the tasks in flight and
any started after it: the runner calls it when its caller gives up.

Failure policy: the wait is bounded (a blocking host call is not cut by the
guest's epoch deadline), so a loop that stops answering costs the worker at
most `timeout`; then `run` returns None, as it does for a cancelled task, and
the runner ends the run.

Code that runs on a run's worker thread outside the guest (a sync tool that
returns an awaitable, the approval gate of a sync tool) reaches the loop with
`await_on_loop`, through the crossing the runner bound to that thread; on
anyio's own worker threads (a gather's sync tools) it uses `anyio.from_thread`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio.from_thread

__all__ = ["LoopCrossing", "RunEnded", "await_on_loop", "bound"]

T = TypeVar("T")

# Past the run's deadline, a wait on the loop gets this long to end by itself.
_GRACE_S = 1.0
_local = threading.local()


class RunEnded(concurrent.futures.CancelledError):
    """`await_on_loop`'s wait ended because its run did (cancelled, or past its deadline)."""


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
        finished, value = self._run(fn, args, timeout)
        return value if finished else None

    def _run(
        self, fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...], timeout: float
    ) -> tuple[bool, T | None]:
        done = threading.Lock()
        done.acquire()
        started: list[asyncio.Task[None]] = []
        outcome: list[tuple[bool, Any]] = []  # (True, value) or (False, exception); empty if cancelled
        context = contextvars.copy_context()

        # The coroutine releases the worker itself as it ends: one pass of the
        # loop fewer than a done callback.
        async def carry() -> None:
            try:
                outcome.append((True, await fn(*args)))
            except Exception as exc:
                outcome.append((False, exc))
            finally:
                self._tasks.discard(started[0])
                done.release()

        def start() -> None:
            task = self._loop.create_task(carry(), context=context)
            started.append(task)
            self._tasks.add(task)
            if self._cancelled:
                task.cancel()

        self._loop.call_soon_threadsafe(start)
        if not done.acquire(timeout=max(0.0, timeout)):
            self._loop.call_soon_threadsafe(lambda: started[0].cancel() if started else None)
            return False, None
        if not outcome:
            return False, None
        ok, value = outcome[0]
        if not ok:
            raise value
        return True, value


@contextmanager
def bound(crossing: LoopCrossing, deadline: float) -> Iterator[None]:
    """Within this block, `await_on_loop` on this thread goes through `crossing`,
    bounded by `deadline` (`time.monotonic()`) plus a grace."""
    _local.bound = (crossing, deadline)
    try:
        yield
    finally:
        _local.bound = None


def await_on_loop(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """From a worker thread: `await fn(*args)` on the run's event loop; its
    result, or its exception raised here.

    Raises `RunEnded` (a `concurrent.futures.CancelledError`) if the run was
    cancelled or its deadline (plus a grace) passed first, and `anyio.NoEventLoopError` on a
    thread that belongs to no run and is not one of anyio's."""
    current: tuple[LoopCrossing, float] | None = getattr(_local, "bound", None)
    if current is None:
        return anyio.from_thread.run(fn, *args)
    crossing, deadline = current
    finished, value = crossing._run(fn, args, deadline - time.monotonic() + _GRACE_S)
    if not finished:
        raise RunEnded("the run ended while waiting on its event loop")
    return value  # type: ignore[return-value]
