"""Approval over HTTP: a background run pauses on each call the policy asks
about (`waiting_approval`, the call in its events), and `POST
/v1/runs/{id}/approvals` decides it. Real uvicorn, real wasm, and the real
filesystem reference server as the upstream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from codemode import (
    AsyncClient,
    CodeMode,
    HttpSettings,
    Policy,
    RequestRejected,
    RunInfo,
    Tool,
    create_app,
    parse_config,
)
from codemode._serve.models import RunInfo as RunInfoModel
from tests.test_http import _Server, assert_problem, sse
from tests.test_policy import TWO_WRITES_ONE_READ, filesystem_config

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.fixtures.redis"]  # the `redis_url` fixture


@contextlib.asynccontextmanager
async def serving(cm: CodeMode, token: str | None = None, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(cm, HttpSettings(**settings))
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(30):
            await server.ready.wait()
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20, headers=headers) as client:
                yield client
        finally:
            server.should_exit = True


async def test_a_run_waits_for_each_write_and_the_approvals_endpoint_decides_it(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    config = parse_config(filesystem_config(root, approve=["write_*"]))
    async with CodeMode(config=config) as cm, serving(cm) as client:
        code = TWO_WRITES_ONE_READ.replace("ROOT", repr(str(root)))
        run_id = (await client.post("/v1/runs", json={"code": code, "trace": True})).json()["id"]
        seen: list[str] = []
        infos: list[dict[str, Any]] = []
        with anyio.fail_after(30):
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                async for name, data in sse(response):
                    seen.append(name)
                    if name == "approval_requested":
                        info = (await client.get(f"/v1/runs/{run_id}")).json()
                        infos.append(RunInfoModel.model_validate(info).model_dump())
                        first = len(infos) == 1
                        answer = await client.post(
                            f"/v1/runs/{run_id}/approvals",
                            json={"call_id": data["call_id"], "approved": first, "reason": "" if first else "not b"},
                        )
                        assert answer.status_code == 200, answer.text
                        assert answer.json()["decision"] == ("approved" if first else "approval_denied")
                        # A call is decided once.
                        again = {"call_id": data["call_id"], "approved": True}
                        assert_problem(
                            await client.post(f"/v1/runs/{run_id}/approvals", json=again), 409, "no_pending_approval"
                        )
                    if name == "result":
                        final = data

    # Paused twice, each time on one write, shown with its arguments.
    assert [i["status"] for i in infos] == ["waiting_approval"] * 2
    pending = [i["pending_approvals"] for i in infos]
    assert [[(p["namespace"], p["tool"]) for p in ps] for ps in pending] == [[("filesystem", "write_file")]] * 2
    assert '"content": "hello from b.txt"' in pending[1][0]["preview"]
    assert seen.count("approval_requested") == seen.count("approval_decided") == 2
    # Exactly one write happened: the program, the upstream server and the disk agree.
    assert final["status"] == "succeeded"
    value = final["result"]["value"]
    assert value["a.txt"] == "written" and value["b.txt"] == "approval_denied"
    assert "[FILE] a.txt" in str(value["listing"]) and "b.txt" not in str(value["listing"])
    assert sorted(p.name for p in root.iterdir()) == ["a.txt"]
    calls = RunInfoModel.model_validate(final).model_dump()["result"]["tool_calls"]
    decisions = [(c["tool"], c["decision"], c["decided_by"]) for c in calls]
    assert decisions[:2] == [
        ("write_file", "approved", "http:anonymous"),
        ("write_file", "approval_denied", "http:anonymous"),
    ]


async def test_deciding_an_unknown_run_or_call_is_a_clear_error(tmp_path: Path) -> None:
    async with CodeMode() as cm, serving(cm) as client:
        assert_problem(
            await client.post("/v1/runs/run_nope/approvals", json={"call_id": "x", "approved": True}),
            404,
            "run_not_found",
        )
        run_id = (await client.post("/v1/runs", json={"code": "1 + 1"})).json()["id"]
        assert_problem(
            await client.post(f"/v1/runs/{run_id}/approvals", json={"call_id": "x", "approved": True}),
            409,
            "no_pending_approval",
        )
        assert_problem(
            await client.post(f"/v1/runs/{run_id}/approvals", json={"approved": True}), 422, "validation_error"
        )


async def test_execute_has_no_one_to_ask_so_asked_calls_are_refused() -> None:
    calls: list[int] = []

    def touch(x: int) -> int:
        calls.append(x)
        return x

    tool = Tool(name="touch", fn=touch, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})
    async with CodeMode(tools=[tool], policy=Policy(approve=["tools.touch"])) as cm, serving(cm) as client:
        body = (await client.post("/v1/execute", json={"code": "await tools.touch(x=1)", "trace": True})).json()
    assert body["error"]["code"] == "approval_denied" and calls == []
    assert body["tool_calls"][0]["decided_by"] == "no approver"


async def test_cancelling_a_waiting_run_refuses_its_call_for_good() -> None:
    calls: list[int] = []

    def touch(x: int) -> int:
        calls.append(x)
        return x

    tool = Tool(name="touch", fn=touch, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})
    async with CodeMode(tools=[tool], policy=Policy(approve=["tools.touch"])) as cm, serving(cm) as client:
        run_id = (await client.post("/v1/runs", json={"code": "await tools.touch(x=1)"})).json()["id"]
        with anyio.fail_after(20):
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                async for name, data in sse(response):
                    if name == "approval_requested":
                        call_id = data["call_id"]
                        break
            cancelled = (await client.delete(f"/v1/runs/{run_id}")).json()
            late = await client.post(f"/v1/runs/{run_id}/approvals", json={"call_id": call_id, "approved": True})
    assert cancelled["status"] == "cancelled" and cancelled["pending_approvals"] == []
    assert_problem(late, 409, "no_pending_approval")
    assert calls == []


async def test_only_the_client_that_started_a_run_may_decide_its_calls() -> None:
    calls: list[int] = []

    def touch(x: int) -> int:
        calls.append(x)
        return x

    tool = Tool(name="touch", fn=touch, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})
    tokens = {"alpha-token": "alice", "beta-token": "bob"}
    async with CodeMode(tools=[tool], policy=Policy(approve=["tools.touch"])) as cm:
        async with serving(cm, "alpha-token", tokens=tokens) as alice:
            bob = httpx.AsyncClient(base_url=str(alice.base_url), headers={"Authorization": "Bearer beta-token"})
            async with bob:
                run_id = (await alice.post("/v1/runs", json={"code": "await tools.touch(x=1)", "trace": True})).json()[
                    "id"
                ]
                with anyio.fail_after(20):
                    async with alice.stream("GET", f"/v1/runs/{run_id}/events") as response:
                        async for name, data in sse(response):
                            if name == "approval_requested":
                                approve = {"call_id": data["call_id"], "approved": True}
                                by_bob = await bob.post(f"/v1/runs/{run_id}/approvals", json=approve)
                                by_alice = await alice.post(f"/v1/runs/{run_id}/approvals", json=approve)
                            if name == "result":
                                final = data
    assert_problem(by_bob, 404, "run_not_found")
    assert by_alice.json()["by"] == "http:alice"
    assert calls == [1] and final["result"]["tool_calls"][0]["decided_by"] == "http:alice"


async def test_the_async_client_sees_the_pending_call_and_decides_it() -> None:
    calls: list[int] = []

    def touch(x: int) -> int:
        calls.append(x)
        return x

    tool = Tool(name="touch", fn=touch, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})
    async with CodeMode(tools=[tool], policy=Policy(approve=["tools.touch"])) as cm, serving(cm) as http:
        async with AsyncClient(str(http.base_url)) as client:
            run = await client.start_run("[await tools.touch(x=1), await tools.touch(x=2)]", trace=True)
            waiting: list[RunInfo] = []
            with anyio.fail_after(20):
                async for event in client.events(run.id):
                    if event.type == "approval_requested":
                        waiting.append(await client.get_run(run.id))
                        await client.decide_approval(
                            run.id, event.data["call_id"], approved=event.data["preview"] == '{"x": 1}'
                        )
                    if event.run is not None:
                        final = event.run
            with pytest.raises(RequestRejected):
                await client.decide_approval(run.id, "nope", approved=True)
    assert [w.status for w in waiting] == ["waiting_approval"] * 2
    assert [p["tool"] for w in waiting for p in w.pending_approvals] == ["touch", "touch"]
    assert final.result is not None and final.result.error is not None
    assert final.result.error.code == "approval_denied" and calls == [1]
    assert [(c.decision, c.decided_by) for c in final.result.tool_calls] == [
        ("approved", "http:anonymous"),
        ("approval_denied", "http:anonymous"),
    ]


async def test_in_a_fleet_asked_calls_are_refused_at_once_as_no_one_can_decide_them(redis_url: str) -> None:
    calls: list[int] = []

    def touch(x: int) -> int:
        calls.append(x)
        return x

    tool = Tool(name="touch", fn=touch, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})
    async with CodeMode(tools=[tool], policy=Policy(approve=["tools.touch"])) as cm:
        async with serving(cm, store=redis_url, replica_id="a") as client:
            run_id = (await client.post("/v1/runs", json={"code": "await tools.touch(x=1)", "trace": True})).json()[
                "id"
            ]
            with anyio.fail_after(30):
                while (info := (await client.get(f"/v1/runs/{run_id}")).json())["status"] in ("queued", "running"):
                    await anyio.sleep(0.05)
            late = await client.post(f"/v1/runs/{run_id}/approvals", json={"call_id": "x", "approved": True})
    assert info["status"] == "failed" and info["result"]["error"]["code"] == "approval_denied"
    assert info["result"]["tool_calls"][0]["decided_by"] == "no approver" and calls == []
    assert_problem(late, 409, "no_pending_approval")
