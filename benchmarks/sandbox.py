"""Sandbox speed, side by side in one run: wasm vs restricted vs `python -c`.

    python -m benchmarks.sandbox [--quick] [--json PATH]

Every figure is measured here, now, on this machine; each says what it is
(median / p95 of N runs). Ratios are against the wasm backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from codemode import Limits, Sandbox, Tool
from codemode._wasm import WasmBackend


def _noop(x: int = 0) -> int:
    return x


async def _async_noop(x: int = 0) -> int:
    return x


_SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}}
# A sync tool is answered on the sandbox's worker thread; an async one on the
# event loop, which costs a hop between threads per crossing.
NOOP = [Tool(name="noop", fn=_noop, input_schema=_SCHEMA)]
ASYNC_NOOP = [Tool(name="noop", fn=_async_noop, input_schema=_SCHEMA)]
CHAIN = "x = 0\nfor i in range({n}):\n    x = await tools.noop(x=i)\nx"
LIMITS = Limits(timeout=120, max_tool_calls=100_000)


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": statistics.median(ordered) * 1e3,
            "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1e3, "n": len(ordered)}


async def _timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return samples


async def cold_start(sandbox: Sandbox, n: int) -> dict[str, float]:
    """Fresh instance (wasm) or namespace (restricted) + trivial program, through Sandbox.run."""
    async def once() -> None:
        result = await sandbox.run("1 + 1", limits=LIMITS)
        assert result.value == 2, result.error
    await _timed(once, 5)  # warm the process, not the instances: every run is fresh anyway
    return _stats(await _timed(once, n))


async def crossing(sandbox: Sandbox, calls: int, reps: int, tools: list[Tool] = NOOP) -> dict[str, float]:
    """Per tool call: (chain of `calls` sequential no-op calls - chain of 0) / calls, median over reps."""
    async def chain(n: int) -> float:
        t0 = time.perf_counter()
        result = await sandbox.run(CHAIN.format(n=n), tools=tools, limits=LIMITS)
        assert result.ok, result.error
        return time.perf_counter() - t0
    base = statistics.median([await chain(0) for _ in range(reps)])
    full = statistics.median([await chain(calls) for _ in range(reps)])
    return {"per_call_us": (full - base) / calls * 1e6, "calls": calls, "reps": reps}


async def throughput(backend: str, threads: int, runs: int) -> float:
    """Short runs per second with `threads` runs in flight at once."""
    sandbox = Sandbox(backend=backend, max_concurrency=threads)  # type: ignore[arg-type]
    code = "sum(i * i for i in range(2000))"
    await sandbox.run(code)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(runs):
            tg.start_soon(sandbox.run, code)
    return runs / (time.perf_counter() - t0)


def python_c(n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "print(1 + 1)"], check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return _stats(samples)


def python_c_throughput(threads: int, runs: int) -> float:
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> None:
        subprocess.run([sys.executable, "-c", "print(sum(i * i for i in range(2000)))"], check=True, capture_output=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(runs)))
    return runs / (time.perf_counter() - t0)


async def measure(quick: bool) -> dict[str, Any]:
    n_cold, calls, reps, runs, n_py = (30, 200, 3, 40, 5) if quick else (300, 1000, 5, 400, 30)
    wasm = Sandbox()
    await wasm.load()
    public_api = Sandbox(backend=WasmBackend(direct_host_call=False))
    await public_api.load()
    restricted = Sandbox(backend="restricted")
    out: dict[str, Any] = {"quick": quick, "python": sys.version.split()[0]}
    out["cold_start"] = {"wasm": await cold_start(wasm, n_cold), "restricted": await cold_start(restricted, n_cold),
                         "python -c": python_c(n_py)}
    out["crossing"] = {"wasm, sync tool": await crossing(wasm, calls, reps),
                       "wasm, sync tool, wasmtime-py public add_func": await crossing(public_api, calls, reps),
                       "wasm, async tool (hop to the event loop)": await crossing(wasm, calls, reps, ASYNC_NOOP),
                       "restricted, sync tool": await crossing(restricted, calls, reps),
                       "restricted, async tool": await crossing(restricted, calls, reps, ASYNC_NOOP)}
    out["throughput_runs_per_s"] = {
        "wasm": {"1": await throughput("wasm", 1, runs), "2": await throughput("wasm", 2, runs)},
        "restricted": {"1": await throughput("restricted", 1, runs), "2": await throughput("restricted", 2, runs)},
        "python -c": {"1": python_c_throughput(1, max(10, runs // 10)), "2": python_c_throughput(2, max(10, runs // 10))},
    }
    return out


def render(data: dict[str, Any]) -> str:
    cold, cross, tput = data["cold_start"], data["crossing"], data["throughput_runs_per_s"]
    base = cold["wasm"]["median_ms"]
    lines = [
        f"codemode sandbox benchmark ({'quick' if data['quick'] else 'full'}; host Python {data['python']})",
        "",
        "Cold start + trivial program (fresh sandbox per run; `1 + 1`)",
        "| system | median ms | p95 ms | runs | median vs wasm |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in cold.items():
        lines.append(f"| {name} | {s['median_ms']:.2f} | {s['p95_ms']:.2f} | {s['n']} | {s['median_ms'] / base:.2f}x |")
    lines += ["", "One tool-call crossing (sequential chain of no-op tool calls, per call; median of reps)",
              "| system | µs per call | calls x reps |", "|---|---:|---:|"]
    for name, s in cross.items():
        lines.append(f"| {name} | {s['per_call_us']:.1f} | {s['calls']} x {s['reps']} |")
    lines += ["", "Throughput of short runs (`sum(i * i for i in range(2000))`), runs per second",
              "| system | 1 thread | 2 threads | 2 / 1 |", "|---|---:|---:|---:|"]
    for name, s in tput.items():
        lines.append(f"| {name} | {s['1']:.0f} | {s['2']:.0f} | {s['2'] / s['1']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: proves it works, numbers are rough")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    data = anyio.run(measure, args.quick)
    print(render(data))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
