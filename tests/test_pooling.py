"""The wasm backend's pooled instances: slots are reused, runs are not."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anyio
import pytest

from codemode import Limits, MemoryLimitExceeded, RunTimeout, Sandbox, Tool
from codemode._sandbox import pooling as _pooling
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


async def test_runs_past_the_pool_wait_for_a_slot_within_their_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pooling, "INSTANCES", 2)
    backend = WasmBackend()  # its own engine: a pool of two slots
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
