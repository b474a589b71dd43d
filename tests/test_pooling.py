"""The wasm backend's pooled instances: slots are reused, runs are not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest

from codemode import Limits, MemoryLimitExceeded, RunTimeout, Sandbox, Tool
from codemode._sandbox.epoch import RunGuard
from codemode._sandbox.pooling import PoolSettings
from codemode._sandbox.wasm import WasmBackend

pytestmark = pytest.mark.anyio


async def test_the_pinned_wasmtime_runs_instances_in_the_pool() -> None:
    sandbox = Sandbox()
    await sandbox.load()
    assert isinstance(sandbox.backend, WasmBackend)
    assert sandbox.backend.pooled is True


async def test_a_reused_slot_starts_from_the_snapshot_with_its_memory_limit() -> None:
    sandbox = Sandbox()
    # Grow far past the slot's resident part, and leave state behind.
    grow = (
        "import json, builtins\n"
        "keep = [bytearray(b'S' * (1 << 20)) for _ in range(120)]\n"
        "json.dumps = None\n"
        "builtins.leak = 'secret'\n"
        "len(keep)"
    )
    # Every slot in rotation has been grown and left dirty at least once.
    for _ in range(8):
        grown = await sandbox.run(grow, limits=Limits(memory=256 << 20, timeout=20))
        assert grown.ok, grown.error
    for _ in range(8):
        fresh = await sandbox.run("import json, builtins\n[json.dumps([1]), getattr(builtins, 'leak', None)]")
        assert fresh.ok and fresh.value == ["[1]", None], fresh.error
        # 24 MiB more than the snapshot's 16.7 MiB does not fit under 32 MiB,
        # however large the slot's memory was before.
        capped = await sandbox.run("x = bytearray(24 << 20)", limits=Limits(memory=32 << 20))
        assert isinstance(capped.error, MemoryLimitExceeded), capped.error


async def _spare_ready(sandbox: Sandbox) -> None:
    """Wait until the housekeeper has an instance ready for the next run."""
    backend = sandbox.backend
    assert isinstance(backend, WasmBackend)
    with anyio.fail_after(10):
        while backend._spare is None:
            await anyio.sleep(0.005)


async def test_a_spare_instance_takes_the_limits_and_state_of_a_fresh_one() -> None:
    # The housekeeper instantiates the next run's instance ahead, with default
    # limits; the run that takes it must get its own, and nothing of the last run.
    sandbox = Sandbox()
    first = await sandbox.run("import builtins\nbuiltins.leak = 'secret'\n1")
    assert first.value == 1, first.error
    await _spare_ready(sandbox)
    fresh = await sandbox.run("import builtins\ngetattr(builtins, 'leak', None)")
    assert fresh.ok and fresh.value is None, fresh.error
    await _spare_ready(sandbox)
    capped = await sandbox.run("x = bytearray(40 << 20)", limits=Limits(memory=32 << 20))
    assert isinstance(capped.error, MemoryLimitExceeded), capped.error
    await _spare_ready(sandbox)
    # Above the 256 MiB the spare was made with.
    roomy = await sandbox.run("x = bytearray(300 << 20)\nlen(x) >> 20", limits=Limits(memory=512 << 20))
    assert roomy.value == 300, roomy.error
    await _spare_ready(sandbox)
    spinning = await sandbox.run("while True:\n    pass", limits=Limits(timeout=0.5))
    assert isinstance(spinning.error, RunTimeout), spinning.error


async def test_runs_past_the_pool_wait_for_a_slot_within_their_timeout() -> None:
    # Its own engines: one resident slot and one more.
    backend = WasmBackend(pool=PoolSettings(warm=1, max=2))
    sandbox = Sandbox(backend=backend)
    await sandbox.load()
    assert backend.pooled is True
    release = anyio.Event()
    started = 0

    async def hold() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "held"

    tools = [Tool(name="hold", fn=hold)]
    results: list = []

    async def one(timeout: float) -> None:
        results.append(await sandbox.run("await tools.hold()", tools=tools, limits=Limits(timeout=timeout)))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(one, 30.0)
            while started < 2:
                await anyio.sleep(0.01)
            tg.start_soon(one, 30.0)  # waits: both slots are held
            late = await sandbox.run("1 + 1", limits=Limits(timeout=0.5))
            assert isinstance(late.error, RunTimeout), late.error
            assert "slots" in late.error.message
            assert started == 2
            release.set()
    assert [r.value for r in results] == ["held"] * 3, [r.error for r in results]


def test_a_capped_address_space_falls_back_to_on_demand_instances() -> None:
    # The pool reserves address space for every slot up front; under a cap it
    # would not fit (and wasmtime's C API would abort), so the backend must not
    # try it. A real process with a real cap.
    program = textwrap.dedent("""
        import asyncio, resource
        resource.setrlimit(resource.RLIMIT_AS, (64 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        from codemode import Sandbox
        async def main():
            sandbox = Sandbox()
            result = await sandbox.run("sum(range(10))")
            print(sandbox.backend.pooled, result.value)
        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "45"], done.stdout
    assert "fall back to on-demand" in done.stderr


async def test_trapped_runs_give_their_slot_back_before_it_counts_as_free() -> None:
    # A trap's traceback keeps the run's Store reachable from reference cycles;
    # with the cyclic GC off, the store (and its pool slot) lives on. The slot
    # must still not be handed out twice: a run waits for it, never gets
    # wasmtime's "maximum concurrent limit" error.
    import gc

    backend = WasmBackend(pool=PoolSettings(warm=1, max=2))
    sandbox = Sandbox(backend=backend, max_concurrency=4)
    await sandbox.load()
    gc.disable()
    try:
        results: list = []

        async def spin() -> None:
            results.append(await sandbox.run("while True:\n    pass", limits=Limits(timeout=0.2)))

        with anyio.fail_after(120):
            for _ in range(3):
                results.clear()
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(spin)
                assert all(isinstance(r.error, RunTimeout) for r in results), [r.error for r in results]
            after = await sandbox.run("1 + 1", limits=Limits(timeout=10))
            assert after.value == 2, after.error
    finally:
        gc.enable()


_BURST = textwrap.dedent("""
    import sys, anyio
    from codemode import Limits, Sandbox, Tool

    def rss_mib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024

    async def main(n, budget_mib):
        sandbox = Sandbox(max_concurrency=n)
        for _ in range(5):
            assert (await sandbox.run("1 + 1")).value == 2
        base = rss_mib()
        started, release, peak = 0, anyio.Event(), 0

        async def hold():
            nonlocal started, peak
            started += 1
            if started == n:
                peak = rss_mib()
                release.set()
            await release.wait()
            return 1

        tools = [Tool(name="hold", fn=hold)]
        results = []

        async def one():
            code = "x = bytearray(b'x' * (4 << 20))\\nawait tools.hold()"
            results.append(await sandbox.run(code, tools=tools, limits=Limits(timeout=120)))

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        assert [r.value for r in results] == [1] * n, [r.error for r in results if not r.ok][:3]
        # Idle: the memory of the slots beyond the warm ones must go back.
        after = peak
        with anyio.move_on_after(10):
            while after - base > budget_mib:
                await anyio.sleep(0.25)
                after = rss_mib()
        print(base, peak, after)

    anyio.run(main, int(sys.argv[1]), int(sys.argv[2]))
""")


def test_memory_of_a_burst_goes_back_to_the_warm_budget_when_idle() -> None:
    # 24 runs at once, each touching 4 MiB more than the snapshot: each holds a
    # slot (17 MiB resident, 21 with its growth). Idle again, the process keeps
    # its warm slots (3 x 20 MiB) and some allocator slack, not 24 slots.
    n, budget_mib = 24, 100
    done = subprocess.run(
        [sys.executable, "-c", _BURST, str(n), str(budget_mib)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    base, peak, after = map(int, done.stdout.split())
    assert peak - base > budget_mib, (base, peak, after)  # the burst did hold that much
    assert after - base <= budget_mib, (base, peak, after)


@pytest.mark.parametrize(("warm", "most"), [(0, 2), (2, 2)])
async def test_pool_sizes_come_from_the_sandbox_or_the_environment(
    warm: int, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEMODE_POOL_WARM", str(warm))
    monkeypatch.setenv("CODEMODE_POOL_MAX", str(most))
    from_env = Sandbox()
    assert isinstance(from_env.backend, WasmBackend)
    assert from_env.backend.pool == PoolSettings(warm=warm, max=most)
    explicit = Sandbox(pool_warm=1, pool_max=3)
    assert isinstance(explicit.backend, WasmBackend)
    assert explicit.backend.pool == PoolSettings(warm=1, max=3)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(from_env.run, "sum(range(10))")
        result = await from_env.run("sum(range(10))")
    assert result.value == 45, result.error


def test_bad_pool_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot exceed"):
        Sandbox(pool_warm=4, pool_max=2)
    with pytest.raises(ValueError, match="at least 1"):
        Sandbox(pool_max=0)


async def test_a_memory_limit_below_the_guests_initial_memory_is_refused_naming_it() -> None:
    from codemode._limits import GUEST_MIN_MEMORY

    with pytest.raises(ValueError, match=str(GUEST_MIN_MEMORY)):
        Limits(memory=GUEST_MIN_MEMORY - 1)
    with pytest.raises(ValueError, match="whole number"):
        Limits(memory=float(64 << 20))  # type: ignore[arg-type]
    # The constant is the built guest's real minimum: one page less cannot instantiate.
    sandbox = Sandbox()
    await sandbox.load()
    assert isinstance(sandbox.backend, WasmBackend)
    assert sandbox.backend.min_memory == GUEST_MIN_MEMORY
    at_minimum = await sandbox.run("1 + 1", limits=Limits(memory=GUEST_MIN_MEMORY))
    assert at_minimum.value == 2, at_minimum.error


class _Returns:
    """A backend noting each `execute` that has returned: its worker is free."""

    name = "wasm"

    def __init__(self, inner: WasmBackend) -> None:
        self.inner = inner
        self.returned = 0

    def load(self) -> None:
        self.inner.load()

    def execute(self, request_json: str, host_call: Any, limits: Limits, guard: RunGuard) -> tuple[str, float]:
        try:
            return self.inner.execute(request_json, host_call, limits, guard)
        finally:
            self.returned += 1


async def test_a_run_cancelled_while_it_waits_for_a_slot_frees_its_worker_and_takes_no_slot() -> None:
    # It used to wait on for a slot until its deadline, holding its worker,
    # and then take the slot from a run still wanted.
    backend = _Returns(WasmBackend(pool=PoolSettings(warm=1, max=1)))
    sandbox = Sandbox(backend=backend)
    await sandbox.load()
    release, holding = anyio.Event(), anyio.Event()

    async def hold() -> str:
        holding.set()
        await release.wait()
        return "held"

    tools = [Tool(name="hold", fn=hold)]
    held: list[Any] = []

    async def holder() -> None:
        held.append(await sandbox.run("await tools.hold()", tools=tools, limits=Limits(timeout=120)))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await holding.wait()
            with anyio.move_on_after(0.3):  # waits for the one slot, then is cancelled
                await sandbox.run("1 + 1", limits=Limits(timeout=100))
            with anyio.fail_after(10):  # not its 100 s timeout, nor when the slot frees
                while backend.returned < 1:  # no event to wait on: a worker thread returning
                    await anyio.sleep(0.01)
            release.set()
    assert held[0].value == "held", held[0].error
    assert backend.returned == 2
