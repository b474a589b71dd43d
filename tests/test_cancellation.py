"""Cancelling a run the asyncio way (`asyncio.wait_for`, `task.cancel()`) stops
it at once, as anyio cancellation does: the tool call it waits on, over real
stdio to a real MCP server, and the worker thread it runs on."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import anyio
import pytest

from codemode import CodeMode, Limits, Sandbox, Tool, parse_config
from codemode._sandbox.epoch import RunGuard
from codemode._sandbox.runner import _backend
from tests.fixtures.helpers import stdio_entry

pytestmark = pytest.mark.anyio


async def _until(predicate: object, seconds: float) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.01)  # a thread ending and a server's process table have no event to wait on


class _Watched:
    """The process's wasm backend, noting when an `execute` returns: when the
    run's worker thread is free. (Runs execute on codemode's own workers,
    which `threading.active_count()` does not count.)"""

    name = "wasm"

    def __init__(self) -> None:
        self.inner = _backend("wasm")
        self.returned = threading.Event()

    def load(self) -> None:
        self.inner.load()

    def execute(self, request_json: str, host_call: Any, limits: Limits, guard: RunGuard) -> tuple[str, float]:
        self.returned.clear()
        try:
            return self.inner.execute(request_json, host_call, limits, guard)
        finally:
            self.returned.set()


@pytest.mark.parametrize("how", ["wait_for", "task_cancel"])
async def test_asyncio_cancellation_stops_the_run_its_tool_calls_and_threads(how: str) -> None:
    stopped = anyio.Event()
    started = anyio.Event()

    async def wait() -> str:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            stopped.set()
        return "never"

    waiter = Tool(name="wait", namespace="host", fn=wait)
    config = parse_config({"mcpServers": {"local": stdio_entry(timeout=60)}})
    code = "import asyncio\nawait asyncio.gather(host.wait(), local.slow(seconds=60))"
    watched = _Watched()
    async with CodeMode(config=config, tools=[waiter], backend=watched) as cm:
        await cm.execute("1")  # warm the pool and the threads
        run = asyncio.ensure_future(cm.execute(code, limits=Limits(timeout=60)))
        with anyio.fail_after(30):
            await started.wait()
        if how == "wait_for":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(run, 0.2)
        else:
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        with anyio.fail_after(5):  # not the run's 60 s timeout
            await stopped.wait()
        await _until(watched.returned.is_set, 5)  # its worker is free: not at the run's 60 s timeout
        result = await cm.execute("1 + 1")
        assert result.value == 2


async def test_a_cancelled_run_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Cancelling is ordinary: it must not log a traceback and a wasm backtrace
    (each cancel used to log ~50 lines, so a caller controlled the log's volume)."""
    started = anyio.Event()

    async def hang() -> None:
        started.set()
        await anyio.sleep_forever()

    caplog.set_level("DEBUG")
    async with CodeMode(tools=[Tool(name="hang", namespace="host", fn=hang)]) as cm:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cm.execute, "await host.hang()")
            with anyio.fail_after(30):
                await started.wait()
            tg.cancel_scope.cancel()
        assert (await cm.execute("1 + 1")).value == 2
    text = caplog.text
    assert "Traceback" not in text and "wasm backtrace" not in text, text[-3000:]
    assert "host function failed" not in text


async def test_a_sync_tool_waiting_on_the_loop_when_its_run_is_cancelled_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync tool that returns an awaitable waits for it on the run's worker
    (as a sync tool's approval does): cancelling the run then is as ordinary
    as cancelling one in an async tool."""
    started = anyio.Event()

    async def hang() -> None:
        started.set()
        await anyio.sleep_forever()

    def sync_hang() -> object:
        return hang()

    caplog.set_level("DEBUG")
    # One slot: the run after starts only once the cancelled run's worker is done.
    async with Sandbox(pool_warm=1, pool_max=1) as sandbox:
        tools = [Tool(name="hang", namespace="host", fn=sync_hang)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(sandbox.run, "await host.hang()", tools=tools))
            with anyio.fail_after(30):
                await started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(30):
            assert (await sandbox.run("1 + 1")).value == 2
    text = caplog.text
    assert "Traceback" not in text and "wasm backtrace" not in text, text[-3000:]
    assert "raised" not in text, text[-3000:]


async def test_a_cancelled_run_makes_no_more_sync_tool_calls() -> None:
    """A sync tool is called on the run's worker, not through the loop; the
    guest could go on calling one until its next epoch check (up to a tick):
    up to 338 calls of a tight loop were made after its caller was told it
    was cancelled."""
    told = threading.Event()  # set once the caller has seen its run cancelled
    calls = after = 0

    def send() -> int:
        nonlocal calls, after
        calls += 1
        after += told.is_set()
        return 1

    tools = [Tool(name="send", fn=send)]
    async with Sandbox() as sandbox:
        for _ in range(5):
            told.clear()
            calls = 0
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        functools.partial(
                            sandbox.run, "while True:\n    await tools.send()", tools=tools, limits=Limits(timeout=60)
                        )
                    )
                    while calls < 50:  # the guest is calling away
                        await anyio.sleep(0.001)
                    tg.cancel_scope.cancel()
            told.set()
        assert (await sandbox.run("1 + 1")).value == 2
    assert after <= 5  # a call under way as the cancel came (at most one a round)


async def test_an_awaitable_a_sync_tool_returns_is_cut_at_the_deadline_like_an_async_tool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It was awaited until the crossing's grace past the deadline (1 s; 30 s
    # here, so the difference cannot hide in scheduling), holding the worker and
    # the slot, where an async tool's call is cut at the deadline itself.
    from codemode._sandbox import crossing, runner

    monkeypatch.setattr(crossing, "_GRACE_S", 30.0)
    monkeypatch.setattr(runner, "_GRACE_S", 30.0)
    cancelled = anyio.Event()

    async def hang() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    def sync_hang() -> Any:
        return hang()

    tools = [Tool(name="sync_hang", fn=sync_hang, description="Returns an awaitable that never ends.")]
    with anyio.fail_after(10):  # before: the run and the awaitable both lasted the 30 s grace
        result = await Sandbox().run("await tools.sync_hang()", tools=tools, limits=Limits(timeout=0.3))
        await cancelled.wait()
    assert result.error is not None and result.error.code == "timeout", result.error
