"""Peak memory of one system, in a fresh process so nothing else inflates it.

    python -m benchmarks.peers.memprobe {baseline|wasm|restricted|monty}

Runs the trivial program 20 times, the CPU loop once and the 100-call chain
once, then prints JSON: this process's peak RSS and that of its live child
processes (monty's worker), in kB. `baseline` runs nothing: the interpreter
and this module's imports alone.

Peak RSS is `VmHWM` from /proc/<pid>/status, which starts afresh at exec;
`getrusage`'s `ru_maxrss` would not do: Linux carries it across fork and exec,
so a child of a large process reports at least the parent's size.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks.peers.programs import CPU, TRIVIAL, chain_program


def _noop(x: int = 0) -> int:
    return x


async def _codemode(backend: str) -> None:
    from codemode import Limits, Sandbox, Tool

    sandbox = Sandbox(backend=backend)  # type: ignore[arg-type]
    await sandbox.load()
    tools = [Tool(name="noop", fn=_noop, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})]
    limits = Limits(timeout=120, max_tool_calls=10_000)
    for _ in range(20):
        await sandbox.run(TRIVIAL, limits=limits)
    await sandbox.run(CPU, limits=limits)
    result = await sandbox.run(chain_program(100, "await tools.noop(x=i)"), tools=tools, limits=limits)
    assert result.value == 99, result.error


def peak_rss_kb(pid: int | str = "self") -> int | None:
    """The peak resident set size of a live process, in kB (Linux), else None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _children_peak_kb() -> int | None:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids += (task / "children").read_text().split()
        except OSError:
            continue
    peaks = [p for p in (peak_rss_kb(pid) for pid in pids) if p is not None]
    return max(peaks) if peaks else None


def _monty() -> int | None:
    import pydantic_monty

    with pydantic_monty.Monty(min_processes=1, max_processes=1) as pool:
        for code in [TRIVIAL] * 20 + [CPU]:
            with pool.checkout() as session:
                session.feed_run(code)
        with pool.checkout() as session:
            assert session.feed_run(chain_program(100, "noop(x=i)"), external_lookup={"noop": _noop}) == 99
        return _children_peak_kb()  # while the worker is alive


def main(system: str) -> None:
    children = None
    if system in ("wasm", "restricted"):
        import anyio

        anyio.run(_codemode, system)
    elif system == "monty":
        children = _monty()
    elif system != "baseline":
        raise SystemExit(f"unknown system {system!r}")
    print(json.dumps({"self_kb": peak_rss_kb(), "children_kb": children}))


if __name__ == "__main__":
    main(sys.argv[1])
