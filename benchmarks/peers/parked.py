"""Runs parked in a slow async tool, in a fresh process so nothing else inflates it.

    python -m benchmarks.peers.parked {wasm|restricted|monty} N HOLD_S IDLE_S

Starts the system and does one run, then starts N runs at once, each of which
calls an async tool that sleeps HOLD_S seconds, and waits for all of them.
Memory is that of this process plus every descendant (monty's workers),
sampled every 50 ms, two ways: the resident set (VmRSS), which counts a page
of the guest's snapshot once for every instance that maps it, and the
proportional set (Pss, from smaps_rollup), which shares such a page among
its mappings and so is what the runs cost the machine. Monty parks a run as a dumped
snapshot (see `_monty`). Prints JSON: wall time of the burst,
memory before it, its peak, and memory IDLE_S seconds after it with the
system still open (a service keeps it), in kB.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _rss_kb(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _pss_kb(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def total_rss_kb() -> int:
    me = os.getpid()
    return _rss_kb(me) + sum(_rss_kb(p) for p in _descendants(me))


def total_pss_kb() -> int:
    me = os.getpid()
    return _pss_kb(me) + sum(_pss_kb(p) for p in _descendants(me))


def _memory() -> dict[str, int]:
    return {"rss_kb": total_rss_kb(), "pss_kb": total_pss_kb()}


class Sampler:
    """The peaks of RSS and PSS while it runs."""

    def __init__(self) -> None:
        self.peak = {"rss_kb": 0, "pss_kb": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        for key, value in _memory().items():
            self.peak[key] = max(self.peak[key], value)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


async def _codemode(backend: str, n: int, hold: float, idle: float) -> dict[str, Any]:
    import anyio

    from codemode import Limits, Sandbox, Tool

    async def wait() -> str:
        await anyio.sleep(hold)
        return "done"

    tools = [Tool(name="wait", fn=wait)]
    sandbox = Sandbox(backend=backend, max_concurrency=n)  # type: ignore[arg-type]
    await sandbox.load()
    limits = Limits(timeout=120)
    assert (await sandbox.run("1 + 1", limits=limits)).value == 2
    before = _memory()
    results: list[Any] = []

    async def one() -> None:
        results.append(await sandbox.run("await tools.wait()", tools=tools, limits=limits))

    with Sampler() as sampler:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        wall = time.perf_counter() - t0
    bad = [r.error for r in results if r.value != "done"]
    assert not bad, bad[:3]
    await anyio.sleep(idle)
    return _figures(wall, before, sampler, idle)


async def _monty(n: int, hold: float, idle: float) -> dict[str, Any]:
    """Monty's way to park: a run stops at its tool call as a snapshot, which is
    dumped (a few kB) and its session given back; when the tool returns, a
    fresh session loads the snapshot and resumes. (A run kept in its session
    holds a worker process: one session runs at a time per worker.)"""
    import asyncio

    import pydantic_monty

    async def wait() -> str:
        await asyncio.sleep(hold)
        return "done"

    async with pydantic_monty.AsyncMonty(min_processes=1, max_processes=2) as pool:

        async def one() -> Any:
            async with pool.checkout() as session:
                snapshot = await session.feed_start("wait()")  # a host call, answered at resume
                assert snapshot.function_name == "wait", snapshot
                state = snapshot.dump()
            value = await wait()
            async with pool.checkout() as session:
                snapshot = await session.load_snapshot(state)
                return (await snapshot.resume({"return_value": value})).output

        assert await one() == "done"
        before = _memory()
        with Sampler() as sampler:
            t0 = time.perf_counter()
            results = await asyncio.gather(*[one() for _ in range(n)])
            wall = time.perf_counter() - t0
        assert all(r == "done" for r in results), results[:3]
        await asyncio.sleep(idle)
        return _figures(wall, before, sampler, idle)


def _figures(wall: float, before: dict[str, int], sampler: Sampler, idle: float) -> dict[str, Any]:
    after = _memory()
    out: dict[str, Any] = {"wall_s": wall}
    for kind in ("rss", "pss"):
        key = f"{kind}_kb"
        out.update(
            {
                f"{kind}_before_kb": before[key],
                f"{kind}_peak_kb": sampler.peak[key],
                f"{kind}_after_idle_kb": after[key],
            }
        )
    return out


def main(system: str, n: int, hold: float, idle: float) -> None:
    if system in ("wasm", "restricted"):
        import anyio

        out = anyio.run(_codemode, system, n, hold, idle)
    elif system == "monty":
        import asyncio

        out = asyncio.run(_monty(n, hold, idle))
    else:
        raise SystemExit(f"unknown system {system!r}")
    print(json.dumps(out), flush=True)
    # pydantic-monty 1.4.0 sometimes aborts at interpreter exit (SIGABRT, after
    # its pool has closed): the figures are out, so leave without the teardown.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
