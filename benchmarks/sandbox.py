"""Sandbox speed, side by side in one run: codemode's wasm and restricted
backends against peer sandboxes (pydantic-monty, Pyodide under node, `python -c`).

    python -m benchmarks.sandbox [--quick] [--only service] [--json PATH]

Same programs, same machine, one run: start + trivial program, a CPU-bound
loop, a 100-call tool chain through each system's own external-function
mechanism, everyday-code coverage and peak memory; then codemode's own
crossing cost and throughput; then what a shared service feels (issue 16):
runs parked in a slow async tool, toolsets of 10 to 1,000 tools, the async
crossing and CPU per run (`--only service` runs just those). Every figure is measured here, now; each says
what it is (median / p95 of N runs). Ratios are against the wasm backend. A
peer that cannot run a program, or cannot run here at all, is reported with
the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from benchmarks.peers import pyodide, subprocess_runner
from benchmarks.peers.programs import COVERAGE, CPU, TRIVIAL, chain_program, expected, run_last_expression
from codemode import Limits, Sandbox, Tool
from codemode._sandbox.wasm import WasmBackend

MONTY_PIN = "1.4.0"
PARKED_HOLD_S = 2.0
CHAIN_CALLS = 100
IDLE_PAUSE_S = 0.01
EXPECTED = expected()
"""What each coverage program returns in this host's CPython."""
CPU_VALUE = run_last_expression(CPU)


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
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1e3,
        "n": len(ordered),
    }


def per_call(chain: dict[str, float], start: dict[str, float], calls: int) -> dict[str, Any]:
    """One call's cost from a chain of `calls` calls and the bare start, both
    `_stats`: (chain median - start median) / calls.

    Each median is only known to within about (p95 - median) / sqrt(n) of its
    samples. When the difference is no larger than that scatter, the figure is
    noise (a quick run once printed a negative cost per call for `python -c`,
    whose start varies by tens of ms): it is then None, with a note saying why."""
    diff_ms = chain["median_ms"] - start["median_ms"]
    scatter_ms = sum(max(0.0, s["p95_ms"] - s["median_ms"]) / math.sqrt(max(1, s["n"])) for s in (chain, start))
    if diff_ms <= scatter_ms:
        return {
            "per_call_us": None,
            "per_call_note": f"below resolution: {calls} calls added {diff_ms:.1f} ms to the start's median, "
            f"within the {scatter_ms:.1f} ms the two medians scatter by",
        }
    return {"per_call_us": diff_ms / calls * 1e3}


async def _timed(fn: Callable[[], Awaitable[Any]], n: int, pause_s: float = 0.0) -> list[float]:
    samples = []
    for _ in range(n):
        if pause_s:
            await anyio.sleep(pause_s)  # not timed
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return samples


async def cold_start(sandbox: Sandbox, n: int, pause_s: float = 0.0) -> dict[str, float]:
    """Fresh instance (wasm) or namespace (restricted) + trivial program, through
    Sandbox.run; `pause_s` between runs (untimed) models an idle service."""

    async def once() -> None:
        result = await sandbox.run("1 + 1", limits=LIMITS)
        assert result.value == 2, result.error

    await _timed(once, 5)  # warm the process, not the instances: every run is fresh anyway
    return _stats(await _timed(once, n, pause_s))


async def crossing(sandbox: Sandbox, calls: int, reps: int, tools: list[Tool] = NOOP) -> dict[str, float]:
    """Per tool call: (chain of `calls` sequential no-op calls - chain of 0) / calls, median over reps."""

    async def chain(n: int) -> float:
        t0 = time.perf_counter()
        result = await sandbox.run(CHAIN.format(n=n), tools=tools, limits=LIMITS)
        assert result.ok, result.error
        return time.perf_counter() - t0

    base = statistics.median([await chain(0) for _ in range(reps)])
    full = statistics.median([await chain(calls) for _ in range(reps)])
    # Thousands of calls stand far above the noise; a cost that is not is not a cost.
    return {"per_call_us": (full - base) / calls * 1e6 if full > base else None, "calls": calls, "reps": reps}


SHORT_RUN = "sum(i * i for i in range(2000))"
LONG_RUN = "sum(i * i for i in range(300000))"


async def throughput(backend: str, threads: int, runs: int, code: str = SHORT_RUN) -> float:
    """Runs per second with `threads` runs in flight at once."""
    sandbox = Sandbox(backend=backend, max_concurrency=threads)  # type: ignore[arg-type]
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
        subprocess.run(
            [sys.executable, "-c", "print(sum(i * i for i in range(2000)))"], check=True, capture_output=True
        )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(runs)))
    return runs / (time.perf_counter() - t0)


# -- peers: the same programs on every system --------------------------------------------------


def _value_problem(value: Any, want: Any) -> str | None:
    return None if value == want else f"returned {value!r}, expected {want!r}"


async def codemode_peer(sandbox: Sandbox, n_cpu: int, n_chain: int) -> dict[str, Any]:
    """CPU loop, 100-call chain (sync no-op tool) and coverage on one backend."""

    async def run(code: str, tools: list[Tool] | None = None) -> tuple[Any, float, str | None]:
        t0 = time.perf_counter()
        result = await sandbox.run(code, tools=tools or [], limits=LIMITS)
        elapsed = time.perf_counter() - t0
        return (
            result.value,
            elapsed,
            (None if result.ok else f"{type(result.error).__name__}: {str(result.error).splitlines()[0][:160]}"),
        )

    chain = chain_program(CHAIN_CALLS, "await tools.noop(x=i)")
    cpu, chains = [], []
    for _ in range(n_cpu):
        value, elapsed, error = await run(CPU)
        assert error is None and value == CPU_VALUE, (value, error)
        cpu.append(elapsed)
    for _ in range(n_chain):
        value, elapsed, error = await run(chain, NOOP)
        assert error is None and value == CHAIN_CALLS - 1, (value, error)
        chains.append(elapsed)
    coverage = {}
    for name, code in COVERAGE.items():
        value, _, error = await run(code)
        coverage[name] = error or _value_problem(value, EXPECTED[name]) or "ok"
    return {"cpu": _stats(cpu), "chain": _stats(chains), "coverage": coverage}


def monty_peer(n_cold: int, n_cpu: int, n_chain: int) -> dict[str, Any]:
    """pydantic-monty: a warm pool of one worker process; each run is a fresh
    session (`checkout`) fed one program; tools are host functions (`external_lookup`)."""
    try:
        import pydantic_monty
    except ImportError:
        return {"unavailable": f"pydantic-monty is not installed (pip install pydantic-monty=={MONTY_PIN})"}

    def feed(pool: Any, code: str, lookup: dict[str, Any] | None = None) -> tuple[Any, float]:
        t0 = time.perf_counter()
        with pool.checkout() as session:
            value = session.feed_run(code, external_lookup=lookup)
        return value, time.perf_counter() - t0

    t0 = time.perf_counter()
    with pydantic_monty.Monty(min_processes=1, max_processes=1) as pool:
        feed(pool, TRIVIAL)
        pool_start = time.perf_counter() - t0
        for _ in range(4):
            feed(pool, TRIVIAL)  # warm the worker, as the other systems are warmed
        start = [feed(pool, TRIVIAL)[1] for _ in range(n_cold)]
        cpu = []
        for _ in range(n_cpu):
            value, elapsed = feed(pool, CPU)
            assert value == CPU_VALUE, value
            cpu.append(elapsed)
        chains, chain = [], chain_program(CHAIN_CALLS, "noop(x=i)")
        for _ in range(n_chain):
            value, elapsed = feed(pool, chain, {"noop": _noop})
            assert value == CHAIN_CALLS - 1, value
            chains.append(elapsed)
        coverage = {}
        for name, code in COVERAGE.items():
            try:
                coverage[name] = _value_problem(feed(pool, code)[0], EXPECTED[name]) or "ok"
            except pydantic_monty.MontyError as exc:
                coverage[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}"
    return {
        "version": pydantic_monty.__version__,
        "pool_start_ms": pool_start * 1e3,
        "start": _stats(start),
        "cpu": _stats(cpu),
        "chain": _stats(chains),
        "coverage": coverage,
    }


def python_c_peer(n_cpu: int, n_chain: int) -> dict[str, Any]:
    """A fresh `python -c` process per program; tools over a JSON-lines pipe."""
    base = [subprocess_runner.run(TRIVIAL)[1] for _ in range(n_chain)]
    cpu = []
    for _ in range(n_cpu):
        value, elapsed, _ = subprocess_runner.run(CPU)
        assert value == CPU_VALUE, value
        cpu.append(elapsed)
    chains, chain, rss = [], chain_program(CHAIN_CALLS, "noop(x=i)"), None
    for _ in range(n_chain):
        value, elapsed, rss = subprocess_runner.run(chain, {"noop": _noop})
        assert value == CHAIN_CALLS - 1, value
        chains.append(elapsed)
    coverage = {}
    for name, code in COVERAGE.items():
        try:
            coverage[name] = _value_problem(subprocess_runner.run(code)[0], EXPECTED[name]) or "ok"
        except RuntimeError as exc:
            coverage[name] = str(exc)[:160]
    return {
        "runner_start": _stats(base),
        "cpu": _stats(cpu),
        "chain": _stats(chains),
        "coverage": coverage,
        "child_rss_kb": rss,
    }


def pyodide_peer(n_cold: int, n_warm: int, n_cpu: int, n_chain: int) -> dict[str, Any]:
    """Pyodide in node: fresh interpreters (loadPyodide), then warm runs in one
    interpreter; tools are JS functions called from Python."""
    spec = {
        "cold": n_cold,
        "warm": n_warm,
        "cpu": {"code": CPU, "n": n_cpu},
        "chain": {"code": chain_program(CHAIN_CALLS, "noop(i)"), "n": n_chain},
        "coverage": COVERAGE,
    }
    try:
        data = pyodide.measure(spec)
    except pyodide.Unavailable as exc:
        return {"unavailable": str(exc)}
    if data.get("cpu_value") != CPU_VALUE or data.get("chain_value") != CHAIN_CALLS - 1:
        return {"unavailable": f"wrong results: cpu {data.get('cpu_value')!r}, chain {data.get('chain_value')!r}"}
    coverage = {
        name: (_value_problem(r.get("value"), EXPECTED[name]) or "ok") if r["ok"] else r["error"][:160]
        for name, r in data["coverage"].items()
    }
    return {
        "version": data["version"],
        "start": _stats_ms(data["cold_ms"]),
        "warm": _stats_ms(data["warm_ms"]),
        "cpu": _stats_ms(data["cpu_ms"]),
        "chain": _stats_ms(data["chain_ms"]),
        "coverage": coverage,
        "rss_kb": data["max_rss_kb"],
    }


def _stats_ms(samples_ms: list[float]) -> dict[str, float]:
    return _stats([x / 1e3 for x in samples_ms])


def memory_probe(system: str) -> dict[str, Any]:
    """Peak RSS (kB) of a fresh process that runs `system` (see peers/memprobe.py)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.memprobe", system],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        return {"unavailable": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]}
    peaks: dict[str, Any] = json.loads(proc.stdout)
    return peaks


async def measure(quick: bool) -> dict[str, Any]:
    n_cold, calls, reps, runs, n_py = (30, 200, 3, 40, 5) if quick else (300, 1000, 5, 400, 30)
    n_cpu, n_chain, n_pyodide = (3, 5, 1) if quick else (10, 20, 3)
    wasm = Sandbox()
    await wasm.load()
    public_api = Sandbox(backend=WasmBackend(direct_host_call=False))
    await public_api.load()
    restricted = Sandbox(backend="restricted")
    out: dict[str, Any] = {"quick": quick, "python": sys.version.split()[0]}
    monty = monty_peer(n_cold, n_cpu, n_chain)
    node = pyodide_peer(n_pyodide, n_cold, n_cpu, n_chain)
    py_c = python_c_peer(n_cpu, n_chain)
    out["cold_start"] = {
        "wasm": await cold_start(wasm, n_cold),
        "wasm, runs 10 ms apart": await cold_start(wasm, n_cold, IDLE_PAUSE_S),
        "restricted": await cold_start(restricted, n_cold),
        "pydantic-monty": monty.get("start", monty),
        "python -c": python_c(n_py),
        "pyodide": node.get("start", node),
        "pyodide, warm interpreter": node.get("warm", node),
    }
    systems = {
        "wasm": await codemode_peer(wasm, n_cpu, n_chain),
        "restricted": await codemode_peer(restricted, n_cpu, n_chain),
        "pydantic-monty": monty,
        "python -c": py_c,
        "pyodide": node,
    }
    out["cpu"] = {name: s.get("cpu", s) for name, s in systems.items()}
    out["chain100"] = {}
    for name, s in systems.items():
        if "chain" not in s:
            out["chain100"][name] = s
            continue
        base = (
            py_c["runner_start"]
            if name == "python -c"
            else (node["warm"] if name == "pyodide" else out["cold_start"][name])
        )
        out["chain100"][name] = {
            **s["chain"],
            "calls": CHAIN_CALLS,
            "mechanism": MECHANISMS[name],
            **per_call(s["chain"], base, CHAIN_CALLS),
        }
    out["coverage"] = {name: s.get("coverage", s) for name, s in systems.items()}
    probes = {
        name: memory_probe(probe)
        for name, probe in (
            ("python baseline", "baseline"),
            ("wasm", "wasm"),
            ("restricted", "restricted"),
            ("pydantic-monty", "monty"),
        )
    }
    out["memory_kb"] = {
        name: probe if "unavailable" in probe else {"host": probe["self_kb"], "worker": probe["children_kb"]}
        for name, probe in probes.items()
    }
    out["memory_kb"]["python -c"] = {"host": None, "worker": py_c["child_rss_kb"]}
    out["memory_kb"]["pyodide"] = {"host": node["rss_kb"], "worker": None} if "rss_kb" in node else node
    out["versions"] = {"pydantic-monty": monty.get("version"), "pyodide": node.get("version"), "node": _node_version()}
    out["monty_pool_start_ms"] = monty.get("pool_start_ms")
    out["crossing"] = {
        "wasm, sync tool": await crossing(wasm, calls, reps),
        "wasm, sync tool, wasmtime-py public add_func": await crossing(public_api, calls, reps),
        "wasm, async tool (hop to the event loop)": await crossing(wasm, calls, reps, ASYNC_NOOP),
        "restricted, sync tool": await crossing(restricted, calls, reps),
        "restricted, async tool": await crossing(restricted, calls, reps, ASYNC_NOOP),
    }
    out["throughput_runs_per_s"] = {
        "wasm": {"1": await throughput("wasm", 1, runs), "2": await throughput("wasm", 2, runs)},
        "restricted": {"1": await throughput("restricted", 1, runs), "2": await throughput("restricted", 2, runs)},
        "python -c": {
            "1": python_c_throughput(1, max(10, runs // 10)),
            "2": python_c_throughput(2, max(10, runs // 10)),
        },
        # Long runs show whether the guest itself runs in parallel; short ones are
        # bound by per-run instance set-up and tear-down.
        "wasm, long runs": {
            "1": await throughput("wasm", 1, max(6, runs // 10), LONG_RUN),
            "2": await throughput("wasm", 2, max(6, runs // 10), LONG_RUN),
        },
    }
    return out


# -- what a shared service feels (issue 16) --------------------------------------------------


def parked(system: str, n: int, idle_s: float) -> dict[str, Any]:
    """N runs at once, each parked PARKED_HOLD_S in an async tool (peers/parked.py)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.parked", system, str(n), str(PARKED_HOLD_S), str(idle_s)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        return {"unavailable": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]}
    data: dict[str, Any] = json.loads(proc.stdout)
    for kind in ("rss", "pss"):
        data[f"{kind}_per_run_kb"] = (data[f"{kind}_peak_kb"] - data[f"{kind}_before_kb"]) / n
    data["idle_s"] = idle_s
    return data


_VERBS = ("get", "list", "create", "update", "delete", "search", "archive", "export")
_NOUNS = ("issue", "user", "project", "comment", "label", "invoice", "order", "file", "team", "repo")


async def _api_tool(**kwargs: Any) -> dict[str, Any]:
    return {"ok": True}


def api_tools(n: int) -> list[Tool]:
    """`n` tools in one namespace, shaped like a large REST API: an id, a
    default, an enum; every 4th takes an object, every 3rd declares its output."""
    tools = []
    for i in range(n):
        verb, noun = _VERBS[i % len(_VERBS)], _NOUNS[(i // len(_VERBS)) % len(_NOUNS)]
        props: dict[str, Any] = {
            "id": {"type": "string", "description": f"The {noun}'s id."},
            "limit": {"type": "integer", "default": 10, "description": "Most results to return."},
            "state": {"enum": ["open", "closed", "all"], "default": "open"},
        }
        if i % 4 == 0:
            props["filter"] = {
                "type": "object",
                "description": f"Narrow the {noun}s.",
                "properties": {"field": {"type": "string"}, f"{noun}_value": {"type": "string"}},
                "required": ["field"],
            }
        output = {"type": "object", "properties": {"id": {"type": "string"}, f"{noun}_title": {"type": "string"}}}
        tools.append(
            Tool(
                name=f"{verb}_{noun}_{i}",
                namespace="api",
                fn=_api_tool,
                description=f"{verb.title()} a {noun} ({i}). Works on the {noun} collection of the account.",
                input_schema={"type": "object", "properties": props, "required": ["id"]},
                output_schema=output if i % 3 == 0 else None,
            )
        )
    return tools


async def toolset(n: int, reps: int) -> dict[str, Any]:
    """Execute with one call, stubs for 3 tools, first search; `n` tools in one namespace."""
    from codemode import CodeMode

    tools = api_tools(n)
    code = f"await api.{tools[n // 2].name}(id='x')"
    names = [f"api.{tools[i].name}" for i in (1, n // 2, n - 1)]
    query = "list the open issues of a project"
    execute, stubs, first, cold = [], [], [], []
    for _ in range(reps):
        # Cold: a fresh CodeMode renders the stubs, then indexes them, then searches.
        cm = CodeMode(tools=tools, limits=LIMITS)
        t0 = time.perf_counter()
        cm.search_tools(query)
        cold.append(time.perf_counter() - t0)
        # First search once the stubs are rendered (as after any run): the index build and the search.
        cm = CodeMode(tools=tools, sandbox=cm.sandbox)
        cm.sandbox.stubs(cm.tools())
        t0 = time.perf_counter()
        cm.search_tools(query)
        first.append(time.perf_counter() - t0)
        cm.stubs(names)  # the first call may finish the index
        t0 = time.perf_counter()
        cm.stubs(names)
        stubs.append(time.perf_counter() - t0)
        async with cm:
            result = await cm.execute(code)
            assert result.ok, result.error
            for _ in range(3):
                t0 = time.perf_counter()
                result = await cm.execute(code)
                execute.append(time.perf_counter() - t0)
                assert result.ok, result.error
    return {
        "tools": n,
        "execute": _stats(execute),
        "stubs3": _stats(stubs),
        "first_search": _stats(first),
        "first_search_cold": _stats(cold),
    }


async def bare_hop(reps: int, hops: int) -> dict[str, Any]:
    """A worker thread awaits a no-op coroutine on the loop: anyio.from_thread.run
    against codemode's LoopCrossing (when this codemode has it), interleaved."""
    import anyio.from_thread
    import anyio.to_thread

    async def noop(x: int) -> int:
        return x

    ways: dict[str, Callable[[int], Any]] = {"anyio.from_thread.run": lambda i: anyio.from_thread.run(noop, i)}
    try:
        from codemode._sandbox.crossing import LoopCrossing

        crossing = LoopCrossing()
        ways["codemode LoopCrossing"] = lambda i: crossing.run(noop, i, timeout=10)
    except ImportError:
        pass

    def hop_us(way: Callable[[int], Any]) -> float:
        t0 = time.perf_counter()
        for i in range(hops):
            way(i)
        return (time.perf_counter() - t0) / hops * 1e6

    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(reps):
        for name, way in ways.items():
            samples[name].append(await anyio.to_thread.run_sync(hop_us, way))
    return {name: {"per_hop_us": statistics.median(v), "hops": hops, "reps": reps} for name, v in samples.items()}


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of this process and the given live ones."""
    total = sum(os.times()[:2])
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return total


async def cpu_per_run(runs: int) -> dict[str, Any]:
    """CPU time (all threads and workers) per short run, back to back."""
    out: dict[str, Any] = {}
    for backend in ("wasm", "restricted"):
        sandbox = Sandbox(backend=backend)  # type: ignore[arg-type]
        await sandbox.run(SHORT_RUN)
        c0, t0 = _cpu_s([]), time.perf_counter()
        for _ in range(runs):
            await sandbox.run(SHORT_RUN)
        out[backend] = {"cpu_ms": (_cpu_s([]) - c0) / runs * 1e3, "wall_ms": (time.perf_counter() - t0) / runs * 1e3}
    try:
        import pydantic_monty
    except ImportError:
        out["pydantic-monty"] = {"unavailable": "pydantic-monty is not installed"}
        return out
    with pydantic_monty.Monty(min_processes=1, max_processes=1) as pool:
        with pool.checkout() as session:
            session.feed_run(SHORT_RUN)
            worker = [session.worker_pid]
        c0, t0 = _cpu_s(worker), time.perf_counter()
        for _ in range(runs):
            with pool.checkout() as session:
                session.feed_run(SHORT_RUN)
        out["pydantic-monty"] = {
            "cpu_ms": (_cpu_s(worker) - c0) / runs * 1e3,
            "wall_ms": (time.perf_counter() - t0) / runs * 1e3,
        }
    return out


async def measure_service(quick: bool) -> dict[str, Any]:
    sizes = (16, 64) if quick else (16, 64, 256)
    idle_s = 3.0 if quick else 30.0
    out: dict[str, Any] = {"parked": {}}
    for n in sizes:
        for system in ("wasm", "restricted", "monty"):
            # RSS after the burst is read once per system, after the largest: waiting is most of the run time.
            out["parked"][f"{system} {n}"] = parked(system, n, idle_s if n == sizes[-1] else 1.0)
    reps = 2 if quick else 5
    out["toolset"] = [await toolset(n, reps) for n in (10, 100, 1000)]
    wasm = Sandbox()
    await wasm.load()
    calls, crossing_reps = (200, 3) if quick else (1000, 7)
    out["async_crossing"] = {
        "wasm, async tool (per call in a chain)": await crossing(wasm, calls, crossing_reps, ASYNC_NOOP),
        "wasm, sync tool (per call in a chain)": await crossing(wasm, calls, crossing_reps),
        "bare hop": await bare_hop(7 if quick else 15, 300),
    }
    out["cpu_per_run"] = await cpu_per_run(100 if quick else 400)
    return out


MECHANISMS = {
    "wasm": "`await tools.noop(x=i)`: a host function call out of the wasm guest, answered on the worker thread",
    "restricted": "`await tools.noop(x=i)`: an in-process Python call",
    "pydantic-monty": "`noop(x=i)`: external function (`external_lookup`), answered by the host over the worker pipe",
    "python -c": "`noop(x=i)`: a JSON line to the parent over stdout, the reply over stdin",
    "pyodide": "`noop(i)`: a JS function called from Python (no keyword arguments across the FFI)",
}


def _node_version() -> str | None:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _unavailable(s: dict[str, Any]) -> str | None:
    return s.get("unavailable") if isinstance(s, dict) else None


def _us(per_call_us: float | None) -> str:
    return "below resolution" if per_call_us is None else f"{per_call_us:.1f}"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def render(data: dict[str, Any]) -> str:
    cold, cross, tput = data["cold_start"], data["crossing"], data["throughput_runs_per_s"]
    base = cold["wasm"]["median_ms"]
    versions = data.get("versions", {})
    lines = [
        f"codemode sandbox benchmark ({'quick' if data['quick'] else 'full'}; host Python {data['python']}; "
        f"pydantic-monty {versions.get('pydantic-monty') or '-'}; pyodide {versions.get('pyodide') or '-'} on node "
        f"{versions.get('node') or '-'}). All figures measured in this run on this machine.",
        "",
        "Start + trivial program (`1 + 1`), fresh sandbox per run",
        "| system | what one run is | median ms | p95 ms | runs | median vs wasm |",
        "|---|---|---:|---:|---:|---:|",
    ]
    what = {
        "wasm": "new wasm instance (pre-initialized CPython component) + run, runs back to back",
        "wasm, runs 10 ms apart": "the same, each run after a 10 ms pause (an idle service)",
        "restricted": "new namespace in this process (not isolated) + run",
        "pydantic-monty": "new session on a warm worker process (`checkout` + `feed_run`)",
        "python -c": "new CPython process (`python -c 'print(1 + 1)'`)",
        "pyodide": "new interpreter in a warm node process (`loadPyodide` + `runPython`)",
        "pyodide, warm interpreter": "`runPython` in an already-loaded interpreter (fresh globals; no isolation)",
    }
    for name, s in cold.items():
        if reason := _unavailable(s):
            lines.append(f"| {name} | {what.get(name, '')} | cannot run here: {reason} | | | |")
            continue
        lines.append(
            f"| {name} | {what.get(name, '')} | {s['median_ms']:.2f} | {s['p95_ms']:.2f} | {s['n']} | "
            f"{_ratio(s['median_ms'], base)} |"
        )
    if data.get("monty_pool_start_ms") is not None:
        lines.append(
            f"\npydantic-monty: starting its worker pool (once per host process) plus the first run took "
            f"{data['monty_pool_start_ms']:.1f} ms, measured once. Its README claims a 0.06 ms start; "
            "the row above is the comparable figure (a fresh session on a warm worker)."
        )
    lines += [
        "",
        "CPU-bound loop (`total = (total + i * i) % 1_000_003` for 200,000 iterations), start included",
        "| system | median ms | p95 ms | runs | median vs wasm |",
        "|---|---:|---:|---:|---:|",
    ]
    cpu_base = data["cpu"]["wasm"]["median_ms"]
    for name, s in data["cpu"].items():
        if reason := _unavailable(s):
            lines.append(f"| {name} | cannot run here: {reason} | | | |")
            continue
        lines.append(
            f"| {name} | {s['median_ms']:.1f} | {s['p95_ms']:.1f} | {s['n']} | {_ratio(s['median_ms'], cpu_base)} |"
        )
    lines += [
        "",
        f"Tool chain: {CHAIN_CALLS} sequential calls of a no-op host tool, each taking the previous "
        "result, through each system's own external-function mechanism; start included. Per call = "
        '(chain median - start median) / 100, or "below resolution" when that difference is within the '
        "scatter of the two medians ((p95 - median) / sqrt(runs) each).",
        "| system | mechanism | chain median ms | p95 ms | runs | µs per call | chain vs wasm |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    chain_base = data["chain100"]["wasm"]["median_ms"]
    for name, s in data["chain100"].items():
        if reason := _unavailable(s):
            lines.append(f"| {name} | | cannot run here: {reason} | | | | |")
            continue
        lines.append(
            f"| {name} | {s['mechanism']} | {s['median_ms']:.2f} | {s['p95_ms']:.2f} | {s['n']} | "
            f"{_us(s['per_call_us'])} | {_ratio(s['median_ms'], chain_base)} |"
        )
    lines += [
        "",
        f"Everyday model code: {len(COVERAGE)} small programs, each run once; a value that differs from "
        "CPython's counts as a failure",
        "| system | programs run correctly | what failed |",
        "|---|---:|---|",
    ]
    for name, results in data["coverage"].items():
        if reason := _unavailable(results):
            lines.append(f"| {name} | cannot run here | {reason} |")
            continue
        failed = {k: v.splitlines()[0][:110] for k, v in results.items() if v != "ok"}
        detail = "; ".join(f"{k}: {v}" for k, v in failed.items()) or "-"
        lines.append(f"| {name} | {len(results) - len(failed)} / {len(results)} | {detail} |")
    lines += [
        "",
        "Peak memory (peak RSS, MB; one fresh process per system running the trivial program 20x, the CPU "
        "loop and the chain; measured once)",
        "| system | host process | separate worker / child | note |",
        "|---|---:|---:|---|",
    ]
    notes = {
        "python baseline": "an empty Python process: subtract it from in-process hosts",
        "wasm": "Python host + wasmtime + the CPython component, all in one process",
        "restricted": "Python host with codemode imported (runs in-process)",
        "pydantic-monty": "Python host + one `monty` worker process",
        "python -c": "the child process of the chain run",
        "pyodide": "the whole node process with one loaded interpreter",
    }
    for name, s in data["memory_kb"].items():
        if reason := _unavailable(s):
            lines.append(f"| {name} | cannot run here: {reason} | | |")
            continue
        host = f"{s['host'] / 1024:.1f}" if s.get("host") else "-"
        worker = f"{s['worker'] / 1024:.1f}" if s.get("worker") else "-"
        lines.append(f"| {name} | {host} | {worker} | {notes.get(name, '')} |")
    lines += [
        "",
        "codemode only: one tool-call crossing (sequential chain of no-op tool calls, per call; median of reps)",
        "| system | µs per call | calls x reps |",
        "|---|---:|---:|",
    ]
    for name, s in cross.items():
        lines.append(f"| {name} | {_us(s['per_call_us'])} | {s['calls']} x {s['reps']} |")
    lines += [
        "",
        f"Throughput, runs per second: short runs (`{SHORT_RUN}`); long runs (`{LONG_RUN}`)",
        "| system | 1 thread | 2 threads | 2 / 1 |",
        "|---|---:|---:|---:|",
    ]
    for name, s in tput.items():
        lines.append(f"| {name} | {s['1']:.0f} | {s['2']:.0f} | {s['2'] / s['1']:.2f}x |")
    return "\n".join(lines)


def render_service(data: dict[str, Any], today: dict[str, Any] | None = None) -> str:
    """The issue-16 rows; with `today` (the same figures from the code before),
    each row shows both."""

    def cell(get: Callable[[dict[str, Any]], Any], fmt: str) -> str:
        def one(d: dict[str, Any] | None) -> str:
            if d is None:
                return ""
            try:
                value = get(d)
            except (KeyError, TypeError, IndexError):
                return "-"
            return "-" if value is None else fmt.format(value)

        return f"{one(today)} | {one(data)}" if today is not None else one(data)

    def h(name: str) -> str:
        return f"{name}, today | {name}, now" if today is not None else name

    rule = "---:|---:" if today is not None else "---:"
    lines = [
        f"Runs parked {PARKED_HOLD_S:g} s in an async tool, N at once. Memory of the process and its workers: "
        "PSS (a page shared by several mappings split among them: what the runs cost the machine) and RSS "
        "(such a page counted once per mapping: each wasm instance maps the same snapshot)",
        f"| system, N | {h('wall s')} | {h('MiB per run, PSS')} | {h('peak PSS MB')} | "
        f"{h('PSS after idle MB')} | {h('MiB per run, RSS')} | {h('peak RSS MB')} | {h('RSS after idle MB')} |",
        f"|---|{rule}|{rule}|{rule}|{rule}|{rule}|{rule}|{rule}|",
    ]
    for key in data["parked"]:

        def get(field: str, scale: float = 1.0, key: str = key) -> Callable[[dict[str, Any]], Any]:
            return lambda d: d["parked"][key][field] / scale

        idle = data["parked"][key].get("idle_s")
        after = f" (after {idle:g} s)" if idle else ""
        lines.append(
            f"| {key} | {cell(get('wall_s'), '{:.2f}')} | {cell(get('pss_per_run_kb', 1024), '{:.2f}')} | "
            f"{cell(get('pss_peak_kb', 1024), '{:.0f}')} | {cell(get('pss_after_idle_kb', 1024), '{:.0f}')}{after} | "
            f"{cell(get('rss_per_run_kb', 1024), '{:.2f}')} | {cell(get('rss_peak_kb', 1024), '{:.0f}')} | "
            f"{cell(get('rss_after_idle_kb', 1024), '{:.0f}')} |"
        )
    lines += [
        "",
        "Toolset size: one namespace of N tools (median ms; execute = one call through CodeMode.execute on wasm; "
        "stubs = get_tool_stubs for 3 tools once the index exists; first search = index build + search once the "
        "stubs are rendered; cold = a fresh CodeMode: rendering, index and search)",
        f"| tools | {h('execute')} | {h('stubs for 3')} | {h('first search')} | {h('first search, cold')} |",
        f"|---:|{rule}|{rule}|{rule}|{rule}|",
    ]
    for i, row in enumerate(data["toolset"]):

        def ms(field: str, i: int = i) -> Callable[[dict[str, Any]], Any]:
            return lambda d: d["toolset"][i][field]["median_ms"]

        lines.append(
            f"| {int(row['tools']):,} | {cell(ms('execute'), '{:.2f}')} | {cell(ms('stubs3'), '{:.2f}')} | "
            f"{cell(ms('first_search'), '{:.1f}')} | {cell(ms('first_search_cold'), '{:.1f}')} |"
        )
    lines += [
        "",
        "Async crossing (µs; a chain of no-op calls, per call; the bare hop: a worker thread awaiting a "
        "no-op coroutine on the loop)",
        f"| what | {h('µs')} |",
        f"|---|{rule}|",
    ]
    for name, row in data["async_crossing"].items():
        if name == "bare hop":
            for way in row:
                lines.append(
                    f"| bare hop, {way} | "
                    f"{cell(lambda d, w=way: d['async_crossing']['bare hop'][w]['per_hop_us'], '{:.1f}')} |"
                )
            continue
        lines.append(f"| {name} | {cell(lambda d, n=name: d['async_crossing'][n]['per_call_us'], '{:.1f}')} |")
    lines += [
        "",
        f"CPU per short run (`{SHORT_RUN}`), back to back: all threads and workers",
        f"| system | {h('CPU ms')} | {h('wall ms')} |",
        f"|---|{rule}|{rule}|",
    ]
    for name in data["cpu_per_run"]:
        lines.append(
            f"| {name} | {cell(lambda d, n=name: d['cpu_per_run'][n]['cpu_ms'], '{:.2f}')} | "
            f"{cell(lambda d, n=name: d['cpu_per_run'][n]['wall_ms'], '{:.2f}')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: proves it works, numbers are rough")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--only", choices=["service"], help="run only the issue-16 rows (parked runs, toolset size, ...)"
    )
    parser.add_argument(
        "--today", type=Path, help="with --only service: JSON of a run of the code before, shown beside"
    )
    args = parser.parse_args(argv)
    if args.only == "service":
        data = anyio.run(measure_service, args.quick)
        print(render_service(data, json.loads(args.today.read_text()) if args.today else None))
    else:
        data = anyio.run(measure, args.quick)
        print(render(data))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
