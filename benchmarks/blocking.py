"""How soon a guest blocked in a WASI wait gives back its worker thread.

    python -m benchmarks.blocking [--quick]

For each way a guest can block (select, poll, selectors, sleeps reached past
the guest's own patches, asyncio.sleep), each waiting 6 s:
- under `Limits(timeout=1)`: how long after the run's deadline `execute`
  returned, i.e. the worker thread and pool slot were free again;
- with `timeout=30`, the caller cancelled at 0.3 s: how long after the
  cancellation the thread was free.
Then a flood: 256 concurrent runs of `select.select([], [], [], 240)` with a
0.2 s timeout through one `Sandbox(max_concurrency=16)`, how long they took,
the process's threads after them, and ten runs of `1 + 1` right after. (The
HTTP form of the flood is a test: tests/test_sandbox_wasi.py.)
Every figure is measured here, now (median and max of the reps).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import anyio

from codemode import Limits, Sandbox
from codemode._sandbox.epoch import RunGuard
from codemode._sandbox.runner import _backend

BLOCKING = {
    "select.select(6)": "import select\nselect.select([], [], [], 6)",
    "select.poll().poll(6000)": "import select\nselect.poll().poll(6000)",
    "selectors ... .select(6)": "import selectors\nselectors.DefaultSelector().select(6)",
    "time.sleep(6)": "import time\ntime.sleep(6)",
    "runtime._real_sleep(6)": "import runtime\nruntime._real_sleep(6)",
    "deadline field None, time.sleep(6)": "import runtime, time\nruntime._run_state.deadline = None\ntime.sleep(6)",
    "asyncio.sleep(6)": "import asyncio\nawait asyncio.sleep(6)",
}


class _Timed:
    """The process's wasm backend, noting when each execute returned."""

    name = "wasm"

    def __init__(self) -> None:
        self.inner = _backend("wasm")
        self.returned_at: float | None = None
        self.deadline: float | None = None

    def load(self) -> None:
        self.inner.load()

    def execute(self, request_json: str, host_call: Any, limits: Limits, guard: RunGuard) -> tuple[str, float]:
        self.deadline = guard.deadline
        try:
            return self.inner.execute(request_json, host_call, limits, guard)
        finally:
            self.returned_at = time.monotonic()


async def _after_deadline(code: str) -> float:
    backend = _Timed()
    async with Sandbox(backend=backend) as sandbox:
        await sandbox.run(code, limits=Limits(timeout=1))
        with anyio.fail_after(10):
            while backend.returned_at is None:
                await anyio.sleep(0.001)
    assert backend.deadline is not None
    return backend.returned_at - backend.deadline


async def _after_cancel(code: str) -> float:
    backend = _Timed()
    async with Sandbox(backend=backend) as sandbox:
        with anyio.move_on_after(0.3):
            await sandbox.run(code, limits=Limits(timeout=30))
        cancelled = time.monotonic()
        with anyio.fail_after(10):
            while backend.returned_at is None:
                await anyio.sleep(0.001)
    return backend.returned_at - cancelled


async def _flood(n: int) -> tuple[float, int, list[float]]:
    sandbox = Sandbox(max_concurrency=16)
    await sandbox.load()
    limits = Limits(timeout=0.2)

    async def blocked() -> None:
        await sandbox.run("import select\nselect.select([], [], [], 240)", limits=limits)

    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(blocked)
    took = time.monotonic() - t0
    threads = threading.active_count()
    times = []
    for _ in range(10):
        t1 = time.monotonic()
        result = await sandbox.run("1 + 1")
        times.append(time.monotonic() - t1)
        assert result.ok and result.value == 2, result.error
    return took, threads, times


async def main(quick: bool) -> None:
    reps = 1 if quick else 3
    print("A guest blocked in a WASI wait: ms from the run's deadline (timeout 1 s), and from its caller's")
    print(f"cancellation (at 0.3 s), until its worker thread was free; median / max of {reps}")
    print("| wait (6 s) | after the deadline, ms | after the cancellation, ms |")
    print("|---|---:|---:|")
    for name, code in BLOCKING.items():
        late = [await _after_deadline(code) * 1000 for _ in range(reps)]
        cancel = [await _after_cancel(code) * 1000 for _ in range(reps)]
        print(
            f"| `{name}` | {statistics.median(late):.1f} / {max(late):.1f} "
            f"| {statistics.median(cancel):.1f} / {max(cancel):.1f} |"
        )
    n = 64 if quick else 256
    took, threads, ones = await _flood(n)
    print()
    print(
        f"Flood: {n} concurrent runs of select.select(240) with a 0.2 s timeout through a Sandbox(max_concurrency=16)"
        f" (a run still waiting for the gate at its deadline ends without entering the guest): {took:.2f} s; "
        f"{threads} threads in the process after; then `1 + 1` x 10: first {ones[0] * 1000:.1f} ms, "
        f"median {statistics.median(ones) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one rep each, a flood of 64")
    args = parser.parse_args()
    anyio.run(main, args.quick)
