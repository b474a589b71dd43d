"""`codemode.Client` and `AsyncClient` against a real `codemode serve` app under
uvicorn on a free loopback port (real wasm, in-process tools), including a real
dropped connection: a TCP proxy that cuts the event stream mid-run."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest
import uvicorn

from codemode import (
    AsyncClient,
    Client,
    CodeMode,
    CodeSyntaxError,
    ConfigError,
    Forbidden,
    HttpSettings,
    InvalidArguments,
    RequestRejected,
    RunEvent,
    RunNotFound,
    RunResult,
    SandboxUnavailable,
    ServerSummary,
    ServiceBusy,
    ServiceError,
    ServiceUnreachable,
    ToolCallRecord,
    ToolHit,
    ToolNotFound,
    Unauthorized,
    UncaughtException,
    create_app,
)
from codemode._client import _problem_error
from tests.test_http import Probe, _Server, make_tools

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def serving(probe: Probe | None = None, **settings: Any) -> AsyncIterator[tuple[str, CodeMode]]:
    """The base URL of a live service over a fresh CodeMode with the test tools."""
    async with CodeMode(tools=make_tools(probe or Probe())) as cm:
        app = create_app(cm, HttpSettings(**settings))
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(30):
                await server.ready.wait()
            port = server.servers[0].sockets[0].getsockname()[1]
            try:
                yield f"http://127.0.0.1:{port}", cm
            finally:
                server.should_exit = True


async def in_thread(fn: Callable[[], Any]) -> Any:
    """The blocking client runs on a worker thread: the server shares this event loop."""
    with anyio.fail_after(30):
        return await anyio.to_thread.run_sync(fn)


_CASES = [
    "import asyncio\nsum(await asyncio.gather(tools.quick(x=1), tools.quick(x=2)))",
    "def (",
    "def f():\n    raise KeyError('k')\nf()",
    "await tools.quick(x='not a number')",
]


async def test_execute_gives_what_the_python_api_gives() -> None:
    async with serving() as (url, cm):
        with Client(url) as client:
            for code in _CASES:
                remote = await in_thread(lambda code=code: client.execute(code, trace=True))
                local = await cm.execute(code)
                assert isinstance(remote, RunResult)
                assert remote.value == local.value and remote.ok == local.ok
                assert type(remote.error) is type(local.error)
                if local.error is not None:
                    assert remote.error is not None and remote.error.to_dict() == local.error.to_dict()
                assert [(c.namespace, c.tool, c.arguments, c.ok) for c in remote.tool_calls] == [
                    (c.namespace, c.tool, c.arguments, c.ok) for c in local.tool_calls
                ]


async def test_execute_results_are_typed() -> None:
    async with serving() as (url, _), AsyncClient(url) as client:
        ok = await client.execute(_CASES[0], trace=True)
        assert ok.value == 6 and ok.backend == "wasm"
        assert all(isinstance(c, ToolCallRecord) for c in ok.tool_calls) and len(ok.tool_calls) == 2
        syntax = await client.execute(_CASES[1])
        assert isinstance(syntax.error, CodeSyntaxError) and syntax.error.line == 1
        uncaught = await client.execute(_CASES[2])
        assert isinstance(uncaught.error, UncaughtException) and uncaught.error.exc_type == "KeyError"
        assert [f.name for f in uncaught.error.traceback] == ["<module>", "f"]
        invalid = await client.execute(_CASES[3])
        assert isinstance(invalid.error, InvalidArguments) and invalid.error.tool == "tools.quick"
        with pytest.raises(UncaughtException):
            uncaught.raise_for_error()


async def test_a_background_run_streams_its_events_and_ends_with_its_result() -> None:
    probe = Probe()
    async with serving(probe) as (url, _), AsyncClient(url) as client:
        run = await client.start_run("a = await tools.quick(x=20)\nb = await tools.gated()\n[a, b]", trace=True)
        assert run.status == "queued" and not run.finished
        seen: list[RunEvent] = []
        with anyio.fail_after(30):
            async for event in client.events(run.id):
                seen.append(event)
                if event.type == "tool_call_started" and event.data["tool"] == "gated":
                    assert (await client.get_run(run.id)).status == "running"
                    probe.gate.set()
        assert [e.type for e in seen] == ["tool_call_started", "tool_call_finished"] * 2 + ["result"]
        assert [e.id for e in seen] == [1, 2, 3, 4, None]
        final = seen[-1].run
        assert final is not None and final.status == "succeeded" and final.finished
        assert final.result is not None and final.result.value == [40, "opened"]
        again = await client.get_run(run.id)
        assert again.result is not None and again.result.value == [40, "opened"] and len(again.result.tool_calls) == 2
        # Resuming after an id gives only what came after it.
        tail = [e async for e in client.events(run.id, last_event_id=3)]
        assert [e.id for e in tail] == [4, None]


async def test_cancel_stops_a_run_and_its_tool_call() -> None:
    probe = Probe()
    async with serving(probe) as (url, _), AsyncClient(url) as client:
        run = await client.start_run("await tools.hang()")
        with anyio.fail_after(20):
            await probe.hang_started.wait()
        cancelled = await client.cancel(run.id)
        assert cancelled.status == "cancelled" and cancelled.result is None
        with anyio.fail_after(20):
            await probe.hang_cancelled.wait()


async def test_discovery_returns_the_catalog_types() -> None:
    async with serving() as (url, cm):
        client = Client(url)
        servers = await in_thread(client.servers)
        assert servers == cm.list_servers() and all(isinstance(s, ServerSummary) for s in servers)
        hits = await in_thread(lambda: client.search("double a number", limit=2))
        assert all(isinstance(h, ToolHit) for h in hits)
        local = cm.search_tools("double a number", limit=2)
        assert [(h.qualified_name, h.signature, h.summary) for h in hits] == [
            (h.qualified_name, h.signature, h.summary) for h in local
        ]
        assert await in_thread(lambda: client.stubs(["tools.quick"])) == cm.stubs(["tools.quick"])
        client.close()
        client.close()  # safe twice


async def test_refusals_raise_the_python_api_errors() -> None:
    async with serving(token="s3cret") as (url, cm):
        async with AsyncClient(url) as anonymous:
            with pytest.raises(Unauthorized) as unauthorized:
                await anonymous.execute("1")
            assert unauthorized.value.status == 401 and unauthorized.value.problem["code"] == "unauthorized"
        async with AsyncClient(url, token="s3cret", headers={"Origin": "http://evil.example"}) as foreign:
            with pytest.raises(Forbidden) as forbidden:
                await foreign.servers()
            assert forbidden.value.problem["code"] == "forbidden_origin"
        async with AsyncClient(url, token="s3cret") as client:
            with pytest.raises(ToolNotFound) as not_found:
                await client.stubs(["tools.quik"])
            with pytest.raises(ToolNotFound) as local:
                cm.stubs(["tools.quik"])
            assert not_found.value.suggestions == local.value.suggestions == {"tools.quik": ["tools.quick"]}
            assert str(not_found.value) == str(local.value)
            for call in (client.get_run, client.cancel):
                with pytest.raises(RunNotFound):
                    await call("run_nope")
            with pytest.raises(RunNotFound):
                [e async for e in client.events("run_nope")]
            with pytest.raises(RequestRejected) as no_route:  # the id is quoted: no other endpoint is reached
                await client.get_run("../../v1/servers")
            assert no_route.value.problem["code"] == "not_found"
            with pytest.raises(RequestRejected) as rejected:
                await client.execute("1", limits={"timeout": -1})
            assert rejected.value.problem["code"] == "validation_error"


async def test_a_full_service_raises_service_busy() -> None:
    probe = Probe()
    async with serving(probe, max_concurrency=1, queue=0, retry_after_s=3) as (url, _), AsyncClient(url) as client:
        run = await client.start_run("await tools.gated()")
        with pytest.raises(ServiceBusy) as busy:
            await client.execute("1")
        assert busy.value.retry_after_s == 3
        probe.gate.set()
        with anyio.fail_after(20):
            async for event in client.events(run.id):
                if event.run is not None:
                    assert event.run.status == "succeeded"


async def test_an_unreachable_service_raises_service_unreachable() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now
    async with AsyncClient(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(ServiceUnreachable):
            await client.execute("1")


@dataclass
class CuttingProxy:
    """A TCP proxy to the service that cuts the first event stream once it has
    passed on event `cut_after`; it records each event stream's request."""

    upstream_port: int
    cut_after: int = 2
    requests: list[bytes] = field(default_factory=list)
    reconnected: anyio.Event = field(default_factory=anyio.Event)
    port: int = 0
    last_id_passed: int = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self.handle)

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        cut = False
        closed = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
        async with client, await anyio.connect_tcp("127.0.0.1", self.upstream_port) as server:
            async with anyio.create_task_group() as tg:

                async def upstream() -> None:
                    nonlocal cut
                    with contextlib.suppress(*closed):
                        async for chunk in client:  # requests on a kept-alive connection come here too
                            if b"/events HTTP/1.1" in chunk:
                                self.requests.append(chunk)
                                cut = len(self.requests) == 1
                                if len(self.requests) == 2:
                                    self.reconnected.set()
                            await server.send(chunk)

                tg.start_soon(upstream)
                seen = b""
                marker = b"id: %d\n" % self.cut_after
                with contextlib.suppress(*closed):
                    async for chunk in server:
                        await client.send(chunk)
                        if cut:
                            seen += chunk
                            if marker in seen and b"\n\n" in seen.split(marker, 1)[1]:
                                # The last whole event passed on (a chunk may carry more than one).
                                whole = seen.rsplit(b"\n\n", 1)[0]
                                self.last_id_passed = max(int(i) for i in re.findall(rb"id: (\d+)\n", whole))
                                break  # the connection drops here, mid-run
                tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_events_resume_after_a_dropped_connection_with_last_event_id(kind: str) -> None:
    probe = Probe()
    async with serving(probe) as (url, _), anyio.create_task_group() as tg:
        proxy = CuttingProxy(upstream_port=int(url.rsplit(":", 1)[1]))
        await tg.start(proxy.serve)

        async def open_gate_on_reconnect() -> None:
            await proxy.reconnected.wait()
            probe.gate.set()

        tg.start_soon(open_gate_on_reconnect)
        code = "a = await tools.quick(x=1)\nb = await tools.gated()\nc = await tools.quick(x=2)\n[a, b, c]"
        seen: list[RunEvent]
        with anyio.fail_after(30):
            if kind == "async":
                async with AsyncClient(f"http://127.0.0.1:{proxy.port}") as client:
                    run = await client.start_run(code)
                    seen = [e async for e in client.events(run.id)]
            else:
                with Client(f"http://127.0.0.1:{proxy.port}") as sync_client:
                    run = await in_thread(lambda: sync_client.start_run(code))
                    seen = await in_thread(lambda: list(sync_client.events(run.id)))
        tg.cancel_scope.cancel()
    assert len(proxy.requests) == 2, "the stream was not cut and resumed"
    assert proxy.last_id_passed >= proxy.cut_after
    assert f"last-event-id: {proxy.last_id_passed}\r\n".encode() in proxy.requests[1].lower()
    # Every event exactly once, in order, and the run's result at the end.
    assert [e.id for e in seen] == [1, 2, 3, 4, 5, 6, None]
    final = seen[-1].run
    assert final is not None and final.result is not None and final.result.value == [2, "opened", 4]


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "sandbox_unavailable", SandboxUnavailable),
        (503, "config_error", ConfigError),
        (401, "unauthorized", Unauthorized),
        (403, "forbidden_host", Forbidden),
        (408, "request_timeout", RequestRejected),
        (429, "busy", ServiceBusy),
        (500, "internal_error", ServiceError),
    ],
)
def test_each_problem_code_maps_to_its_error(status: int, code: str, expected: type[Exception]) -> None:
    # The service's failures that a test cannot provoke for real (a sandbox that
    # stops loading mid-service) go through this same mapping.
    error = _problem_error(status, {"code": code, "title": "t", "detail": "why", "status": status})
    assert type(error) is expected and error.message == "why"
