"""The threads runs execute on (codemode/_sandbox/workers.py)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import anyio
import anyio.from_thread
import pytest

from codemode import CodeMode, Limits, RunResult, RunTimeout, Sandbox, Tool
from codemode._sandbox import workers
from codemode._sandbox.crossing import LoopCrossing, await_on_loop, bound
from codemode._sandbox.epoch import RunGuard
from codemode._sandbox.workers import WorkerPool

pytestmark = pytest.mark.anyio

_who = contextvars.ContextVar("who", default="nobody")


async def test_a_job_runs_off_the_loop_in_the_callers_context_and_its_outcome_comes_back() -> None:
    pool = WorkerPool()
    limiter = anyio.CapacityLimiter(2)
    loop_thread = threading.get_ident()
    _who.set("caller")

    def probe(x: int) -> tuple[int, str, bool]:
        return x * 2, _who.get(), threading.get_ident() == loop_thread

    def fail() -> None:
        raise KeyError("boom")

    with anyio.fail_after(20):
        assert await pool.run(probe, 21, limiter=limiter) == (42, "caller", False)
        with pytest.raises(KeyError):
            await pool.run(fail, limiter=limiter)


async def test_a_cancelled_caller_stops_waiting_and_the_job_runs_on() -> None:
    pool = WorkerPool()
    release, finished = threading.Event(), threading.Event()

    def job() -> None:
        release.wait(20)
        finished.set()

    with anyio.fail_after(20):
        with anyio.move_on_after(0.05) as scope:
            await pool.run(job, limiter=anyio.CapacityLimiter(1))
        assert scope.cancelled_caught and not finished.is_set()
        release.set()
        while not finished.is_set():
            await anyio.sleep(0.01)


async def test_code_on_a_worker_reaches_the_loop_through_the_runs_crossing() -> None:
    pool = WorkerPool()
    crossing = LoopCrossing()
    loop_thread = threading.get_ident()

    async def on_loop() -> bool:
        return threading.get_ident() == loop_thread

    deadline = anyio.current_time() + 20

    def job() -> bool:
        with bound(crossing, deadline):
            return await_on_loop(on_loop)

    with anyio.fail_after(20):
        assert await pool.run(job, limiter=anyio.CapacityLimiter(1)) is True


async def test_idle_workers_end_and_leave_no_thread_records_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "IDLE_S", 0.05)
    pool = WorkerPool()
    limiter = anyio.CapacityLimiter(8)
    before = set(threading.enumerate())
    gate = threading.Barrier(8, timeout=20)

    def job() -> str:
        gate.wait()  # eight workers at once
        return threading.current_thread().name  # as logging asks

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(lambda: pool.run(job, limiter=limiter))
        while set(threading.enumerate()) - before:
            await anyio.sleep(0.02)


async def test_a_sync_tool_may_call_anyio_from_thread_alone_or_in_a_gather() -> None:
    # On anyio's own workers this always worked; on ours a lone call failed with
    # NoEventLoopError while the same tool in a gather (anyio's threads) worked.
    async def fetch() -> int:
        await anyio.sleep(0)
        return 5

    def sync_tool() -> int:
        return anyio.from_thread.run(fetch)

    async with CodeMode(tools=[Tool(name="s", fn=sync_tool, description="Five, from the loop.")]) as cm:
        alone = await cm.execute("await tools.s()")
        gathered = await cm.execute("import asyncio\nawait asyncio.gather(tools.s(), tools.s())")
    assert alone.error is None and alone.value == 5, alone.error
    assert gathered.error is None and gathered.value == [5, 5], gathered.error


async def test_a_tool_that_raises_system_exit_or_keyboard_interrupt_fails_only_its_call() -> None:
    # argparse calls sys.exit on arguments it refuses: a model's bad arguments
    # could end the service. In a gather (anyio's threads) SystemExit left the
    # event loop and ended the process; alone, on the run's worker, it trapped
    # the guest (`sandbox_crashed`). (An async tool's SystemExit is left to
    # asyncio: on the loop's thread it may be a signal handler's.)
    def cli(how: str) -> str:
        if how == "exit":
            raise SystemExit(2)
        if how == "interrupt":
            raise KeyboardInterrupt
        return how

    program = (
        "import asyncio\n"
        "out = []\n"
        "for how in ('exit', 'interrupt'):\n"
        "    try:\n"
        "        await tools.cli(how=how)\n"
        "    except ToolError as e:\n"
        "        out.append(e.code)\n"
        "got = await asyncio.gather(tools.cli(how='exit'), tools.cli(how='ok'), return_exceptions=True)\n"
        "out + [g.code if isinstance(g, ToolError) else g for g in got]"
    )
    schema = {"type": "object", "properties": {"how": {"type": "string"}}, "required": ["how"]}
    tools = [Tool(name="cli", fn=cli, description="A CLI.", input_schema=schema)]
    with anyio.fail_after(60):
        async with CodeMode(tools=tools) as cm:
            result = await cm.execute(program)
            after = await cm.execute("1 + 1")
    assert result.error is None, result.error
    assert result.value == ["tool_error", "tool_error", "tool_error", "ok"]
    assert after.value == 2


async def test_a_sync_tool_blocked_past_the_deadline_frees_its_caller_and_holds_its_slot_until_it_returns() -> None:
    # What the README says of plain functions: nothing can cut a Python call on
    # another thread, so the run's worker and its wasm slot wait for it.
    release = threading.Event()

    def stuck() -> int:
        release.wait(60)
        return 1

    tools = [Tool(name="stuck", fn=stuck, description="Blocks.")]
    async with Sandbox(pool_warm=1, pool_max=1) as sandbox:
        try:
            with anyio.fail_after(10):
                held = await sandbox.run("await tools.stuck()", tools=tools, limits=Limits(timeout=0.3))
                assert isinstance(held.error, RunTimeout)
                waited = await sandbox.run("1 + 1", limits=Limits(timeout=0.3))
                assert isinstance(waited.error, RunTimeout)  # the one slot is still the stuck run's
        finally:
            release.set()
        with anyio.fail_after(10):
            assert (await sandbox.run("1 + 1")).value == 2


def test_a_run_whose_event_loop_closes_under_it_ends_quietly(caplog: pytest.LogCaptureFixture) -> None:
    # asyncio.run per request (a sync web app): the run times out and its loop
    # closes while a sync tool still holds the worker. When the tool returned,
    # its `tool_call_finished` event could not reach the closed loop: the call
    # was logged as a tool that raised, then as a failed host call, with tracebacks.
    release, returned = threading.Event(), threading.Event()

    def slow() -> int:
        release.wait(30)
        return 1

    inner = Sandbox().backend

    class Watched:
        name = "wasm"

        def load(self) -> None:
            inner.load()

        def execute(self, request_json: str, host_call: Any, limits: Limits, guard: RunGuard) -> tuple[str, float]:
            try:
                return inner.execute(request_json, host_call, limits, guard)
            finally:
                returned.set()

    sandbox = Sandbox(backend=Watched())
    events: list[dict[str, Any]] = []

    async def request() -> RunResult:
        tools = [Tool(name="slow", fn=slow, description="Slow.")]
        return await sandbox.run("await tools.slow()", tools=tools, limits=Limits(timeout=0.3), on_event=events.append)

    caplog.set_level("DEBUG")
    try:
        result = asyncio.run(request())
    finally:
        release.set()
    assert isinstance(result.error, RunTimeout)
    assert returned.wait(20)
    text = caplog.text
    assert "Traceback" not in text and "host function failed" not in text, text[-3000:]
    assert [e["type"] for e in events] == ["tool_call_started"]
