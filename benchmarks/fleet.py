"""Short runs through `codemode serve` on each run store, side by side:
`python -m benchmarks.fleet [--runs 400] [--concurrency 8] [--rounds 4] [--json PATH]`.

Setups: one replica on the in-process store; one replica on Redis; two
replicas on one Redis (the client sends runs to each in turn). Each replica
has 2 running slots (the machine's cores) and one stdio MCP server (the raw
test fixture). A run is `POST /v1/runs` of `1 + 1`, then its `/events`
stream until the result, timed from the POST to the result; `--concurrency`
clients at a time. All setups are up at once and take turns (`--rounds`), so
other load on the machine falls on each alike. Printed per setup: runs/s, p50
and p99 latency. Then, with one client and one run at a time, the Redis
store's added latency per run: memory and Redis in turn, the median of 1,000
paired differences. Last, how long `DELETE` on one replica takes to cancel a
run carried out by another (the cancel's trip through pub/sub, the run
winding down, and its end written and seen). Starts its own redis-server
(needs `redis-server` on PATH and `pip install 'codemode[redis]'`). Not a
test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "tests" / "fixtures" / "servers" / "raw_server.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _redis(scratch: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("benchmarks.fleet needs redis-server on PATH (apt-get install redis-server)")
    port = _free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", str(scratch)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def _replicas(scratch: Path, store: str | None, count: int) -> Iterator[list[str]]:
    config = scratch / "mcp.json"  # the same for every setup
    entry = {"command": sys.executable, "args": [str(RAW)], "codemode": {"protocol": "legacy"}}
    config.write_text(json.dumps({"mcpServers": {"raw": entry}}))
    procs, urls = [], []
    for i in range(count):
        port = _free_port()
        argv = [sys.executable, "-m", "codemode", "serve", "--config", str(config), "--port", str(port)]
        argv += ["--max-concurrency", "2", "--queue", "100000"]
        if store:
            argv += ["--store", store, "--replica-id", f"r{i}"]
        log = open(scratch / f"serve-{port}.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append((subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log), log))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        yield urls
    finally:
        for proc, log in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


async def _ready(client: httpx.AsyncClient, url: str) -> None:
    with anyio.fail_after(60):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/healthz")).json()["status"] == "ok":
                    return
            await anyio.sleep(0.1)


async def _one(client: httpx.AsyncClient, post_to: str, watch_on: str, code: str) -> float:
    t0 = time.perf_counter()
    created = await client.post(f"{post_to}/v1/runs", json={"code": code})
    run_id = created.json()["id"]
    async with client.stream("GET", f"{watch_on}/v1/runs/{run_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("event: result"):
                break
    return time.perf_counter() - t0


async def _round(client: httpx.AsyncClient, urls: list[str], runs: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    limiter = anyio.Semaphore(concurrency)

    async def worker(i: int) -> None:
        async with limiter:
            url = urls[i % len(urls)]
            latencies.append(await _one(client, url, url, "1 + 1"))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(runs):
            tg.start_soon(worker, i)
    return time.perf_counter() - t0, latencies


def _summary(wall: float, latencies: list[float]) -> dict[str, Any]:
    latencies = sorted(latencies)
    return {
        "runs": len(latencies),
        "runs_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
    }


async def _cancel_across(client: httpx.AsyncClient, urls: list[str], tries: int) -> list[float]:
    """DELETE through a replica that is not carrying out the run, timed to its answer."""
    out = []
    for _ in range(tries):
        run_id = (await client.post(f"{urls[0]}/v1/runs", json={"code": "await raw.slow(seconds=30)"})).json()["id"]
        while True:
            info = (await client.get(f"{urls[0]}/v1/runs/{run_id}")).json()
            if info["status"] == "running":
                break
            await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # inside its tool call
        other = urls[1] if info["replica"] == "r0" else urls[0]
        t0 = time.perf_counter()
        answer = (await client.delete(f"{other}/v1/runs/{run_id}")).json()
        assert answer["status"] == "cancelled", answer
        out.append(time.perf_counter() - t0)
    return out


async def _main(runs: int, concurrency: int, rounds: int, out: Path | None) -> None:
    """Every setup is up at once and they take turns, round by round, so that
    other load on the machine falls on each alike."""
    results: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="codemode-fleet-") as tmp, contextlib.ExitStack() as stack:
        scratch = Path(tmp)
        redis_url = stack.enter_context(_redis(scratch))
        setups = {
            "1 replica, in-process store": stack.enter_context(_replicas(scratch, None, 1)),
            # Separate Redis databases, so each setup has its own queue.
            "1 replica, Redis": stack.enter_context(_replicas(scratch, redis_url[:-1] + "1", 1)),
            "2 replicas, Redis": stack.enter_context(_replicas(scratch, redis_url[:-1] + "2", 2)),
        }
        limits = httpx.Limits(max_connections=concurrency * 2 + 4)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            for urls in setups.values():
                for url in urls:
                    await _ready(client, url)
                for i in range(20):  # warm every replica's slots and connections
                    await _one(client, urls[i % len(urls)], urls[i % len(urls)], "1 + 1")
            walls = dict.fromkeys(setups, 0.0)
            latencies: dict[str, list[float]] = {name: [] for name in setups}
            for _ in range(rounds):
                for name, urls in setups.items():
                    wall, got = await _round(client, urls, runs // rounds, concurrency)
                    walls[name] += wall
                    latencies[name] += got
            for name in setups:
                results[name] = _summary(walls[name], latencies[name])
                print(f"{name:30} {results[name]}", flush=True)

            # One client, one run at a time, memory and Redis in turn: what Redis adds to a run.
            memory, redis = setups["1 replica, in-process store"][0], setups["1 replica, Redis"][0]
            alone: dict[str, list[float]] = {"memory": [], "redis": []}
            for _ in range(1_000):
                alone["memory"].append(await _one(client, memory, memory, "1 + 1"))
                alone["redis"].append(await _one(client, redis, redis, "1 + 1"))
            p50 = {name: statistics.median(values) for name, values in alone.items()}
            results["one client: p50 ms"] = {name: round(1000 * value, 2) for name, value in p50.items()}
            # The median of paired differences: each pair ran back to back, under the same load.
            added = statistics.median(r - m for m, r in zip(alone["memory"], alone["redis"]))
            results["redis added ms per run (p50)"] = round(1000 * added, 2)
            print(
                f"one client at a time: p50 {results['one client: p50 ms']} ms; "
                f"Redis adds {results['redis added ms per run (p50)']} ms a run",
                flush=True,
            )

            cancels = sorted(await _cancel_across(client, setups["2 replicas, Redis"], 20))
            results["cancel across replicas ms"] = {
                "p50": round(1000 * statistics.median(cancels), 1),
                "max": round(1000 * cancels[-1], 1),
            }
            print(f"DELETE on one replica of a run on another: {results['cancel across replicas ms']}")
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="runs per setup (default 400)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at a time (default 8)")
    parser.add_argument("--rounds", type=int, default=4, help="turns each setup takes (default 4)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    anyio.run(_main, args.runs, args.concurrency, args.rounds, args.json)


if __name__ == "__main__":
    main()
