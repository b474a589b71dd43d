"""MCP tasks for `execute_code`: call now, fetch the result later, from any replica.

Two wire forms of the same thing, one per protocol era. mcp 2.3 ships the
2025-11-25 wire types and client hooks for extensions, but serves neither, so
this module does:

2025-11-25 sessions, the tasks utility (SEP-1686); the client asks:

    tools/call execute_code with `task: {ttl}`  ->  CreateTaskResult {task: {taskId, status: "working", ...}}
    tasks/get     {taskId}  ->  the task's status now
    tasks/result  {taskId}  ->  the CallToolResult a plain call would have returned (waits, bounded, until it ends)
    tasks/cancel  {taskId}  ->  the task, cancelled
    notifications/tasks/status when it ends, if the client is still connected (best effort)

2026-07-28 sessions, the `io.modelcontextprotocol/tasks` extension (SEP-2663);
the server decides, and makes every execute_code call a task when the request
declares the extension (unless the tool-call policy may ask for approval: its
rounds need the call itself):

    tools/call execute_code  ->  {resultType: "task", taskId, status: "working", ttlMs, pollIntervalMs, ...}
    tasks/get     {taskId}  ->  the task, with `result` (the CallToolResult) once completed
    tasks/cancel, tasks/update  ->  an acknowledgement (no task here ever asks for input)

A task is a background run in the same `store.Runs` that `codemode serve` keeps
its `POST /v1/runs` in: this process's memory, or a Redis shared by every
replica (`--store redis://…`), so a client can start a program, go away, and
fetch its result from any replica, in either form. The task id is the run id
(12 random bytes from `secrets`); retention is the store's (the task's ttl is
its `run_ttl_s`, whatever the client asked for); a run belongs to the client
whose token started it, and any other client is told it does not exist,
exactly as for an id that never existed (`-32602`).

How it plugs into the SDK: a server middleware answers the task-making
`tools/call` before the SDK's result check (which knows only `CallToolResult`
on 2025-11-25), and adds the `tasks` capability to `initialize`,
`execution.taskSupport: "optional"` to execute_code in `tools/list`, and the
extension to `server/discover`; `tasks/*` are request handlers of their own.
Earlier protocol versions see none of it.

Not offered: `tasks/list`, the extension's `notifications/tasks` (over
`subscriptions/listen`), and approval inside a task (no MCP request answers it).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, cast

import anyio
import anyio.abc
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.server import require_client_extension
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    CancelTaskRequestParams,
    CancelTaskResult,
    CreateTaskResult,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    GetTaskResult,
    RequestParams,
    ServerTasksCapability,
    ServerTasksRequestsCapability,
    Task,
    TasksCallCapability,
    TasksCancelCapability,
    TaskStatus,
    TaskStatusNotification,
    TaskStatusNotificationParams,
    TasksToolsCapability,
    TextContent,
)
from mcp_types.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, REQUEST_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError

from .._limits import Limits
from .._result import RunResult
from .guards import ANONYMOUS
from .mcp_format import format_run
from .runs import Busy
from .store import Runs

__all__ = ["EXTENSION", "TASKS_VERSIONS", "TASK_TOOL", "McpTasks"]

logger = logging.getLogger("codemode.mcp")

TASKS_VERSIONS = frozenset({"2025-11-25"})
"""Protocol versions whose sessions are offered the tasks utility (SEP-1686)."""
EXTENSION = "io.modelcontextprotocol/tasks"
"""The tasks extension (SEP-2663), offered on 2026-07-28 sessions to clients that declare it."""
TASK_TOOL = "execute_code"
RELATED_TASK = "io.modelcontextprotocol/related-task"
BUSY = -32000
"""JSON-RPC error code (implementation-defined range) when every run slot and queue place is taken."""

_STATUS: dict[str, TaskStatus] = {
    "queued": "working",
    "running": "working",
    "waiting_approval": "working",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


class _UpdateTaskParams(RequestParams):
    task_id: str
    input_responses: dict[str, Any] | None = None


class _ExecuteArgs(BaseModel):
    code: str
    trace: bool = False


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _client(ctx: ServerRequestContext[Any, Any]) -> str:
    """Who is asking: the client name `guards.Guard` put on the HTTP request, else anonymous."""
    state = getattr(ctx.request, "state", None)
    client = getattr(state, "client", None)
    return client if isinstance(client, str) and client else ANONYMOUS


class McpTasks:
    """Tasks over `runs` (which the caller opens and closes around serving); an
    async context manager owning the task group that sends status notifications.

    `ttl_s` is how long the store keeps a finished run; `cancel_wait_s` bounds
    how long `tasks/cancel` waits for the run to wind down; `result_wait_s`
    (default: the run timeout plus a minute) bounds `tasks/result` and how long
    a status notification is waited for. At most `max_waiters_per_task`
    `tasks/result` calls wait on one task, `max_waiters` on all (each holds a
    stream and a task, like `serve`'s event streams); beyond, the call is
    refused at once with `BUSY`."""

    def __init__(
        self,
        runs: Runs,
        *,
        ttl_s: float,
        poll_interval_ms: int = 1_000,
        cancel_wait_s: float = 5.0,
        result_wait_s: float | None = None,
        max_waiters_per_task: int = 16,
        max_waiters: int = 1_024,
    ) -> None:
        self.runs = runs
        self.ttl_ms = int(ttl_s * 1000)
        self.poll_interval_ms = poll_interval_ms
        self.cancel_wait_s = cancel_wait_s
        self.result_wait_s = result_wait_s
        self.limits = Limits()
        self.approvals = False
        self.max_waiters_per_task = max_waiters_per_task
        self.max_waiters = max_waiters
        self._waiters: Counter[str] = Counter()  # `tasks/result` calls waiting, per task
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        if tg is None:
            return None
        tg.cancel_scope.cancel()  # pending notifications: their clients are being disconnected anyway
        return await tg.__aexit__(exc_type, exc, tb)

    @property
    def wait_s(self) -> float:
        return self.result_wait_s if self.result_wait_s is not None else self.limits.timeout + 60

    def install(self, server: MCPServer, limits: Limits, *, approvals: bool = False) -> None:
        """Offer tasks on `server`, whose execute_code runs with `limits`. With
        `approvals` (a tool-call policy that may ask), 2026-07-28 calls are not
        made tasks: their approval rounds need the call itself."""
        self.limits = limits
        self.approvals = approvals
        server.middleware.append(self._middleware)
        lowlevel = server._lowlevel_server  # the SDK's one way to add request handlers
        lowlevel.add_request_handler("tasks/get", GetTaskRequestParams, self._get)
        lowlevel.add_request_handler("tasks/result", GetTaskPayloadRequestParams, self._result)
        lowlevel.add_request_handler("tasks/cancel", CancelTaskRequestParams, self._cancel)
        lowlevel.add_request_handler("tasks/update", _UpdateTaskParams, self._update)

    # -- the middleware: initialize, tools/list, task-augmented tools/call -------------------------------------------

    async def _middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params
        if (self._is_task_call(ctx) or self._is_extension_call(ctx)) and isinstance(params, Mapping):
            return await self._create(ctx, params)
        result = await call_next(ctx)
        if not isinstance(result, dict):
            return result
        if ctx.method == "server/discover" and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            capabilities = result.setdefault("capabilities", {})
            capabilities.setdefault("extensions", {})[EXTENSION] = {}
        if ctx.method == "initialize" and result.get("protocolVersion") in TASKS_VERSIONS:
            capability = ServerTasksCapability(
                cancel=TasksCancelCapability(),
                requests=ServerTasksRequestsCapability(tools=TasksToolsCapability(call=TasksCallCapability())),
            )
            capabilities = result.setdefault("capabilities", {})
            capabilities["tasks"] = capability.model_dump(by_alias=True, mode="json", exclude_none=True)
        elif ctx.method == "tools/list" and ctx.protocol_version in TASKS_VERSIONS:
            for tool in result.get("tools", []):
                if isinstance(tool, dict) and tool.get("name") == TASK_TOOL:
                    tool["execution"] = {"taskSupport": "optional"}
        return result

    @staticmethod
    def _is_task_call(ctx: ServerRequestContext[Any, Any]) -> bool:
        """A task-augmented call of execute_code on a session offered tasks."""
        params = ctx.params
        return (
            ctx.method == "tools/call"
            and ctx.protocol_version in TASKS_VERSIONS
            and isinstance(params, Mapping)
            and params.get("task") is not None
            and params.get("name") == TASK_TOOL
        )

    def _is_extension_call(self, ctx: ServerRequestContext[Any, Any]) -> bool:
        """A call of execute_code on a 2026-07-28 session whose client declared the
        tasks extension on this request: the server decides, and makes it a task."""
        params = ctx.params
        return (
            ctx.method == "tools/call"
            and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
            and not self.approvals
            and _declares_extension(ctx)
            and isinstance(params, Mapping)
            and params.get("name") == TASK_TOOL
            and not params.get("requestState")  # a retry of an approval round is not a new call
        )

    async def _create(self, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        # Unchecked so far: the middleware runs before the SDK validates params.
        try:
            CallToolRequestParams.model_validate(params, by_name=False)
        except ValidationError as exc:
            raise MCPError(code=INVALID_PARAMS, message=f"tools/call params: {_problems(exc)}") from None
        try:
            args = _ExecuteArgs.model_validate(params.get("arguments") or {})
        except ValidationError as exc:
            raise MCPError(code=INVALID_PARAMS, message=f"execute_code arguments: {_problems(exc)}") from None
        try:
            info = await self.runs.submit(args.code, self.limits, trace=args.trace, owner=_client(ctx))
        except Busy as exc:
            raise MCPError(
                code=BUSY,
                message="every run slot and queue place is taken; retry after a moment",
                data={"code": "busy", "retry_after_s": exc.retry_after_s},
            ) from None
        logger.info("task %s started", info["id"])
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return {**self._detailed(info), "resultType": "task"}
        if self._tg is not None:
            self._tg.start_soon(self._notify_when_done, ctx.session, info["id"])
        return CreateTaskResult(task=self._task(info)).model_dump(by_alias=True, mode="json", exclude_none=True)

    # -- tasks/* ------------------------------------------------------------------------------------------------------

    async def _get(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams
    ) -> GetTaskResult | dict[str, Any]:
        info = await self._find(ctx, params.task_id)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return self._detailed(info)
        return GetTaskResult(**self._task(info).model_dump())

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: _UpdateTaskParams) -> dict[str, Any]:
        """Acknowledged: a task here never asks for input, so every response is for no outstanding request."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=ctx.method)
        await self._find(ctx, params.task_id)
        return {}

    async def _cancel(
        self, ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams
    ) -> CancelTaskResult | dict[str, Any]:
        info = await self._find(ctx, params.task_id)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:  # an acknowledgement, even for an ended task
            if _STATUS.get(info["status"]) not in _TERMINAL:
                await self.runs.cancel(params.task_id, self.cancel_wait_s)
            return {}
        if _STATUS.get(info["status"]) in _TERMINAL:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"task {_shown(params.task_id)} has already ended ({_STATUS[info['status']]}); it cannot be cancelled",
            )
        info = await self.runs.cancel(params.task_id, self.cancel_wait_s) or info
        return CancelTaskResult(**self._task(info).model_dump())

    async def _result(self, ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams) -> dict[str, Any]:
        if ctx.protocol_version not in TASKS_VERSIONS:  # the extension has the result in tasks/get
            raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=ctx.method)
        info = await self._find(ctx, params.task_id)
        wait_s = self.wait_s
        if _STATUS.get(info["status"]) not in _TERMINAL:
            info = await self._wait(ctx, params.task_id, wait_s)
        if _STATUS.get(info["status"]) not in _TERMINAL:
            raise MCPError(
                code=REQUEST_TIMEOUT,
                message=f"task {_shown(params.task_id)} is still working after {wait_s:g} s; ask for its result again",
            )
        result = _call_result(info).model_dump(by_alias=True, mode="json", exclude_none=True)
        result["_meta"] = {**result.get("_meta", {}), RELATED_TASK: {"taskId": params.task_id}}
        return result

    async def _wait(self, ctx: ServerRequestContext[Any, Any], task_id: str, wait_s: float) -> dict[str, Any]:
        """The run's info once it ends, or as it stands after `wait_s`.

        Raises `MCPError` `BUSY` when too many calls wait already."""
        if self._waiters[task_id] >= self.max_waiters_per_task or self._waiters.total() >= self.max_waiters:
            raise MCPError(
                code=BUSY,
                message=f"too many tasks/result calls are waiting (at most {self.max_waiters_per_task} per task, "
                f"{self.max_waiters} in all); poll tasks/get instead",
                data={"code": "too_many_waiters"},
            )
        self._waiters[task_id] += 1
        try:
            info: dict[str, Any] | None = None
            with anyio.move_on_after(wait_s):
                while info is None or _STATUS.get(info["status"]) not in _TERMINAL:
                    async for name, _, data in self.runs.events(task_id, 0, ping_s=min(wait_s, 15.0)):
                        if name == "result":
                            info = data
                            break
                    else:  # the stream ended without a result: the run was forgotten meanwhile
                        info = await self._find(ctx, task_id)
            return info if info is not None else await self._find(ctx, task_id)
        finally:
            self._waiters[task_id] -= 1
            if self._waiters[task_id] <= 0:
                del self._waiters[task_id]

    async def _notify_when_done(self, session: ServerSession, run_id: str) -> None:
        """Send `notifications/tasks/status` once the run ends (within `wait_s`), if the client is still there."""
        try:
            with anyio.move_on_after(self.wait_s):
                async for name, _, data in self.runs.events(run_id, 0, ping_s=15.0):
                    if name == "result":
                        params = TaskStatusNotificationParams(**self._task(data).model_dump())
                        with anyio.fail_after(5):  # a gone client's stream must not hold us
                            await session.send_notification(cast(Any, TaskStatusNotification(params=params)))
                        return
        except Exception as exc:  # top level of a background task: a notification is best effort
            logger.info("task %s: the status notification was not sent (%s)", run_id, exc)

    # -- helpers ------------------------------------------------------------------------------------------------------

    async def _find(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> dict[str, Any]:
        """The caller's run `task_id`, or the JSON-RPC error for a task that is not there.

        Raises `MCPError` -32602 for an unknown, forgotten or another client's task,
        -32021 on 2026-07-28 for a client that did not declare the extension,
        -32601 on sessions that were not offered tasks."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            require_client_extension(ctx, EXTENSION)
        elif ctx.protocol_version not in TASKS_VERSIONS:
            raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=ctx.method)
        client = _client(ctx)
        info = await self.runs.info(task_id, client)
        if info is not None:
            return info
        why = await self.runs.why_forgotten(task_id, client)
        if why is not None:
            raise MCPError(
                code=INVALID_PARAMS, message=f"task {_shown(task_id)} has ended and is no longer kept: {why}"
            )
        raise MCPError(
            code=INVALID_PARAMS,
            message=f"there is no task {_shown(task_id)} of yours: it never existed, or ended long ago and was forgotten",
        )

    def _task(self, info: Mapping[str, Any]) -> Task:
        status = _STATUS.get(str(info.get("status")), "working")
        created = float(info.get("created_at") or 0.0)
        updated = info.get("finished_at") or info.get("started_at") or created
        message = None
        if status == "failed":
            message = _failure_line(info)
        elif info.get("status") == "waiting_approval":
            message = "waiting for a tool call's approval"
        return Task(
            task_id=str(info["id"]),
            status=status,
            status_message=message,
            created_at=_iso(created),
            last_updated_at=_iso(float(updated)),
            ttl=self.ttl_ms,
            poll_interval=self.poll_interval_ms,
        )

    def _detailed(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """The extension's `DetailedTask`: a program that failed is a completed task
        whose result has `isError`; `failed` is kept for a run the service could not
        carry out (a JSON-RPC internal error)."""
        task = self._task(info)
        out: dict[str, Any] = {
            "taskId": task.task_id,
            "status": task.status,
            "createdAt": task.created_at,
            "lastUpdatedAt": task.last_updated_at,
            "ttlMs": task.ttl,
            "pollIntervalMs": task.poll_interval,
        }
        if task.status_message is not None:
            out["statusMessage"] = task.status_message
        if isinstance(info.get("result"), dict):
            out["status"] = "completed"
            out["result"] = _call_result(info).model_dump(by_alias=True, mode="json", exclude_none=True)
        elif task.status == "failed":
            out["error"] = {"code": INTERNAL_ERROR, "message": task.status_message or "the run failed"}
        return out


def _declares_extension(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and EXTENSION in capabilities.extensions)


def _problems(exc: ValidationError) -> str:
    """Where and what, without the input (which may be large)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())


def _failure_line(info: Mapping[str, Any]) -> str:
    result, failure = info.get("result"), info.get("error")
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        error = result["error"]
        kind = f"{error['exc_type']}: " if error.get("exc_type") else ""
        return f"[{error.get('code')}] {kind}{error.get('message', '')}"
    if isinstance(failure, dict):
        return f"[{failure.get('code')}] {failure.get('detail', '')}"
    return "the run failed"


def _call_result(info: Mapping[str, Any]) -> CallToolResult:
    """What a plain execute_code call would have answered for the run `info` describes."""
    result = info.get("result")
    if isinstance(result, dict):
        return format_run(RunResult.from_dict(result), trace="tool_calls" in result)
    failure = info.get("error")
    if isinstance(failure, dict):
        code, detail = failure.get("code", "internal_error"), failure.get("detail", "")
    elif info.get("status") == "cancelled":
        code, detail = "cancelled", "the task was cancelled before it finished"
    else:
        code, detail = "internal_error", "the run ended without a result"
    return CallToolResult(
        content=[TextContent(type="text", text=f"Error [{code}]: {detail}")],
        structured_content={"ok": False, "value": None, "error": {"code": code, "message": detail}},
        is_error=True,
    )


def _shown(task_id: str) -> str:
    """A task id as an error quotes it: whole if it is of a plausible length, else its start
    (a caller's 100 kB id was echoed back whole)."""
    return repr(task_id) if len(task_id) <= 80 else repr(task_id[:40]) + f"… ({len(task_id)} characters)"
