"""The Redis run store behind two apps in one process (real uvicorn, real wasm,
one real redis-server): work goes where there is room, 429 only when the
fleet's queue is full, the same retention, byte budget and owners as in
memory, a dead replica's unstarted runs run elsewhere, and an unreachable
Redis is a typed 503.

Skipped, with the reason, where redis-server or the redis client is absent."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from codemode import CodeMode, HttpSettings, Tool, create_app
from tests.test_http import _Server, assert_problem
from tests.test_run_store import _FLOOD, SHOUT, SINK

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.fixtures.redis"]  # the `redis_url` fixture


class Gate:
    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.entered = 0

    def tool(self) -> Tool:
        async def gated() -> str:
            self.entered += 1
            await self.opened.wait()
            return "opened"

        return Tool(name="gated", fn=gated, description="Wait until the test opens the gate.")


@contextlib.asynccontextmanager
async def replica(tools: list[Tool], **settings: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with CodeMode(tools=tools) as cm:
        app = create_app(cm, HttpSettings(**settings))
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(30):
                await server.ready.wait()
            port = server.servers[0].sockets[0].getsockname()[1]
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    yield app, client
            finally:
                server.should_exit = True


async def finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            info: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
            if info.get("status") in ("succeeded", "failed", "cancelled"):
                return info
            await anyio.sleep(0.02)


async def test_a_full_replica_does_not_refuse_while_another_has_room_and_429_only_when_the_fleet_queue_is_full(
    redis_url: str,
) -> None:
    gate_a, gate_b = Gate(), Gate()
    common = {"store": redis_url, "max_concurrency": 1, "queue": 2}
    async with (
        replica([gate_a.tool()], replica_id="a", **common) as (_, a),
        replica([gate_b.tool()], replica_id="b", **common) as (_, b),
    ):
        code = {"code": "await tools.gated()"}
        ids = [(await a.post("/v1/runs", json=code)).json()["id"]]
        with anyio.fail_after(10):
            while gate_a.entered + gate_b.entered < 1:
                await anyio.sleep(0.01)
        # Sent to the same replica again: taken by the one with room.
        ids.append((await a.post("/v1/runs", json=code)).json()["id"])
        with anyio.fail_after(10):
            while gate_a.entered + gate_b.entered < 2:
                await anyio.sleep(0.01)
        # Both busy: two wait in the fleet's queue, the next is refused by either replica.
        queued = [await a.post("/v1/runs", json=code), await b.post("/v1/runs", json=code)]
        refused = [await a.post("/v1/runs", json=code), await b.post("/v1/runs", json=code)]
        waiting = [(await b.get(f"/v1/runs/{r.json()['id']}")).json()["status"] for r in queued]
        gate_a.opened.set()
        gate_b.opened.set()
        infos = [await finished(b, r) for r in [*ids, *(q.json()["id"] for q in queued)]]

    assert (gate_a.entered, gate_b.entered) >= (1, 1)
    assert [r.status_code for r in queued] == [202, 202] and waiting == ["queued", "queued"]
    for response in refused:
        assert_problem(response, 429, "busy")
        assert int(response.headers["retry-after"]) >= 1
    assert [info["result"]["value"] for info in infos] == ["opened"] * 4
    assert {info["replica"] for info in infos} == {"a", "b"}


async def test_the_redis_store_keeps_the_same_byte_budget_retention_and_owners(redis_url: str) -> None:
    import redis.asyncio as aioredis

    budget = 2**18
    tokens = {"alpha-token": "alice", "beta-token": "bob"}
    async with replica([SINK, SHOUT], store=redis_url, max_store_bytes=budget, tokens=tokens) as (_, client):
        client.headers["Authorization"] = "Bearer alpha-token"
        db = aioredis.Redis.from_url(redis_url, decode_responses=True)
        ids, peak = [], 0
        for _ in range(30):
            ids.append((await client.post("/v1/runs", json={"code": _FLOOD, "trace": True})).json()["id"])
            info = await finished(client, ids[-1])
            assert info["status"] == "succeeded" and info["result"]["value"] == 100_000, info
            peak = max(peak, int(await db.get("codemode:bytes") or 0))
        first = await client.get(f"/v1/runs/{ids[0]}")
        async with client.stream("GET", f"/v1/runs/{ids[-1]}/events") as response:
            replay = [line async for line in response.aiter_lines() if line.startswith("data:")]
        kept = [r for r in ids if (await client.get(f"/v1/runs/{r}")).status_code == 200]
        bob = {"Authorization": "Bearer beta-token"}
        as_bob = await client.get(f"/v1/runs/{ids[-1]}", headers=bob)
        bob_streams = await client.get(f"/v1/runs/{ids[-1]}/events", headers=bob)
        bob_cancels = await client.delete(f"/v1/runs/{ids[-1]}", headers=bob)
        gone_for_bob = await client.get(f"/v1/runs/{ids[0]}", headers={"Authorization": "Bearer beta-token"})
        held = int(await db.get("codemode:bytes") or 0)
        await db.aclose()

    assert peak <= budget and held <= budget, (peak, held)
    assert 1 < len(kept) < 30 and kept == ids[-len(kept) :], "the oldest finished runs went first"
    body = assert_problem(first, 404, "run_expired")
    assert "0.25 MB" in body["detail"], body["detail"]
    started = [json.loads(line[5:]) for line in replay if '"tool_call_started"' in line]
    assert len(started) == 21 and started[0]["arguments_truncated"] is True
    assert sum(len(line) for line in replay) < 100_000
    for response in (as_bob, bob_streams, bob_cancels):
        assert_problem(response, 404, "run_not_found")
    assert_problem(gone_for_bob, 404, "run_not_found")


async def test_a_run_taken_by_a_replica_that_died_before_starting_it_runs_elsewhere(redis_url: str) -> None:
    """The moment between taking a run (BLMOVE) and starting it is microseconds
    long, too short to kill a process in; so the dead replica's state is written
    into Redis as it would be left, and the live replica must find it."""
    import redis.asyncio as aioredis

    async with replica([SINK], store=redis_url, replica_id="live", lease_s=0.6) as (_, client):
        db = aioredis.Redis.from_url(redis_url, decode_responses=True)
        limits = json.dumps({"timeout": 10.0})
        await db.hset(
            "codemode:run:run_orphan",
            mapping={"owner": "anonymous", "status": "queued", "code": "21 * 2", "limits": limits, "trace": ""},
        )
        await db.hset("codemode:run:run_orphan", "created_at", "1")
        await db.lpush("codemode:taken:dead~0000", "run_orphan")
        await db.sadd("codemode:replicas", "dead~0000")  # and no lease: it is gone
        info = await finished(client, "run_orphan")
        left = await db.exists("codemode:taken:dead~0000")
        await db.aclose()

    assert info["status"] == "succeeded" and info["result"]["value"] == 42 and info["replica"] == "live", info
    assert left == 0


async def test_an_unreachable_redis_is_a_typed_503_and_the_replica_stays_up(redis_url: str) -> None:
    import redis.asyncio as aioredis

    async with replica([SINK], store=redis_url) as (_, client):
        created = await client.post("/v1/runs", json={"code": "1"})
        # Ended, so it is read from Redis (while it runs, the replica carrying it out answers for it).
        await finished(client, created.json()["id"])
        db = aioredis.Redis.from_url(redis_url)
        with contextlib.suppress(Exception):
            await db.shutdown(nosave=True)  # the server goes away for good
        down = [await client.post("/v1/runs", json={"code": "1"}), await client.get(f"/v1/runs/{created.json()['id']}")]
        health = await client.get("/healthz")
        execute = await client.post("/v1/execute", json={"code": "2"})

    for response in down:
        assert_problem(response, 503, "store_unavailable")
    assert health.status_code == 200 and execute.json()["value"] == 2


async def test_with_redis_unreachable_a_run_going_here_is_still_answered_as_running(redis_url: str) -> None:
    import redis.asyncio as aioredis

    gate = Gate()
    async with replica([gate.tool()], store=redis_url) as (_, client):
        run_id = (await client.post("/v1/runs", json={"code": "await tools.gated()"})).json()["id"]
        with anyio.fail_after(10):
            while gate.entered < 1:
                await anyio.sleep(0.01)
        db = aioredis.Redis.from_url(redis_url)
        with contextlib.suppress(Exception):
            await db.shutdown(nosave=True)
        info = await client.get(f"/v1/runs/{run_id}")
        gate.opened.set()

    assert info.status_code == 200 and info.json()["status"] == "running"


def test_a_redis_store_without_the_client_says_which_extra_to_install() -> None:
    """The client is made unimportable in a fresh process, as on an install without the extra."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    program = (
        "import sys; sys.modules['redis'] = None\n"
        "from codemode._cli import main\n"
        "sys.exit(main(['serve', '--store', 'redis://127.0.0.1:1/0', '--port', '0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=root, check=False
    )

    assert done.returncode == 3, done.stderr
    assert "pip install 'codemode[redis]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_with_an_unreachable_redis_exits_3_saying_so_before_opening_its_port() -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.fixtures.helpers import _free_port

    pytest.importorskip("redis", reason="the redis client is not installed (pip install 'codemode[redis]')")
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "codemode", "serve", "--store", f"redis://127.0.0.1:{_free_port()}/0", "--port", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=root, check=False)

    assert done.returncode == 3, done.stderr
    assert "the run store (Redis) failed to answer a ping" in done.stderr
    assert "Traceback" not in done.stderr and "Uvicorn running" not in done.stderr


async def test_a_run_keeps_its_last_events_and_a_late_subscriber_is_told_how_many_it_missed(redis_url: str) -> None:
    code = "for i in range(30):\n    await tools.sink(data=str(i))\n'done'"
    async with replica([SINK], store=redis_url, max_events_per_run=10) as (_, client):
        run_id = (await client.post("/v1/runs", json={"code": code})).json()["id"]
        info = await finished(client, run_id)
        async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
            names, ids = [], []
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    names.append(line[6:].strip())
                elif line.startswith("id:"):
                    ids.append(int(line[3:]))
        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "58"}) as response:
            tail = [line[6:].strip() async for line in response.aiter_lines() if line.startswith("event:")]

    assert info["status"] == "succeeded" and info["result"]["value"] == "done"
    # 60 events were published; the stream keeps the last 10 (ids 51-60) and says 50 were dropped.
    assert names[0] == "events_dropped" and names[-1] == "result" and len(names) == 12
    assert ids == list(range(51, 61))
    assert tail == ["tool_call_started", "tool_call_finished", "result"]


async def test_the_replica_carrying_out_a_run_tells_what_any_other_reads_from_redis(redis_url: str) -> None:
    """The replica running a run answers its info and streams its events from what
    it knows (no reads from Redis); another replica reads them from Redis. Both
    must tell the same, while it runs and once it ended."""
    gate = Gate()
    common = {"store": redis_url, "max_concurrency": 1}
    async with (
        replica([gate.tool()], replica_id="a", **common) as (_, a),
        replica([Gate().tool()], replica_id="b", **common) as (_, b),
    ):
        code = "first = await tools.gated()\nsecond = await tools.gated()\n[first, second]"
        run_id = (await a.post("/v1/runs", json={"code": code})).json()["id"]
        with anyio.fail_after(10):
            while gate.entered < 1:
                await anyio.sleep(0.01)
        running = [(await c.get(f"/v1/runs/{run_id}")).json() for c in (a, b)]
        streams: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}

        async def follow(name: str, client: httpx.AsyncClient) -> None:
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                pair: list[str] = []
                async for line in response.aiter_lines():
                    if line.startswith(("id:", "event:", "data:")):
                        pair.append(line)
                    elif not line and pair:
                        streams[name].append(tuple(pair))  # type: ignore[arg-type]
                        pair = []

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, "a", a)
                tg.start_soon(follow, "b", b)
                await anyio.sleep(0.2)  # both are following before the run goes on
                gate.opened.set()
        ended = [(await c.get(f"/v1/runs/{run_id}")).json() for c in (a, b)]

    assert running[0] == running[1] and running[0]["status"] == "running" and running[0]["replica"] == "a"
    assert ended[0] == ended[1] and ended[0]["result"]["value"] == ["opened", "opened"]
    assert streams["a"] == streams["b"]
    names = [line for entry in streams["a"] for line in entry if line.startswith("event:")]
    assert names[-1] == "event: result" and names.count("event: tool_call_finished") == 2


async def test_a_lease_check_while_a_run_is_being_submitted_does_not_take_it_for_lost(redis_url: str) -> None:
    """A run is registered here just before its submit reaches Redis; a lease
    check that reads it in between found no such run, took it for lost and
    stopped it, which left it `running` in Redis for ever. (The window is one
    round trip, so the check is called at that point here rather than raced.)"""
    from codemode._serve.metrics import Metrics
    from codemode._serve.redis_store import RedisRunStore, _Local
    from codemode._serve.runs import Admission, Executor

    async with CodeMode() as cm:
        executor = Executor(cm, Metrics(queue_depth=lambda: 0, in_flight=lambda: 0))
        async with RedisRunStore(redis_url, executor, Admission(max_running=1, max_waiting=1), replica_id="a") as store:
            pending = store._local["run_on_its_way"] = _Local("run_on_its_way")
            await store._check_local()
            assert not pending.lost and not pending.scope.cancel_called
            del store._local["run_on_its_way"]
            run = await store.submit("1 + 1", cm.sandbox.limits, trace=False, owner="me")
            with anyio.fail_after(30):
                async for name, _, data in store.events(run["id"], 0, 5):
                    if name == "result":
                        assert data["status"] == "succeeded" and data["result"]["value"] == 2


async def test_another_replica_follows_a_run_that_is_quiet_longer_than_a_redis_read_may_block(redis_url: str) -> None:
    """redis-py gives up a read after 5 s (its default socket timeout): b's stream
    of a's run, quiet for longer than that, must go on to the run's result."""
    gate = Gate()
    common = {"store": redis_url, "max_concurrency": 1}
    async with (
        replica([gate.tool()], replica_id="a", **common) as (_, a),
        replica([Gate().tool()], replica_id="b", **common) as (_, b),
    ):
        run_id = (await a.post("/v1/runs", json={"code": "await tools.gated()"})).json()["id"]
        with anyio.fail_after(10):
            while gate.entered < 1:
                await anyio.sleep(0.01)
        names: list[str] = []

        async def follow() -> None:
            async with b.stream("GET", f"/v1/runs/{run_id}/events") as response:
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        names.append(line)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.sleep(6)  # the run stays quiet past the 5 s a single read may take
                gate.opened.set()
    assert names[-1] == "event: result", names
