"""A fleet: real `codemode serve` processes on one real redis-server, with a real
stdio MCP server each. Any replica answers for any run; a replica killed with
-9 loses only what it was running (failed `replica_lost`, never re-run); runs
outlive the processes; many runs through replicas in turn are all found, right.

Skipped, with the reason, where redis-server or the redis client is absent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.fixtures.helpers import _free_port

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.fixtures.redis"]  # the `redis_url` fixture

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "tests" / "fixtures" / "servers" / "raw_server.py"
DONE = ("succeeded", "failed", "cancelled")


@dataclass
class Replica:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def fleet(tmp_path: Path, redis: str, names: list[str], *extra: str) -> Iterator[dict[str, Replica]]:
    """Start one `codemode serve --store redis` per name; kill what is left at the end."""
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {"mcpServers": {"raw": {"command": sys.executable, "args": [str(RAW)], "codemode": {"protocol": "legacy"}}}}
        )
    )
    started: list[Replica] = []

    def start(name: str) -> Replica:
        port = _free_port()
        log = tmp_path / f"{name}-{len(started)}.log"
        with open(log, "wb") as out:
            argv = [sys.executable, "-m", "codemode", "serve", "--config", str(config), "--port", str(port)]
            argv += ["--store", redis, "--replica-id", name, *extra]
            proc = subprocess.Popen(
                argv,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replica = Replica(name, f"http://127.0.0.1:{port}", proc, log)
        started.append(replica)
        return replica

    replicas = {name: start(name) for name in names}
    replicas_start = start  # for restarts
    try:
        yield _Fleet(replicas, replicas_start)
    finally:
        for replica in started:
            if replica.proc.poll() is None:
                replica.proc.kill()
                replica.proc.wait(timeout=10)


class _Fleet(dict[str, Replica]):
    def __init__(self, replicas: dict[str, Replica], start: Any) -> None:
        super().__init__(replicas)
        self.start = start

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in self.values())


async def wait_ready(client: httpx.AsyncClient, replica: Replica) -> None:
    with anyio.fail_after(60):
        while True:  # polling a port that is not open yet: there is no event to wait on
            assert replica.proc.poll() is None, replica.log.read_text()
            try:
                if (await client.get(f"{replica.url}/healthz")).json()["status"] == "ok":
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.05)


async def events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str, Any]]:
    """(id, event, data) of each Server-Sent Event; pings are skipped."""
    seq, name, data = None, "message", ""
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield seq, name, json.loads(data)
            seq, name, data = None, "message", ""
        elif line.startswith("id:"):
            seq = line.removeprefix("id:").strip()
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()


async def running_on(client: httpx.AsyncClient, replicas: list[Replica], count: int = 1) -> list[Replica]:
    """The replicas with `count` runs in flight, once there are."""
    with anyio.fail_after(30):
        while True:
            busy = [
                r for r in replicas if f"codemode_runs_in_flight {count}" in (await client.get(f"{r.url}/metrics")).text
            ]
            if busy:
                return busy
            await anyio.sleep(0.05)


async def finished(client: httpx.AsyncClient, url: str, run_id: str, timeout: float = 60) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            info: dict[str, Any] = (await client.get(f"{url}/v1/runs/{run_id}")).json()
            if info.get("status") in DONE:
                return info
            await anyio.sleep(0.05)


_STEPS = """
for i in range(3):
    await raw.echo(text=f"step {i}")
await raw.slow(seconds=60)
"""


async def test_a_run_started_on_one_replica_is_read_streamed_resumed_and_cancelled_through_the_others(
    tmp_path: Path, redis_url: str
) -> None:
    with fleet(tmp_path, redis_url, ["a", "b", "c"]) as replicas:
        async with httpx.AsyncClient(timeout=30) as client:
            for replica in replicas.values():
                await wait_ready(client, replica)
            a, b, c = replicas["a"], replicas["b"], replicas["c"]
            created = await client.post(f"{a.url}/v1/runs", json={"code": _STEPS})
            assert created.status_code == 202, created.text
            run_id = created.json()["id"]

            # B streams the first two events, then the client goes away.
            first: list[tuple[str | None, str, Any]] = []
            with anyio.fail_after(30):
                async with client.stream("GET", f"{b.url}/v1/runs/{run_id}/events") as response:
                    async for item in events(response):
                        first.append(item)
                        if len(first) == 2:
                            break
            # C resumes after the last id B gave, while the run is still going.
            resumed: list[tuple[str | None, str, Any]] = []
            with anyio.fail_after(30):
                async with client.stream(
                    "GET", f"{c.url}/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(first[-1][0])}
                ) as response:
                    async for item in events(response):
                        resumed.append(item)
                        if item[1] == "tool_call_started" and item[2]["tool"] == "slow":
                            break
            on_b = (await client.get(f"{b.url}/v1/runs/{run_id}")).json()
            cancelled = await client.delete(f"{c.url}/v1/runs/{run_id}")
            on_a = (await client.get(f"{a.url}/v1/runs/{run_id}")).json()
            async with client.stream("GET", f"{b.url}/v1/runs/{run_id}/events") as response:
                replay = [item async for item in events(response)]
            metrics = {r.name: (await client.get(f"{r.url}/metrics")).text for r in replicas.values()}

    assert on_b["status"] == "running" and on_b["replica"] in ("a", "b", "c"), on_b
    assert [(seq, name) for seq, name, _ in first] == [("1", "tool_call_started"), ("2", "tool_call_finished")]
    assert [seq for seq, _, _ in resumed] == ["3", "4", "5", "6", "7"]
    assert [data["arguments"].get("text") for _, name, data in first + resumed if name == "tool_call_started"] == [
        "step 0",
        "step 1",
        "step 2",
        None,
    ]
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert on_a["status"] == "cancelled"
    # The whole log, replayed by another replica: the same events, then the result.
    assert [item for item in replay if item[1] != "result"][:7] == first + resumed
    assert replay[-1][1] == "result" and replay[-1][2]["status"] == "cancelled"
    # The replica that carried it out saw the cancel reach its tool call.
    runner = on_b["replica"]
    assert 'codemode_runs_total{outcome="cancelled"} 1' in metrics[runner], metrics[runner]


async def test_a_replica_killed_mid_run_fails_its_run_and_the_queued_runs_finish_elsewhere(
    tmp_path: Path, redis_url: str
) -> None:
    lease = "1.5"
    with fleet(tmp_path, redis_url, ["a", "b", "c"], "--max-concurrency", "1", "--lease", lease) as replicas:
        async with httpx.AsyncClient(timeout=30) as client:
            for replica in replicas.values():
                await wait_ready(client, replica)
            members = list(replicas.values())
            # One long run per replica, then six that wait in the fleet's queue.
            longs = [
                (
                    await client.post(f"{members[i].url}/v1/runs", json={"code": "await raw.slow(seconds=4)\n'long'"})
                ).json()["id"]
                for i in range(3)
            ]
            with anyio.fail_after(30):
                while len(await running_on(client, members)) < 3:
                    await anyio.sleep(0.05)
            queued = [
                (
                    await client.post(f"{members[i % 3].url}/v1/runs", json={"code": f"await raw.echo(text='q{i}')"})
                ).json()["id"]
                for i in range(6)
            ]
            victim = replicas["a"]
            infos = {r: (await client.get(f"{replicas['b'].url}/v1/runs/{r}")).json() for r in longs}
            lost_id = next(r for r, info in infos.items() if info["replica"] == "a")
            victim.kill()
            lost = await finished(client, replicas["b"].url, lost_id, timeout=30)
            done = [await finished(client, replicas["c"].url, r) for r in queued]
            others = [await finished(client, replicas["b"].url, r) for r in longs if r != lost_id]

            # A restarted replica (same name, new process) reads every old run.
            again = replicas.start("a")
            await wait_ready(client, again)
            reread = [(await client.get(f"{again.url}/v1/runs/{r}")).json() for r in [*longs, *queued]]
            later = (await client.get(f"{again.url}/v1/runs/{lost_id}")).json()

    assert lost["status"] == "failed" and lost["error"]["code"] == "replica_lost", lost
    assert lost["result"] is None
    assert all(info["status"] == "succeeded" and info["replica"] in ("b", "c") for info in done), done
    assert sorted(info["result"]["value"] for info in done) == [f"q{i}" for i in range(6)]
    assert [info["result"]["value"] for info in others] == ["long", "long"]
    assert {info["id"]: info for info in reread} == {info["id"]: info for info in [lost, *done, *others]}
    assert later == lost, "a run lost with its replica is not re-run"


@pytest.mark.slow
async def test_many_runs_through_replicas_in_turn_are_all_found_and_right(tmp_path: Path, redis_url: str) -> None:
    count = int(os.environ.get("CODEMODE_FLEET_RUNS", "1000"))
    with fleet(tmp_path, redis_url, ["a", "b", "c"], "--queue", str(count)) as replicas:
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends, so none is reused as it closes.
        limits = httpx.Limits(max_connections=64, keepalive_expiry=2)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            members = list(replicas.values())
            for replica in members:
                await wait_ready(client, replica)
            answers: dict[int, tuple[str, dict[str, Any]]] = {}

            async def one(i: int) -> None:
                code = f"n = {i}\nr = await raw.echo(text=str(n))\n[int(r) * 2, r]"
                created = await client.post(f"{members[i % 3].url}/v1/runs", json={"code": code})
                assert created.status_code == 202, created.text
                run_id = created.json()["id"]
                watcher = members[(i + 1) % 3]
                async with client.stream("GET", f"{watcher.url}/v1/runs/{run_id}/events") as response:
                    result = [data async for _, name, data in events(response) if name == "result"]
                runner = result[0]["replica"]
                reader = next(r for r in members if r.name != runner and r is not members[i % 3])
                answers[i] = (reader.name, (await client.get(f"{reader.url}/v1/runs/{run_id}")).json())

            limiter = anyio.Semaphore(32)

            async def bounded(i: int) -> None:
                async with limiter:
                    await one(i)

            with anyio.fail_after(600):
                async with anyio.create_task_group() as tg:
                    for i in range(count):
                        tg.start_soon(bounded, i)
            alive = [r.name for r in members if r.proc.poll() is None]

    assert alive == ["a", "b", "c"], replicas.logs()

    wrong = {
        i: info
        for i, (reader, info) in answers.items()
        if info.get("status") != "succeeded" or info["result"]["value"] != [2 * i, str(i)] or info["replica"] == reader
    }
    assert len(answers) == count, f"{count - len(answers)} runs lost"
    assert not wrong, list(wrong.items())[:3]
    assert {info["replica"] for _, info in answers.values()} == {"a", "b", "c"}


async def test_a_replica_stopped_with_sigterm_fails_its_run_hands_back_the_queue_and_exits_0(
    tmp_path: Path, redis_url: str
) -> None:
    with fleet(tmp_path, redis_url, ["a"], "--max-concurrency", "1", "--shutdown-grace", "1") as replicas:
        async with httpx.AsyncClient(timeout=30) as client:
            a = replicas["a"]
            await wait_ready(client, a)
            long = (await client.post(f"{a.url}/v1/runs", json={"code": "await raw.slow(seconds=60)"})).json()["id"]
            await running_on(client, [a])
            waiting = (await client.post(f"{a.url}/v1/runs", json={"code": "await raw.echo(text='later')"})).json()
            a.proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                while a.proc.poll() is None:
                    await anyio.sleep(0.05)
            b = replicas.start("b")
            await wait_ready(client, b)
            stopped = await finished(client, b.url, long)
            later = await finished(client, b.url, waiting["id"])

    assert a.proc.returncode == 0, a.log.read_text()
    assert stopped["status"] == "failed" and stopped["error"]["code"] == "shutting_down", stopped
    assert waiting["status"] == "queued"
    assert later["status"] == "succeeded" and later["result"]["value"] == "later" and later["replica"] == "b", later


async def test_a_replica_that_stalls_past_its_lease_loses_its_run_and_does_not_write_it_back(
    tmp_path: Path, redis_url: str
) -> None:
    lease = 1.5
    with fleet(tmp_path, redis_url, ["a", "b"], "--max-concurrency", "1", "--lease", str(lease)) as replicas:
        async with httpx.AsyncClient(timeout=30) as client:
            a, b = replicas["a"], replicas["b"]
            for replica in (a, b):
                await wait_ready(client, replica)
            # b is kept busy, so the run goes to a.
            busy = (await client.post(f"{b.url}/v1/runs", json={"code": "await raw.slow(seconds=60)"})).json()["id"]
            await running_on(client, [b])
            run_id = (await client.post(f"{b.url}/v1/runs", json={"code": "await raw.slow(seconds=3)\n'late'"})).json()[
                "id"
            ]
            await running_on(client, [a])
            a.proc.send_signal(signal.SIGSTOP)  # a frozen VM, a long pause: alive, but silent
            lost = await finished(client, b.url, run_id, timeout=30)
            a.proc.send_signal(signal.SIGCONT)
            # a wakes, finds the run no longer its own, and stops it; its slot frees for other work.
            await client.delete(f"{b.url}/v1/runs/{busy}")
            after = (await client.post(f"{b.url}/v1/runs", json={"code": "await raw.echo(text='next')"})).json()["id"]
            nxt = await finished(client, a.url, after)
            later = (await client.get(f"{a.url}/v1/runs/{run_id}")).json()

    assert lost["status"] == "failed" and lost["error"]["code"] == "replica_lost", lost
    assert later == lost, "the stalled replica's late result was not written over the verdict"
    assert nxt["status"] == "succeeded" and nxt["result"]["value"] == "next"
