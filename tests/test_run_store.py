"""Background runs over real uvicorn and wasm: the store keeps previews within a
byte budget, says truly why a forgotten run is gone, and a run belongs to the
client that started it."""

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

from codemode import CodeMode, HttpSettings, Tool, ToolError, create_app
from codemode._serve.runs import PREVIEW_CHARS, VALUE_PREVIEW_CHARS, RunStore
from tests.test_http import _Server, assert_problem, sse

pytestmark = pytest.mark.anyio


async def _sink(data: str) -> int:
    return len(data)


async def _shout(data: str) -> None:
    raise ToolError(f"refused: {data}")


SHOUT = Tool(
    name="shout",
    fn=_shout,
    input_schema={"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]},
    description="Fails, quoting its big argument.",
)
SINK = Tool(
    name="sink",
    fn=_sink,
    input_schema={"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]},
    description="Takes a big argument, answers its length.",
)


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[tuple[FastAPI, str]]:
    async with CodeMode(tools=[SINK, SHOUT]) as cm:
        app = create_app(cm, HttpSettings(**settings))
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(30):
                await server.ready.wait()
            try:
                yield app, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
            finally:
                server.should_exit = True


async def _finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            info: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
            if info.get("status") in ("succeeded", "failed", "cancelled"):
                return info
            await anyio.sleep(0.02)


# 20 calls of 100 kB each: 2 MB of arguments a run, twice in its events.
_FLOOD = """
data = 'x' * 100_000
for _ in range(20):
    await tools.sink(data=data)
try:
    await tools.shout(data=data)
except ToolError:
    pass
len(data)
"""


async def test_a_flood_of_large_argument_runs_stays_within_the_store_budget() -> None:
    budget = 2**18  # 0.25 MB: about ten runs' previews
    async with serving(max_store_bytes=budget) as (app, url), httpx.AsyncClient(base_url=url, timeout=30) as client:
        store: RunStore = app.state.runs
        ids = []
        peak = 0
        for _ in range(30):
            created = await client.post("/v1/runs", json={"code": _FLOOD, "trace": True})
            ids.append(created.json()["id"])
            info = await _finished(client, ids[-1])
            assert info["status"] == "succeeded" and info["result"]["value"] == 100_000
            peak = max(peak, store.bytes)
        first = await client.get(f"/v1/runs/{ids[0]}")
        async with client.stream("GET", f"/v1/runs/{ids[-1]}/events") as response:
            replay_bytes = 0
            events = []
            async for name, data in sse(response):
                events.append((name, data))
                replay_bytes += len(json.dumps(data))
        kept = [r for r in ids if (await client.get(f"/v1/runs/{r}")).status_code == 200]

    # 30 runs held 2 x 30 x 2 MB of arguments before previews; now the store stays within its budget.
    assert peak <= budget, peak
    assert store.bytes <= budget
    assert 1 < len(kept) < 30 and kept == ids[-len(kept) :], "the oldest finished runs went first"
    body = assert_problem(first, 404, "run_expired")
    assert "0.25 MB" in body["detail"] and "600" not in body["detail"], body["detail"]
    # The events and call log hold previews: the argument's first characters and its size.
    started = [data for name, data in events if name == "tool_call_started"]
    assert len(started) == 21
    failed = [data for name, data in events if name == "tool_call_finished" and not data["ok"]]
    assert len(failed) == 1 and len(failed[0]["error_message"]) <= PREVIEW_CHARS + 1
    assert started[0]["arguments_truncated"] is True and started[0]["arguments_bytes"] > 100_000
    assert started[0]["arguments"]["data"].endswith("…")
    assert len(started[0]["arguments"]["data"]) <= VALUE_PREVIEW_CHARS + 1
    calls = events[-1][1]["result"]["tool_calls"]
    assert len(json.dumps(calls[0]["arguments"])) <= PREVIEW_CHARS + 20
    assert replay_bytes < 100_000, replay_bytes


async def test_a_run_is_readable_and_cancellable_only_by_the_client_that_started_it() -> None:
    tokens = {"alpha-token": "alice", "beta-token": "bob"}
    async with serving(tokens=tokens) as (_, url):
        async with (
            httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": "Bearer alpha-token"}) as alice,
            httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": "Bearer beta-token"}) as bob,
        ):
            run_id = (await alice.post("/v1/runs", json={"code": "import time\ntime.sleep(0.3)\n1"})).json()["id"]
            refused = [
                await bob.get(f"/v1/runs/{run_id}"),
                await bob.get(f"/v1/runs/{run_id}/events"),
                await bob.delete(f"/v1/runs/{run_id}"),
            ]
            info = await _finished(alice, run_id)
            after = await bob.get(f"/v1/runs/{run_id}")
            unknown = await alice.get("/v1/runs/run_nope")

    for response in [*refused, after]:
        body = assert_problem(response, 404, "run_not_found")
        assert body["detail"] == assert_problem(unknown, 404, "run_not_found")["detail"].replace("run_nope", run_id)
    assert info["status"] == "succeeded" and info["result"]["value"] == 1, "bob's DELETE did not cancel it"


def test_the_store_budget_comes_from_the_flag_else_the_environment() -> None:
    from codemode._serve.settings import ServeSettings, SettingsError

    assert ServeSettings.load({"max_store_mb": None}, {}).max_store_mb == 256
    assert ServeSettings.load({"max_store_mb": None}, {"CODEMODE_MAX_STORE_MB": "64"}).max_store_mb == 64
    assert ServeSettings.load({"max_store_mb": 8.0}, {"CODEMODE_MAX_STORE_MB": "64"}).max_store_mb == 8
    with pytest.raises(SettingsError, match="CODEMODE_MAX_STORE_MB"):
        ServeSettings.load({}, {"CODEMODE_MAX_STORE_MB": "lots"})
    assert HttpSettings(max_store_bytes=0).problems()
