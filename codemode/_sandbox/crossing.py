"""The hop from a run's worker thread to its event loop and back.

A guest's batch of async tool calls is carried out on the event loop the run
was started from, while the worker thread that runs the guest waits. The hop
is the least that does it: one `call_soon_threadsafe` that starts the batch as
a task (in a copy of the worker's context, so the run's trace span and
anyio's backend are the caller's), and one lock the task's completion
releases. (`anyio.from_thread.run` does the same through a
`concurrent.futures.Future`, a condition variable, a wrapper task and
cancel-scope bookkeeping: about 3x the cost per crossing, measured in
benchmarks/sandbox.py.) Cancellation stays with the runner, which cancels
the batches in flight when its caller gives up.

Failure policy: the wait is bounded (a blocking host call is not cut by the
guest's epoch deadline), so a loop that stops answering costs the worker at
most `timeout`; then `run` returns None and the runner ends the run.
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

    def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float) -> T | None:
        """`await fn(*args)` on the loop; its result, or its exception raised
        here; None if it has not finished within `timeout` seconds (it is then
        cancelled). Call from a thread other than the loop's.

        Raises `RuntimeError` if the loop is closed."""
        done = threading.Lock()
        done.acquire()
        box: list[asyncio.Task[T]] = []
        context = contextvars.copy_context()

        def finished(task: asyncio.Task[T]) -> None:
            done.release()

        def start() -> None:
            task = self._loop.create_task(fn(*args), context=context)
            box.append(task)
            task.add_done_callback(finished)

        self._loop.call_soon_threadsafe(start)
        if not done.acquire(timeout=max(0.0, timeout)):
            self._loop.call_soon_threadsafe(lambda: box[0].cancel() if box else None)
            return None
        return box[0].result()
