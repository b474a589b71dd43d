"""execute_code as an MCP task over Streamable HTTP, end to end: real `codemode mcp
--http` processes, the official SDK client on a 2025-11-25 session, the fixture
server as the upstream, and for the fleet a real redis-server.

The SDK's client checks every `tools/call` answer against `CallToolResult`
(mcp 2.3 serves and checks no tasks), so the one task-augmented `tools/call`
goes through its session's raw request path; `tasks/*` go through
`ClientSession.send_request` with the SDK's own request types."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import pytest
from anyio.abc import Process
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, NotificationBinding, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolRequest,
    CallToolRequestParams,
    CallToolResult,
    CancelTaskRequest,
    CancelTaskRequestParams,
    CancelTaskResult,
    CreateTaskResult,
    GetTaskPayloadRequest,
    GetTaskPayloadRequestParams,
    GetTaskRequest,
    GetTaskRequestParams,
    GetTaskResult,
    TaskMetadata,
    TaskStatusNotificationParams,
    TextContent,
)
from mcp_types import Result
from mcp_types.jsonrpc import INVALID_PARAMS, MISSING_REQUIRED_CLIENT_CAPABILITY

from codemode._sandbox.wasm import WasmBackend
from tests.fixtures.helpers import stdio_entry

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.fixtures.redis"]  # the `redis_url` fixture

REPO = Path(__file__).resolve().parent.parent
STARTUP_S = 60
ALICE, BOB = "tasks-token-alice-7c1f", "tasks-token-bob-93ad"
SLOW = 'r = await demo.slow(seconds=SECONDS)\n{"said": r, "n": 6 * 7}'
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def guest_built() -> None:
    """Build (or load) the guest once, before any server is spawned."""
    WasmBackend().load()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the mcpServers config, the tokens file)."""
    root = tmp_path_factory.mktemp("tasks")
    config, tokens = root / "mcp.json", root / "tokens"
    config.write_text(json.dumps({"mcpServers": {"demo": stdio_entry()}}))
    tokens.write_text(f"{ALICE} alice\n{BOB} bob\n")
    return config, tokens


@dataclass(frozen=True)
class Server:
    url: str
    proc: Process


async def _drain(proc: Process) -> None:
    assert proc.stderr is not None
    async for _ in proc.stderr:
        pass


@asynccontextmanager
async def serve(files: tuple[Path, Path], *extra: str) -> AsyncIterator[Server]:
    """`codemode mcp --http --port 0 --tokens-file …` as a process; SIGTERMed at the end
    (then it must exit 0) unless the test killed it."""
    config, tokens = files
    argv = [sys.executable, "-m", "codemode", "mcp", "--config", str(config), "--http", "--port", "0"]
    argv += ["--tokens-file", str(tokens), *extra]
    async with await anyio.open_process(argv, env={**os.environ, "PYTHONPATH": str(REPO)}) as proc:
        assert proc.stderr is not None
        seen = ""
        with anyio.fail_after(STARTUP_S):
            async for chunk in proc.stderr:
                seen += chunk.decode(errors="replace")
                if match := re.search(r"listening on (http://\S+/mcp)", seen):
                    break
            else:
                raise AssertionError(f"the server exited before listening:\n{seen}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, proc)  # a full pipe would block the server's logging
            try:
                yield Server(url=match.group(1), proc=proc)
            finally:
                killed = proc.returncode is not None
                if not killed:
                    proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(15):
                    code = await proc.wait()
                tg.cancel_scope.cancel()
            assert killed or code == 0  # a clean stop, with the run store open


class StatusWatch(ClientExtension):
    """Hands the client's `notifications/tasks/status` to the test (the SDK drops
    notifications its 2025-11-25 tables leave out unless a binding asks for them)."""

    identifier = "test.codemode/task-status"

    def __init__(self) -> None:
        self.seen: list[TaskStatusNotificationParams] = []
        self.changed = anyio.Event()

    def notifications(self) -> list[NotificationBinding[TaskStatusNotificationParams]]:
        return [
            NotificationBinding(
                method="notifications/tasks/status", params_type=TaskStatusNotificationParams, handler=self._on
            )
        ]

    async def _on(self, params: TaskStatusNotificationParams) -> None:
        self.seen.append(params)
        self.changed.set()
        self.changed = anyio.Event()


@asynccontextmanager
async def connect(url: str, token: str = ALICE, watch: StatusWatch | None = None) -> AsyncIterator[Client]:
    """The SDK client on a 2025-11-25 (handshake) session, the era whose protocol has tasks."""
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=120)
    ) as http:
        with anyio.fail_after(30):
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode="legacy", extensions=[watch] if watch else []) as client:
                yield client


# --- 2026-07-28: the io.modelcontextprotocol/tasks extension (SEP-2663), through the SDK's claims -------


class TaskHandle(Result):
    """`CreateTaskResult` of the extension: the answer to tools/call when the server makes a task."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None


class DetailedTask(Result):
    """The extension's `tasks/get` answer."""

    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class TasksExtension(ClientExtension):
    """The client half, as an SDK client extension: declares the extension on every
    request and resolves a task handle by polling `tasks/get`."""

    identifier = "io.modelcontextprotocol/tasks"

    def __init__(self) -> None:
        self.handles: list[TaskHandle] = []

    def claims(self) -> list[ResultClaim[TaskHandle]]:
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self._resolve)]

    async def _resolve(self, handle: TaskHandle, ctx: ClaimContext) -> CallToolResult:
        self.handles.append(handle)
        task = await poll_detailed(ctx.session, handle.task_id)
        assert task.status == "completed" and task.result is not None, task
        return CallToolResult.model_validate(task.result, by_name=False)


async def get_detailed(session: Any, task_id: str) -> DetailedTask:
    request = GetTaskRequest(params=GetTaskRequestParams(task_id=task_id))
    detailed: DetailedTask = await session.send_request(request, DetailedTask)
    return detailed


async def poll_detailed(session: Any, task_id: str) -> DetailedTask:
    with anyio.fail_after(60):
        while True:
            task = await get_detailed(session, task_id)
            if task.status in TERMINAL:
                return task
            await anyio.sleep(0.1)  # polling is the protocol here: there is no event to wait on


@asynccontextmanager
async def connect_modern(url: str, token: str = ALICE, tasks: bool = True) -> AsyncIterator[Client]:
    """The SDK client on a 2026-07-28 session, declaring the tasks extension (or not)."""
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=120)
    ) as http:
        with anyio.fail_after(30):
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, extensions=[TasksExtension()] if tasks else []) as client:
                assert client.session.protocol_version == "2026-07-28"
                yield client


async def start_task(client: Client, code: str, ttl_ms: int = 60_000) -> CreateTaskResult:
    params = {"name": "execute_code", "arguments": {"code": code}, "task": {"ttl": ttl_ms}}
    with anyio.fail_after(10):  # answered at once, not when the program ends
        raw = await client.session._dispatcher.send_raw_request("tools/call", params, {"timeout": 10})
    return CreateTaskResult.model_validate(raw, by_name=False)


async def get_task(client: Client, task_id: str) -> GetTaskResult:
    request = GetTaskRequest(params=GetTaskRequestParams(task_id=task_id))
    return await client.session.send_request(request, GetTaskResult)


async def task_result(client: Client, task_id: str) -> CallToolResult:
    request = GetTaskPayloadRequest(params=GetTaskPayloadRequestParams(task_id=task_id))
    return await client.session.send_request(request, CallToolResult)


async def cancel_task(client: Client, task_id: str) -> CancelTaskResult:
    request = CancelTaskRequest(params=CancelTaskRequestParams(task_id=task_id))
    return await client.session.send_request(request, CancelTaskResult)


async def poll_until_done(client: Client, task_id: str) -> GetTaskResult:
    with anyio.fail_after(60):
        while True:
            task = await get_task(client, task_id)
            if task.status in TERMINAL:
                return task
            await anyio.sleep(0.1)  # polling is the protocol here: there is no event to wait on


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


@pytest.fixture(scope="module")
async def server(files: tuple[Path, Path]) -> AsyncIterator[Server]:
    # No stubs inline, so search_tools and get_tool_stubs are served beside execute_code.
    async with serve(files, "--stubs-budget", "0") as running:
        yield running


async def test_handshake_sessions_are_offered_tasks_for_execute_code_only(server: Server) -> None:
    async with connect(server.url) as client:
        capabilities = client.session.server_capabilities
        assert capabilities is not None and capabilities.tasks is not None
        assert capabilities.tasks.cancel is not None
        assert capabilities.tasks.requests is not None and capabilities.tasks.requests.tools is not None
        assert capabilities.tasks.requests.tools.call is not None
        tools = {t.name: t for t in (await client.list_tools()).tools}
        execute = tools["execute_code"]
        assert execute.execution is not None and execute.execution.task_support == "optional"
        assert tools["search_tools"].execution is None and tools["get_tool_stubs"].execution is None
    # 2026-07-28 sessions are not offered the 2025-11-25 tasks (there they are a different extension).
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}, timeout=30) as http:
        async with Client(streamable_http_client(server.url, http_client=http)) as modern:
            assert modern.session.protocol_version == "2026-07-28"
            tools = {t.name: t for t in (await modern.list_tools()).tools}
            assert tools["execute_code"].execution is None
            with pytest.raises(MCPError):
                await get_task(modern, "run_doesnotexist000")
            params = CallToolRequestParams(name="execute_code", arguments={"code": "6 * 7"}, task=TaskMetadata(ttl=1))
            plain = await modern.session.send_request(CallToolRequest(params=params), CallToolResult)
            assert plain.structured_content is not None and plain.structured_content["value"] == 42


async def test_a_task_is_answered_at_once_then_polled_and_its_result_fetched(server: Server) -> None:
    async with connect(server.url) as client:
        created = await start_task(client, SLOW.replace("SECONDS", "1.5"))
        task = created.task
        assert task.status == "working"
        assert task.task_id.startswith("run_") and len(task.task_id) >= 16
        assert task.ttl == 600_000  # the store keeps finished runs 600 s, whatever the client asked (60 s)
        assert task.poll_interval is not None
        assert task.created_at.endswith("Z")
        done = await poll_until_done(client, task.task_id)
        assert done.status == "completed" and done.task_id == task.task_id
        result = await task_result(client, task.task_id)
        assert not result.is_error
        assert result.structured_content is not None
        assert result.structured_content["value"] == {"said": "slept 1.5", "n": 42}
        assert '"n": 42' in text_of(result)
        assert result.meta == {"io.modelcontextprotocol/related-task": {"taskId": task.task_id}}
        # A plain call, without `task`, still answers the result itself.
        plain = await client.call_tool("execute_code", {"code": "6 * 7"})
        assert not plain.is_error and plain.structured_content is not None
        assert plain.structured_content["value"] == 42


async def test_a_connected_client_is_told_when_its_task_ends(server: Server) -> None:
    watch = StatusWatch()
    async with connect(server.url, watch=watch) as client:
        task = (await start_task(client, SLOW.replace("SECONDS", "1"))).task
        with anyio.fail_after(60):
            while not any(n.task_id == task.task_id for n in watch.seen):
                await watch.changed.wait()
        (note,) = [n for n in watch.seen if n.task_id == task.task_id]
        assert note.status == "completed" and note.created_at == task.created_at


async def test_tasks_result_waits_for_the_end_and_a_failing_program_is_a_failed_task(server: Server) -> None:
    async with connect(server.url) as client:
        task = (await start_task(client, SLOW.replace("SECONDS", "1") + "\n1 / 0")).task
        with anyio.fail_after(60):
            result = await task_result(client, task.task_id)  # blocks until the run ends
        assert result.is_error and result.structured_content is not None
        error = result.structured_content["error"]
        assert (error["code"], error["exc_type"]) == ("uncaught_exception", "ZeroDivisionError")
        done = await get_task(client, task.task_id)
        assert done.status == "failed"
        assert done.status_message is not None and "ZeroDivisionError" in done.status_message


async def test_a_cancelled_task_ends_cancelled_and_cannot_be_cancelled_again(server: Server) -> None:
    async with connect(server.url) as client:
        task = (await start_task(client, SLOW.replace("SECONDS", "30"))).task
        with anyio.fail_after(20):
            cancelled = await cancel_task(client, task.task_id)
        assert cancelled.status == "cancelled"
        assert (await get_task(client, task.task_id)).status == "cancelled"
        result = await task_result(client, task.task_id)
        assert result.is_error and result.structured_content is not None
        assert result.structured_content["error"]["code"] == "cancelled"
        with pytest.raises(MCPError) as again:
            await cancel_task(client, task.task_id)
        assert again.value.code == INVALID_PARAMS


async def test_unknown_and_other_clients_task_ids_are_the_same_clear_error(server: Server) -> None:
    async with connect(server.url) as alice:
        task = (await start_task(alice, "6 * 7")).task
        await poll_until_done(alice, task.task_id)
        async with connect(server.url, token=BOB) as bob:
            for ask in (get_task, task_result, cancel_task):
                with pytest.raises(MCPError) as foreign:
                    await ask(bob, task.task_id)
                with pytest.raises(MCPError) as unknown:
                    await ask(bob, "run_doesnotexist000")
                assert foreign.value.code == unknown.value.code == INVALID_PARAMS
                assert "no task" in foreign.value.message and "of yours" in foreign.value.message
        assert (await get_task(alice, task.task_id)).status == "completed"
        with pytest.raises(MCPError) as huge:  # a 100 kB id is not echoed back whole
            await get_task(alice, "x" * 100_000)
        assert huge.value.code == INVALID_PARAMS and len(huge.value.message) < 300, len(huge.value.message)


async def test_tasks_result_waiters_are_bounded_per_task(server: Server) -> None:
    async with connect(server.url) as client:
        task = (await start_task(client, SLOW.replace("SECONDS", "30"))).task
        results: list[CallToolResult] = []
        refused: list[MCPError] = []
        one_refused = anyio.Event()

        async def wait() -> None:
            try:
                results.append(await task_result(client, task.task_id))
            except MCPError as exc:
                refused.append(exc)
                one_refused.set()

        async with anyio.create_task_group() as tg:
            for _ in range(17):  # one more than may wait on one task
                tg.start_soon(wait)
            with anyio.fail_after(30):
                await one_refused.wait()
            await cancel_task(client, task.task_id)  # every waiter gets the cancelled result
        assert [(e.code, e.data) for e in refused] == [(-32000, {"code": "too_many_waiters"})]
        assert len(results) == 16 and all(r.is_error for r in results)
        assert (await task_result(client, task.task_id)).is_error  # ended: answered at once, never refused


async def test_each_task_takes_a_queue_place_and_past_them_the_call_is_refused_busy(server: Server) -> None:
    # 4 running slots and 16 queue places (mcp --http's defaults): task 21 is refused at once.
    async with connect(server.url) as client:
        started: list[str] = []
        try:
            for _ in range(20):
                started.append((await start_task(client, SLOW.replace("SECONDS", "30"))).task.task_id)
            with pytest.raises(MCPError) as busy:
                await start_task(client, "1")
            assert busy.value.code == -32000 and isinstance(busy.value.data, dict)
            assert busy.value.data["code"] == "busy" and busy.value.data["retry_after_s"] >= 1
        finally:
            for task_id in started:
                await cancel_task(client, task_id)
        assert (await start_task(client, "1")).task.status == "working"  # places given back


async def test_a_task_with_bad_arguments_is_a_clear_error_not_a_task(server: Server) -> None:
    async with connect(server.url) as client:
        for arguments in ({}, {"code": 42}, {"code": "1", "trace": "very"}):
            params = {"name": "execute_code", "arguments": arguments, "task": {"ttl": 1000}}
            with pytest.raises(MCPError) as bad:
                await client.session._dispatcher.send_raw_request("tools/call", params, {"timeout": 10})
            assert bad.value.code == INVALID_PARAMS and "execute_code arguments" in bad.value.message
        for task in ("soon", {"ttl": "long"}):
            params = {"name": "execute_code", "arguments": {"code": "1"}, "task": task}
            with pytest.raises(MCPError) as bad:
                await client.session._dispatcher.send_raw_request("tools/call", params, {"timeout": 10})
            assert bad.value.code == INVALID_PARAMS and "task" in bad.value.message
        # The server is still fine.
        assert (await start_task(client, "1")).task.status == "working"


async def test_a_2026_client_declaring_the_extension_gets_a_task_the_sdk_resolves(server: Server) -> None:
    extension = TasksExtension()
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}, timeout=30) as http:
        async with Client(streamable_http_client(server.url, http_client=http), extensions=[extension]) as client:
            capabilities = client.session.server_capabilities
            assert capabilities is not None and capabilities.extensions is not None
            assert capabilities.extensions.get("io.modelcontextprotocol/tasks") == {}
            result = await client.call_tool("execute_code", {"code": SLOW.replace("SECONDS", "1")})
            assert result.structured_content is not None
            assert result.structured_content["value"] == {"said": "slept 1.0", "n": 42}
            (handle,) = extension.handles  # it came back as a task, resolved by polling tasks/get
            assert handle.status == "working" and handle.ttl_ms == 600_000 and handle.task_id.startswith("run_")
            # Other tools answer as before.
            found = await client.call_tool("search_tools", {"query": "weather"})
            assert not found.is_error and len(extension.handles) == 1


async def test_2026_tasks_are_polled_cancelled_and_owned(server: Server) -> None:
    async with connect_modern(server.url) as client:
        handle = await client.session.call_tool("execute_code", {"code": "1 / 0"}, allow_claimed=True)
        assert isinstance(handle, TaskHandle)
        done = await poll_detailed(client.session, handle.task_id)
        # The extension keeps `failed` for protocol errors: a failing program is a completed task.
        assert done.status == "completed" and done.result is not None and done.result["isError"] is True
        assert done.result["structuredContent"]["error"]["exc_type"] == "ZeroDivisionError"

        slow = await client.session.call_tool(
            "execute_code", {"code": SLOW.replace("SECONDS", "30")}, allow_claimed=True
        )
        assert isinstance(slow, TaskHandle)
        request = CancelTaskRequest(params=CancelTaskRequestParams(task_id=slow.task_id))
        with anyio.fail_after(20):
            await client.session.send_request(request, Result)  # an empty acknowledgement
        assert (await poll_detailed(client.session, slow.task_id)).status == "cancelled"

        with pytest.raises(MCPError) as unknown:
            await get_detailed(client.session, "run_doesnotexist000")
        assert unknown.value.code == INVALID_PARAMS
        async with connect_modern(server.url, token=BOB) as bob:
            with pytest.raises(MCPError) as foreign:
                await get_detailed(bob.session, handle.task_id)
            assert foreign.value.code == INVALID_PARAMS and "of yours" in foreign.value.message
        async with connect_modern(server.url, tasks=False) as undeclared:
            with pytest.raises(MCPError) as missing:
                await get_detailed(undeclared.session, handle.task_id)
            assert missing.value.code == MISSING_REQUIRED_CLIENT_CAPABILITY
            plain = await undeclared.call_tool("execute_code", {"code": "6 * 7"})  # no task for it
            assert plain.structured_content is not None and plain.structured_content["value"] == 42


async def test_2026_calls_are_not_made_tasks_when_the_policy_may_ask(files: tuple[Path, Path], tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"demo": stdio_entry(approve=["slow"])}}))
    extension = TasksExtension()
    async with serve((config, files[1])) as running:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}, timeout=30) as http:
            transport = streamable_http_client(running.url, http_client=http)
            async with Client(transport, extensions=[extension]) as client:
                result = await client.call_tool("execute_code", {"code": "6 * 7"})
    assert result.structured_content is not None and result.structured_content["value"] == 42
    assert extension.handles == []  # answered as a plain call: approval rounds need the call itself


# --- a fleet: the run store in Redis --------------------------------------------------------------


async def test_a_task_outlives_its_replica_and_any_replica_returns_its_result(
    files: tuple[Path, Path], redis_url: str
) -> None:
    store = ("--store", redis_url)
    async with serve(files, *store, "--replica-id", "a") as a, serve(files, *store, "--replica-id", "b") as b:
        async with connect(a.url) as on_a:
            task = (await start_task(on_a, SLOW.replace("SECONDS", "1.5"))).task
            assert (await poll_until_done(on_a, task.task_id)).status == "completed"
        a.proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            await a.proc.wait()
        async with connect(b.url) as on_b:
            assert (await get_task(on_b, task.task_id)).status == "completed"
            result = await task_result(on_b, task.task_id)
            assert result.structured_content is not None
            assert result.structured_content["value"] == {"said": "slept 1.5", "n": 42}
        async with connect_modern(b.url) as modern:  # the same run, through the extension
            detailed = await get_detailed(modern.session, task.task_id)
            assert detailed.status == "completed" and detailed.result is not None
            assert detailed.result["structuredContent"]["value"]["n"] == 42
        async with connect(b.url, token=BOB) as bob:
            with pytest.raises(MCPError) as foreign:
                await get_task(bob, task.task_id)
            assert foreign.value.code == INVALID_PARAMS
    # A restarted replica finds it too: nothing about it lived in the processes.
    async with serve(files, *store, "--replica-id", "a") as again, connect(again.url) as client:
        result = await task_result(client, task.task_id)
        assert result.structured_content is not None and result.structured_content["value"]["n"] == 42


async def test_a_replica_not_carrying_the_task_waits_out_a_quiet_run_for_its_result(
    files: tuple[Path, Path], redis_url: str
) -> None:
    # redis-py's reads give up after 5 s (its default socket timeout): a wait for
    # the run's events must not block longer than that in one read.
    store = ("--store", redis_url)
    async with serve(files, *store, "--replica-id", "a") as a:
        async with connect(a.url) as on_a:
            task = (await start_task(on_a, SLOW.replace("SECONDS", "12"))).task
            async with serve(files, *store, "--replica-id", "b") as b, connect(b.url) as on_b:
                # a has carried it out from the start: b only reads it, quiet, for several seconds
                result = await task_result(on_b, task.task_id)
    assert not result.is_error, result
    assert result.structured_content is not None
    assert result.structured_content["value"] == {"said": "slept 12.0", "n": 42}
