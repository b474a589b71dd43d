"""The threads runs execute on, started without blocking the event loop.

`anyio.to_thread.run_sync` starts a new worker thread on the event loop's
thread and waits there until the thread runs: with hundreds of runs starting
at once on a busy machine, the loop sat about 1 s in `Thread.start` before
any run's first tool call could be served. Here the loop only queues the job
and, if no worker is idle, starts one with `_thread.start_new_thread`, which
does not wait for the thread to run. (A spawner thread calling `Thread.start`
for the loop was slower: each start waits for the new thread to get the GIL
among all the others, one after another.) A worker that has been idle for
`IDLE_S` ends. These threads are not `threading.Thread` objects; one that
asks for `threading.current_thread()` (logging does) is given a stand-in,
which is dropped again when the worker ends.

A job runs in a copy of the caller's context (the run's trace span, the
approval gate's current run), as with anyio. Code on these threads reaches
the loop through the run's `crossing.LoopCrossing`; a user's sync tool that
calls `anyio.from_thread.run` itself (as it could on anyio's workers) finds
the caller's event-loop token where anyio looks for it, so it works as it
does when the tool runs in a gather, on anyio's own workers.

Failure policy: a job's exception is raised to its awaiting caller; a caller
that is cancelled stops waiting at once and the job runs on (the runner stops
the guest through its guard), its outcome dropped. Nothing a job does can end
a worker or the spawner.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["WorkerPool"]

T = TypeVar("T")

IDLE_S = 10.0
"""A worker idle this long ends (anyio's workers: the same)."""

_Job = tuple[
    contextvars.Context, Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop, Any
]

try:  # where `anyio.from_thread.run` looks for the loop of the thread's caller
    from anyio._core._eventloop import threadlocals as _anyio_threadlocals
except ImportError:  # pragma: no cover - another anyio: sync tools then need an explicit token
    _anyio_threadlocals = None  # type: ignore[assignment]


class WorkerPool:
    """Daemon threads that run blocking calls for event loops. Thread-safe."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Workers waiting for a job that no queued job has claimed yet.
        self._idle = 0

    async def run(self, fn: Callable[..., T], *args: Any, limiter: anyio.CapacityLimiter) -> T:
        """`fn(*args)` on a worker thread, holding one of `limiter`'s tokens
        while it runs; its result, or its exception raised here. If the caller
        is cancelled, it stops waiting at once (`fn` runs on, see the docstring)."""
        async with limiter:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[T] = loop.create_future()
            token = anyio.lowlevel.current_token() if _anyio_threadlocals is not None else None
            self._submit((contextvars.copy_context(), fn, args, future, loop, token))
            return await future

    def _submit(self, job: _Job) -> None:
        with self._lock:
            claimed = self._idle > 0
            if claimed:
                self._idle -= 1
        self._jobs.put(job)
        if not claimed:
            self._spawn()

    def _spawn(self) -> None:
        _thread.start_new_thread(self._work, ())

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            # threading keeps the stand-in made for a thread it did not start forever.
            getattr(threading, "_active", {}).pop(threading.get_ident(), None)

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:
                    # Idle credit left means no queued job counts on a worker
                    # (this one or another): this one may end.
                    if self._idle > 0:
                        self._idle -= 1
                        return
                continue
            self._execute(job)
            del job
            with self._lock:
                self._idle += 1

    @staticmethod
    def _execute(job: _Job) -> None:
        context, fn, args, future, loop, token = job
        result: Any = None
        error: BaseException | None = None
        if not future.cancelled():
            if token is not None:
                _anyio_threadlocals.current_token = token
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # handed to the caller, whatever it is
                error = exc
            finally:
                if token is not None:
                    del _anyio_threadlocals.current_token
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
