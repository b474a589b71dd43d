"""The hop from a run's worker thread to its event loop (codemode/_sandbox/crossing.py)."""

from __future__ import annotations

import contextvars
import threading

import anyio
import anyio.to_thread
import pytest

from codemode._sandbox.crossing import LoopCrossing

pytestmark = pytest.mark.anyio

_who = contextvars.ContextVar("who", default="nobody")


async def test_a_coroutine_runs_on_the_loop_with_the_callers_context_and_its_outcome_comes_back() -> None:
    crossing = LoopCrossing()
    loop_thread = threading.get_ident()

    async def probe(x: int) -> tuple[int, str, bool]:
        await anyio.sleep(0)
        return x * 2, _who.get(), threading.get_ident() == loop_thread

    async def fail() -> None:
        raise KeyError("boom")

    def worker() -> tuple[tuple[int, str, bool] | None, BaseException | None]:
        _who.set("worker")
        result = crossing.run(probe, 21, timeout=10)
        try:
            crossing.run(fail, timeout=10)
        except KeyError as exc:
            return result, exc
        return result, None

    with anyio.fail_after(20):
        result, error = await anyio.to_thread.run_sync(worker)
    assert result == (42, "worker", True)
    assert isinstance(error, KeyError)


async def test_a_wait_that_outlasts_its_bound_gives_up_and_cancels_the_task() -> None:
    crossing = LoopCrossing()
    cancelled = anyio.Event()

    async def stuck() -> None:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    with anyio.fail_after(20):
        assert await anyio.to_thread.run_sync(lambda: crossing.run(stuck, timeout=0.05)) is None
        await cancelled.wait()


async def test_cancel_stops_the_tasks_in_flight_and_any_started_after_it() -> None:
    crossing = LoopCrossing()
    started = anyio.Event()

    async def stuck() -> str:
        started.set()
        await anyio.sleep(60)
        return "finished"

    async def quick() -> str:
        return "finished"

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            outcomes: list[str | None] = []

            async def worker() -> None:
                outcomes.append(await anyio.to_thread.run_sync(lambda: crossing.run(stuck, timeout=30)))

            tg.start_soon(worker)
            await started.wait()
            crossing.cancel()
        assert outcomes == [None]
        assert await anyio.to_thread.run_sync(lambda: crossing.run(quick, timeout=30)) is None
