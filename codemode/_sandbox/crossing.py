"""The hop from a run's worker thread to its event loop and back.

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

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopCrossing"]

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
