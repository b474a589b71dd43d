"""How fast a stdio server's oversized answer is refused, and what it costs the
host meanwhile: `python -m benchmarks.upstream_big_result [--sizes 16,50]`.

For each size (MB) the raw fixture server writes one answer of that size; the
hub (default cap: 4 x 1,000,000 + 64 KiB) refuses it. Printed per size: the
time until the call failed, until the next call to that server answered
(the rest of the line skipped), the host's peak RSS growth, and the slowest of
`echo` calls made every 10 ms on a second server during it (a stall of the
event loop shows there). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import anyio

from codemode import Hub, ToolError, parse_config

RAW = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "servers" / "raw_server.py"


def _entry() -> dict[str, object]:
    return {"command": sys.executable, "args": [str(RAW)], "codemode": {"protocol": "legacy", "timeout": 60}}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _measure(size_mb: int) -> dict[str, float | str]:
    async with Hub(parse_config({"mcpServers": {"big": _entry(), "other": _entry()}})) as hub:
        await hub.call_tool("other", "echo", {"text": "warm"})
        rss0 = _rss_mb()
        worst = 0.0
        done = anyio.Event()

        async def ping() -> None:
            nonlocal worst
            while not done.is_set():
                t = time.perf_counter()
                await hub.call_tool("other", "echo", {"text": "x"})
                worst = max(worst, time.perf_counter() - t)
                await anyio.sleep(0.01)

        outcome = "returned"
        async with anyio.create_task_group() as tg:
            tg.start_soon(ping)
            t0 = time.perf_counter()
            try:
                await hub.call_tool("big", "big", {"bytes": size_mb * 1_000_000})
            except ToolError as exc:
                outcome = exc.code
            refused_s = time.perf_counter() - t0
            await hub.call_tool("big", "echo", {"text": "after"})  # answered once the rest is skipped
            drained_s = time.perf_counter() - t0
            done.set()
        return {
            "size_mb": size_mb,
            "outcome": outcome,
            "refused_s": round(refused_s, 3),
            "next_call_s": round(drained_s, 3),
            "rss_growth_mb": round(_rss_mb() - rss0, 1),
            "worst_other_call_ms": round(worst * 1000, 1),
        }


async def _main(sizes: list[int]) -> None:
    for size in sizes:
        print(await _measure(size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="16,50", help="answer sizes in MB, comma-separated")
    args = parser.parse_args()
    anyio.run(_main, [int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
