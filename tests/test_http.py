"""The HTTP service against a real uvicorn server on a free loopback port, with
the real wasm sandbox and in-process tools."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from codemode import CodeMode, HttpSettings, Limits, Tool, create_app
from codemode._serve.models import ExecuteResponse, RunInfo

pytestmark = pytest.mark.anyio

_INT = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
_SECONDS = {"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]}


@dataclass
class Probe:
    """What the tools saw, for the tests to wait on."""

    gate: anyio.Event = field(default_factory=anyio.Event)
    hang_started: anyio.Event = field(default_factory=anyio.Event)
    hang_cancelled: anyio.Event = field(default_factory=anyio.Event)


def make_tools(probe: Probe) -> list[Tool]:
    async def quick(x: int) -> int:
        return x * 2

    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "slept"

    async def gated() -> str:
        await probe.gate.wait()
        return "opened"

    async def hang() -> None:
        probe.hang_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            probe.hang_cancelled.set()
            raise

    return [
        Tool(name="quick", fn=quick, input_schema=_INT, description="Double a number, at once."),
        Tool(name="slow", fn=slow, input_schema=_SECONDS, description="Sleep, then answer."),
        Tool(name="gated", fn=gated, description="Wait until the test opens the gate."),
        Tool(name="hang", fn=hang, description="Never answer."),
    ]


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # leave Ctrl-C to pytest


@contextlib.asynccontextmanager
async def serving(
    probe: Probe | None = None, *, cls: type[CodeMode] = CodeMode, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a live server over a fresh CodeMode with the test tools."""
    async with cls(tools=make_tools(probe or Probe())) as cm:
        app = create_app(cm, HttpSettings(**settings))
        # log_config=None: leave the process's logging alone (pytest captures it).
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(30):
                await server.ready.wait()
            port = server.servers[0].sockets[0].getsockname()[1]
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
                    yield client
            finally:
                server.should_exit = True


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["title"], str) and isinstance(body["detail"], str)
    assert "Traceback" not in response.text
    return body


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) of each Server-Sent Event; comments (pings) are skipped."""
    name, data = "message", ""
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield name, json.loads(data)
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()  # the service sends one data line per event


async def wait_finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            info: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
            if info["status"] in ("succeeded", "failed", "cancelled"):
                return info
            await anyio.sleep(0.02)


async def test_execute_returns_the_value_and_the_trace_on_request() -> None:
    async with serving() as client:
        code = "import asyncio\nprint('hi')\nsum(await asyncio.gather(tools.quick(x=1), tools.quick(x=2)))"
        plain = await client.post("/v1/execute", json={"code": code})
        traced = await client.post("/v1/execute", json={"code": code, "trace": True})

    assert plain.status_code == 200
    body = plain.json()
    assert body["ok"] is True and body["value"] == 6 and body["stdout"] == "hi\n"
    assert "tool_calls" not in body
    ExecuteResponse.model_validate(body)
    calls = traced.json()["tool_calls"]
    assert sorted(c["arguments"]["x"] for c in calls) == [1, 2]
    assert {c["batch"] for c in calls} == {1}
    ExecuteResponse.model_validate(traced.json())


async def test_code_that_fails_is_still_http_200_with_ok_false() -> None:
    async with serving() as client:
        response = await client.post("/v1/execute", json={"code": "1/0"})
        syntax = await client.post("/v1/execute", json={"code": "def ("})

    assert response.status_code == 200
    error = response.json()["error"]
    assert response.json()["ok"] is False
    assert (error["code"], error["exc_type"]) == ("uncaught_exception", "ZeroDivisionError")
    assert syntax.status_code == 200 and syntax.json()["error"]["code"] == "syntax_error"


async def test_request_limits_are_capped_by_the_server_maxima() -> None:
    maximum = Limits(timeout=0.5)
    async with serving(max_limits=maximum, default_limits=maximum) as client:
        t0 = time.monotonic()
        response = await client.post("/v1/execute", json={"code": "await tools.hang()", "limits": {"timeout": 60}})
        elapsed = time.monotonic() - t0
        bad = await client.post("/v1/execute", json={"code": "1", "limits": {"timeout": -1}})
        typo = await client.post("/v1/execute", json={"code": "1", "limits": {"timout": 1}})

    assert response.json()["error"]["code"] == "timeout"
    assert elapsed < 5
    assert_problem(bad, 422, "validation_error")
    assert_problem(typo, 422, "validation_error")


async def test_a_background_run_can_be_polled_until_it_finishes() -> None:
    async with serving() as client:
        created = await client.post("/v1/runs", json={"code": "await tools.quick(x=21)", "trace": True})
        assert created.status_code == 202
        run_id = created.json()["id"]
        assert created.headers["location"] == f"/v1/runs/{run_id}"
        assert created.json()["status"] in ("queued", "running")
        info = await wait_finished(client, run_id)
        missing = await client.get("/v1/runs/run_nope")

    RunInfo.model_validate(info)
    assert info["status"] == "succeeded"
    assert info["result"]["value"] == 42
    assert [c["tool"] for c in info["result"]["tool_calls"]] == ["quick"]
    assert info["started_at"] is not None and info["finished_at"] >= info["started_at"]
    assert_problem(missing, 404, "run_not_found")


async def test_events_stream_each_tool_call_as_it_happens_then_the_result() -> None:
    probe = Probe()
    code = (
        "import asyncio\na = await tools.gated()\nb = await asyncio.gather(tools.quick(x=1), tools.quick(x=2))\n[a, b]"
    )
    async with serving(probe) as client:
        run_id = (await client.post("/v1/runs", json={"code": code})).json()["id"]
        seen: list[tuple[str, Any]] = []
        with anyio.fail_after(10):
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for name, data in sse(response):
                    seen.append((name, data))
                    if name == "tool_call_started" and data["tool"] == "gated":
                        probe.gate.set()  # the stream is live: the call is still waiting on us
            # A late subscriber gets the log so far, then the result; Last-Event-ID resumes.
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                replay = [item async for item in sse(response)]
            async with client.stream("GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "2"}) as response:
                resumed = [item async for item in sse(response)]

    names = [name for name, _ in seen]
    assert names[:2] == ["tool_call_started", "tool_call_finished"]
    assert seen[1][1]["tool"] == "gated" and seen[1][1]["ok"] is True
    # The gathered calls share a batch and may interleave; each starts before it finishes.
    gathered = [(name, data["arguments"]["x"], data["batch"]) for name, data in seen[2:6]]
    for x in (1, 2):
        assert [name for name, arg, _ in gathered if arg == x] == ["tool_call_started", "tool_call_finished"]
    assert len({batch for _, _, batch in gathered}) == 1
    assert names[6:] == ["result"]
    result = seen[-1][1]
    assert result["status"] == "succeeded" and result["result"]["value"] == ["opened", [2, 4]]
    assert replay == seen
    assert resumed == seen[2:]


async def test_event_streams_are_bounded_per_run_and_in_all_and_counted_until_they_close() -> None:
    # Each open stream holds a socket and a task until its run ends: 3,000 on
    # one hanging run cost the service 115 MB, and nothing stopped 19,000 more.
    async with serving(max_listeners_per_run=2, max_listeners=3) as client, contextlib.AsyncExitStack() as streams:
        a, b = [(await client.post("/v1/runs", json={"code": "await tools.hang()"})).json()["id"] for _ in range(2)]

        async def open_(run_id: str) -> httpx.Response:
            response = await streams.enter_async_context(client.stream("GET", f"/v1/runs/{run_id}/events"))
            if response.status_code != 200:
                await response.aread()
            return response

        first = await open_(a)
        assert (await open_(a)).status_code == 200
        per_run = await open_(a)
        assert (await open_(b)).status_code == 200
        in_all = await open_(b)
        # A stream that closes is no longer counted: the run takes a new one.
        await first.aclose()
        with anyio.fail_after(10):
            while (again := await open_(a)).status_code != 200:
                await anyio.sleep(0.05)
        metrics = (await client.get("/metrics")).text

    for refused in (per_run, in_all):
        assert_problem(refused, 429, "too_many_listeners")
        assert refused.headers["retry-after"] == "1"
    assert again.status_code == 200
    assert 'codemode_rejected_total{reason="too_many_listeners"}' in metrics


async def test_delete_cancels_a_run_and_its_in_flight_tool_call() -> None:
    probe = Probe()
    async with serving(probe) as client:
        run_id = (await client.post("/v1/runs", json={"code": "await tools.hang()"})).json()["id"]
        with anyio.fail_after(10):
            await probe.hang_started.wait()
        with anyio.fail_after(3):
            cancelled = await client.delete(f"/v1/runs/{run_id}")
            await probe.hang_cancelled.wait()
        after = await client.get(f"/v1/runs/{run_id}")
        async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
            events = [item async for item in sse(response)]
        metrics = (await client.get("/metrics")).text

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["result"] is None
    assert after.json()["status"] == "cancelled"
    assert [name for name, _ in events] == ["tool_call_started", "result"]
    assert events[-1][1]["status"] == "cancelled"
    assert 'codemode_runs_total{outcome="cancelled"} 1' in metrics


async def test_a_client_that_disconnects_cancels_its_run() -> None:
    probe = Probe()
    async with serving(probe) as client:

        async def post() -> None:
            await client.post("/v1/execute", json={"code": "await tools.hang()"})

        async with anyio.create_task_group() as tg:
            tg.start_soon(post)
            with anyio.fail_after(10):
                await probe.hang_started.wait()
            tg.cancel_scope.cancel()  # closes the connection mid-request
        with anyio.fail_after(5):
            await probe.hang_cancelled.wait()
        health = await client.get("/healthz")

    assert health.status_code == 200


async def test_a_flood_beyond_the_queue_gets_429_with_retry_after_and_the_server_survives() -> None:
    code = "await tools.slow(seconds=0.3)"
    async with serving(max_concurrency=2, queue=4) as client:
        responses: list[httpx.Response] = []

        async def post() -> None:
            responses.append(await client.post("/v1/execute", json={"code": code}))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(post)
        health = await client.get("/healthz")
        after = await client.post("/v1/execute", json={"code": code})
        metrics = (await client.get("/metrics")).text

    busy = [r for r in responses if r.status_code == 429]
    done = [r for r in responses if r.status_code == 200]
    assert len(busy) + len(done) == 50
    assert busy and len(done) >= 6
    assert all(r.json()["ok"] for r in done)
    for response in busy:
        assert_problem(response, 429, "busy")
        assert int(response.headers["retry-after"]) >= 1
    assert health.status_code == 200 and after.json()["ok"] is True
    assert f'codemode_rejected_total{{reason="busy"}} {len(busy)}' in metrics
    assert "codemode_queue_depth 0" in metrics and "codemode_runs_in_flight 0" in metrics


async def test_a_configured_token_is_required() -> None:
    async with serving(token="s3cret") as client:
        missing = await client.post("/v1/execute", json={"code": "1"})
        wrong = await client.post("/v1/execute", json={"code": "1"}, headers={"Authorization": "Bearer nope"})
        right = await client.post("/v1/execute", json={"code": "1"}, headers={"Authorization": "Bearer s3cret"})
        health = await client.get("/healthz")

    assert_problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_problem(wrong, 401, "unauthorized")
    assert right.status_code == 200 and right.json()["value"] == 1
    assert health.status_code == 200


def test_binding_off_loopback_without_a_token_is_refused() -> None:
    assert HttpSettings(host="0.0.0.0").problems()
    assert not HttpSettings(host="0.0.0.0", token="t").problems()
    assert not HttpSettings(host="::1").problems()


async def test_a_foreign_origin_or_host_is_refused() -> None:
    async with serving(allow_origins=("https://app.example",)) as client:
        evil = await client.post("/v1/execute", json={"code": "1"}, headers={"Origin": "http://evil.example"})
        rebound = await client.get("/v1/servers", headers={"Host": "evil.example:8000"})
        local = await client.post("/v1/execute", json={"code": "1"}, headers={"Origin": "http://localhost:3000"})
        allowed = await client.post("/v1/execute", json={"code": "1"}, headers={"Origin": "https://app.example"})
        no_origin = await client.post("/v1/execute", json={"code": "1"})

    assert_problem(evil, 403, "forbidden_origin")
    assert_problem(rebound, 403, "forbidden_host")
    assert local.status_code == 200
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert no_origin.status_code == 200


async def test_an_oversize_body_is_refused_while_it_is_read() -> None:
    big = json.dumps({"code": "x = '" + "a" * 20_000 + "'"}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 4_096):
            yield big[start : start + 4_096]

    async with serving(max_body_bytes=10_000) as client:
        declared = await client.post("/v1/execute", content=big, headers={"content-type": "application/json"})
        streamed = await client.post("/v1/execute", content=chunked(), headers={"content-type": "application/json"})
        small = await client.post("/v1/execute", json={"code": "1"})

    assert_problem(declared, 413, "body_too_large")
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413, "body_too_large")
    assert small.status_code == 200


async def test_malformed_and_invalid_requests_are_problems() -> None:
    async with serving() as client:
        malformed = await client.post("/v1/execute", content=b'{"code": ', headers={"content-type": "application/json"})
        wrong_type = await client.post("/v1/execute", json={"code": 1})
        form = await client.post(
            "/v1/execute", content=b"code=1", headers={"content-type": "application/x-www-form-urlencoded"}
        )

    assert_problem(malformed, 400, "malformed_json")
    body = assert_problem(wrong_type, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "code"]
    assert_problem(form, 415, "unsupported_media_type")


async def test_unknown_routes_and_methods_are_problems() -> None:
    async with serving() as client:
        missing = await client.get("/v2/nothing")
        method = await client.put("/v1/execute")

    assert_problem(missing, 404, "not_found")
    assert_problem(method, 405, "method_not_allowed")
    assert method.headers["allow"] == "POST"


class _BrokenSearch(CodeMode):
    def search_tools(self, query: str, limit: int = 10, *, with_stubs: bool = False) -> Any:
        raise RuntimeError("secret internals")


async def test_an_unexpected_error_is_a_problem_without_a_traceback() -> None:
    async with serving(cls=_BrokenSearch) as client:
        response = await client.get("/v1/tools/search", params={"q": "x"})
        health = await client.get("/healthz")

    body = assert_problem(response, 500, "internal_error")
    assert "secret" not in response.text and "RuntimeError" not in body["detail"]
    assert health.status_code == 200


async def test_discovery_endpoints_go_through_the_catalog() -> None:
    async with serving() as client:
        servers = await client.get("/v1/servers")
        search = await client.get("/v1/tools/search", params={"q": "double a number", "limit": 2})
        stubs = await client.get("/v1/stubs", params={"tools": "tools.quick,tools.slow"})
        unknown = await client.get("/v1/stubs", params={"tools": "tools.quik"})
        bad_limit = await client.get("/v1/tools/search", params={"q": "x", "limit": 0})
        with_stubs = await client.get("/v1/tools/search", params={"q": "double a number", "with_stubs": "true"})

    assert servers.json()["servers"][0]["tools"] == ["gated", "hang", "quick", "slow"]
    hits = search.json()["hits"]
    assert hits[0]["name"] == "tools.quick" and len(hits) <= 2
    assert search.json()["stubs"] is None
    assert with_stubs.json()["hits"][0]["name"] == "tools.quick"
    assert "async def quick(" in with_stubs.json()["stubs"]
    assert stubs.headers["content-type"].startswith("text/x-python")
    assert "async def quick" in stubs.text and "async def slow" in stubs.text and "def hang" not in stubs.text
    problem = assert_problem(unknown, 404, "tool_not_found")
    assert "tools.quick" in problem["suggestions"]["tools.quik"]
    assert_problem(bad_limit, 422, "validation_error")


async def test_health_metrics_and_docs() -> None:
    async with serving() as client:
        await client.post("/v1/execute", json={"code": "await tools.quick(x=1)"})
        await client.post("/v1/execute", json={"code": "raise ValueError('no')"})
        health = await client.get("/healthz")
        metrics = await client.get("/metrics")
        docs = await client.get("/docs")
        schema = (await client.get("/openapi.json")).json()

    assert health.json() == {"status": "ok", "backend": "wasm", "tools": 4, "failures": [], "servers": []}
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'codemode_runs_total{outcome="succeeded"} 1' in text
    assert 'codemode_run_errors_total{code="uncaught_exception"} 1' in text
    assert 'codemode_tool_call_duration_seconds_bucket{le="+Inf"} 1' in text
    assert "codemode_tool_call_duration_seconds_count 1" in text
    assert docs.status_code == 200
    description = schema["paths"]["/v1/execute"]["post"]["description"]
    assert "still HTTP 200" in description and "`ok: false`" in description


async def test_limits_of_the_wrong_type_or_below_the_guest_minimum_are_refused() -> None:
    from codemode._limits import GUEST_MIN_MEMORY

    async with serving() as client:
        small = await client.post("/v1/execute", json={"code": "1", "limits": {"memory": 1 << 20}})
        flag = await client.post("/v1/execute", json={"code": "1", "limits": {"timeout": True}})
        text = await client.post("/v1/execute", json={"code": "1", "limits": {"timeout": "5"}})
        fraction = await client.post("/v1/execute", json={"code": "1", "limits": {"max_stdout": 10.5}})
        fine = await client.post("/v1/execute", json={"code": "1", "limits": {"timeout": 5, "memory": 64 << 20}})
    body = assert_problem(small, 422, "validation_error")
    assert str(GUEST_MIN_MEMORY) in json.dumps(body), body
    for response in (flag, text, fraction):
        assert_problem(response, 422, "validation_error")
    assert fine.status_code == 200 and fine.json()["value"] == 1, fine.text
