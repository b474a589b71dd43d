"""A hostile workload against a real `codemode serve`, beside honest clients.

    python -m benchmarks.hostile [--seconds 180] [--quick] [--json PATH]

Starts `codemode serve` (wasm backend) over two processes of one upstream stdio
server (`benchmarks/fixtures/hostile_server.py`: `hostile` for the attackers,
`calc` for the honest clients) on a free loopback port, then for a
fixed time runs honest clients, each sending a small program whose answer it
checks, beside attackers cycling through:

- `blocking_wait`: `select.select([], [], [], 240)` under a 0.2 s timeout;
- `frame_bomb`: a 70 MB tool-call frame sent straight to the host import;
- `result_bomb`: a 50 MB value, and a 50 MB print;
- `big_upstream_result`: a tool that answers 50 MB of text;
- `upstream_kill`: a tool call that makes the upstream process exit;
- `memory_bomb`: a guest that grows until its memory limit.

It reports honest requests answered correctly, wrong and refused, their p50 and
p99 latency, and the service's peak RSS and thread count (sampled from
/proc every 0.25 s, and VmHWM at the end). Traffic goes to 127.0.0.1 only; every
loop is bounded in count and time. Not part of the test suite: its figures
belong in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

HERE = Path(__file__).resolve().parent
SERVER = HERE / "fixtures" / "hostile_server.py"

ATTACKS: dict[str, dict[str, Any]] = {
    "blocking_wait": {"code": "import select\nselect.select([], [], [], 240)", "limits": {"timeout": 0.2}},
    "frame_bomb": {
        "code": "import sys\nsys.modules['runtime']._run_state.host_call('[' + '[],' * 23_000_000 + '[]]')",
        "limits": {"timeout": 10},
    },
    "result_bomb": {"code": "print('y' * 50_000_000)\n'x' * 50_000_000", "limits": {"timeout": 10}},
    "big_upstream_result": {"code": "len(await hostile.blob(megabytes=50))", "limits": {"timeout": 10}},
    "upstream_kill": {"code": "await hostile.crash()", "limits": {"timeout": 5}},
    "memory_bomb": {"code": "x = []\nwhile True:\n    x.append(bytearray(1 << 20))", "limits": {"timeout": 10}},
}


def _proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key in ("VmRSS", "VmHWM", "Threads"):
        match = re.search(rf"^{key}:\s+(\d+)", text, re.M)
        if match:
            out[key] = int(match.group(1))
    return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _start_service(workdir: Path, max_concurrency: int, queue: int) -> tuple[subprocess.Popen[str], str]:
    config = workdir / "mcp.json"
    # Two processes of the same server: attackers crash and flood `hostile`; honest
    # clients call `calc`, so what they see is the service, not a server an attacker killed.
    entry = {"command": sys.executable, "args": [str(SERVER)]}
    config.write_text(json.dumps({"mcpServers": {"hostile": entry, "calc": entry}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codemode",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            "--max-concurrency",
            str(max_concurrency),
            "--queue",
            str(queue),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = await anyio.to_thread.run_sync(proc.stderr.readline)
        if not line and proc.poll() is not None:
            raise SystemExit(f"codemode serve exited with {proc.returncode} before listening")
        match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            # Keep draining stderr so a full pipe never blocks the service's logging.
            def drain() -> None:
                assert proc.stderr is not None
                for _ in proc.stderr:
                    pass

            import threading

            threading.Thread(target=drain, daemon=True).start()
            return proc, match.group(1)
    raise SystemExit("codemode serve did not start listening within 120 s")


async def run(seconds: float, honest_clients: int, attackers: int, max_concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="codemode-hostile-") as tmp:
        proc, base = await _start_service(Path(tmp), max_concurrency, queue=256)
        honest: dict[str, Any] = {"sent": 0, "correct": 0, "wrong": 0, "refused": 0, "failed": 0, "latency_s": []}
        attacks: dict[str, dict[str, int]] = {name: {} for name in ATTACKS}
        samples: list[dict[str, int]] = []
        stop_at = time.monotonic() + seconds

        async def honest_client(k: int) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                i = 0
                while time.monotonic() < stop_at:
                    i += 1
                    a, b = k * 1000 + i, i * 7
                    code = f"s = await calc.add(a={a}, b={b})\n[s, sum(range({i % 50}))]"
                    honest["sent"] += 1
                    started = time.perf_counter()
                    try:
                        response = await client.post("/v1/execute", json={"code": code})
                    except httpx.HTTPError:
                        honest["failed"] += 1
                        continue
                    honest["latency_s"].append(time.perf_counter() - started)
                    if response.status_code == 429:
                        honest["refused"] += 1
                        await anyio.sleep(0.05)
                        continue
                    body = response.json() if response.headers.get("content-type", "").endswith("json") else {}
                    if body.get("ok") and body.get("value") == [a + b, sum(range(i % 50))]:
                        honest["correct"] += 1
                    elif body.get("ok"):
                        honest["wrong"] += 1
                    else:
                        honest["failed"] += 1

        async def attacker(k: int) -> None:
            names = list(ATTACKS)
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                i = k
                while time.monotonic() < stop_at:
                    name = names[i % len(names)]
                    i += 1
                    try:
                        response = await client.post("/v1/execute", json=ATTACKS[name])
                        body = response.json()
                        if response.status_code != 200:
                            outcome = f"http_{response.status_code}:{body.get('code')}"
                        elif body.get("ok"):
                            outcome = "ok"
                        else:
                            outcome = str((body.get("error") or {}).get("code"))
                    except (httpx.HTTPError, ValueError) as exc:
                        outcome = f"transport:{type(exc).__name__}"
                    attacks[name][outcome] = attacks[name].get(outcome, 0) + 1

        async def sampler() -> None:
            while time.monotonic() < stop_at + 1:
                samples.append(_proc_status(proc.pid))
                await anyio.sleep(0.25)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sampler)
                for k in range(honest_clients):
                    tg.start_soon(honest_client, k)
                for k in range(attackers):
                    tg.start_soon(attacker, k)
            # After the storm: does a trivial run answer at normal latency?
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                after = []
                for _ in range(20):
                    started = time.perf_counter()
                    response = await client.post("/v1/execute", json={"code": "1 + 1"})
                    after.append(time.perf_counter() - started)
                    assert response.json().get("value") == 2, response.text
                health = (await client.get("/healthz")).json()
            final = _proc_status(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        latencies = honest.pop("latency_s")
        return {
            "seconds": seconds,
            "honest_clients": honest_clients,
            "attackers": attackers,
            "honest": {
                **honest,
                "p50_ms": round(1000 * (statistics.median(latencies) if latencies else 0), 1),
                "p99_ms": round(1000 * (_percentile(latencies, 0.99) or 0), 1),
            },
            "attacks": attacks,
            "after": {"one_plus_one_median_ms": round(1000 * statistics.median(after), 2), "health": health},
            "service": {
                "peak_rss_mb": round(final.get("VmHWM", 0) / 1024, 1),
                "max_sampled_rss_mb": round(max((s.get("VmRSS", 0) for s in samples), default=0) / 1024, 1),
                "final_rss_mb": round(final.get("VmRSS", 0) / 1024, 1),
                "max_threads": max((s.get("Threads", 0) for s in samples), default=0),
                "final_threads": final.get("Threads", 0),
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the storm lasts (default 180)")
    parser.add_argument("--quick", action="store_true", help="20 s, for a smoke run")
    parser.add_argument("--honest", type=int, default=4, help="honest clients (default 4)")
    parser.add_argument("--attackers", type=int, default=8, help="attackers (default 8)")
    parser.add_argument("--max-concurrency", type=int, default=4, help="the service's --max-concurrency (default 4)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    seconds = 20.0 if args.quick else args.seconds
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(f"hostile workload: {seconds:g} s, {args.honest} honest clients, {args.attackers} attackers", file=sys.stderr)
    result = anyio.run(run, seconds, args.honest, args.attackers, args.max_concurrency)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
