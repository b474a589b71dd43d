"""Calling an upstream tool that requires a task (MCP 2025-11-25 "tasks").

A tool whose listing says `execution.taskSupport: "required"` fails a plain
`tools/call`. `call_as_task` sends the call with `params.task = {ttl}`, gets
a `CreateTaskResult`, polls `tasks/get` (at the server's `pollInterval`,
clamped to `_MIN_POLL`..`_MAX_POLL`) until the task ends, then fetches its
`CallToolResult` with `tasks/result`. Tools that merely *allow* tasks
(`"optional"`) are called directly, as before.

Trust boundary: every answer of the server is untrusted. A malformed task,
a task id that changes, an unknown status, a task that needs input
(`input_required`: codemode serves no elicitation), one the server failed or
cancelled: each is a `ToolError` (code `tool_error`) naming the tool, never a
traceback, and the server's text in it is redacted, then capped (a cap that
fell inside a secret would leave its start for redaction to miss). Time is
not this module's business: the caller bounds the whole exchange (the hub:
the server's `timeout`; the run: its deadline), and a task that never ends is
cut there.

Failure policy: whenever the exchange stops before the task reached a
terminal status (cancelled by the run or its deadline, timed out, refused
by us), `on_abandon(task_id)` is called, so the hub sends `tasks/cancel` in
the background without holding up the run.

The SDK's typed `send_request` checks a `tools/call` answer against
`CallToolResult` before we can see it, so a `CreateTaskResult` would be
refused; these requests go through the session's dispatcher instead (a
private attribute of the SDK: if it moves, task calls fail with a clear error
until this is updated). Everything else about them (the protocol header
stamp, cancellation on abandon, the size cap of our stdio transport) is the
session's usual path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

from .._errors import ToolError

__all__ = ["TERMINAL", "call_as_task", "cancel_task", "requires_task", "serves_tool_tasks"]

# A server may ask for any poll interval: never poll more often than this,
# nor sleep longer than that between looks (a slow interval would only make
# a finished task wait).
_MIN_POLL = 0.1
_MAX_POLL = 5.0
_DEFAULT_POLL = 1.0
# The retention we ask for: the caller's bound plus a margin to fetch the result.
_TTL_MARGIN = 60.0
# How much of a server's status message goes into an error.
_MAX_MESSAGE_CHARS = 500
_MAX_ID_CHARS = 256

TERMINAL = frozenset({"completed", "failed", "cancelled"})
_KNOWN = TERMINAL | {"working", "input_required"}


def requires_task(tool: types.Tool) -> bool:
    """Whether the listing says the tool must be called as a task."""
    execution = tool.execution
    return execution is not None and execution.task_support == "required"


def serves_tool_tasks(client: Client) -> bool:
    """Whether the server declares task-augmented `tools/call` (2025-11-25)."""
    tasks = client.server_capabilities.tasks
    return bool(tasks and tasks.requests and tasks.requests.tools and tasks.requests.tools.call is not None)


@dataclass(frozen=True, kw_only=True)
class _Task:
    task_id: str
    status: str
    message: str
    poll_interval: float


async def call_as_task(
    client: Client,
    name: str,
    arguments: dict[str, Any],
    *,
    where: str,
    bound: float,
    on_abandon: Callable[[str], None],
    redact: Callable[[str], str] = lambda text: text,
) -> types.CallToolResult:
    """Call tool `name` as a task and wait for its result. `bound` (seconds)
    is how long the caller will wait; it sets the retention we ask for.
    `redact` is applied to the server's text before it is capped.

    Raises `ToolError` for every answer that does not lead to a result (see
    the module docstring), `MCPError` for a JSON-RPC error, and
    `pydantic.ValidationError` for a final result that is not a `CallToolResult`."""
    ttl_ms = int(min(bound + _TTL_MARGIN, 86_400.0) * 1000)
    request = types.CallToolRequest(
        params=types.CallToolRequestParams(name=name, arguments=arguments, task=types.TaskMetadata(ttl=ttl_ms))
    )
    created = await _send(client, request)
    if "task" not in created and "content" in created:
        # A server may carry the call out at once, ignoring the task (the spec allows it).
        return types.CallToolResult.model_validate(created, by_name=False)
    task = _parse_task(created.get("task"), where, expected_id=None, redact=redact)
    settled = False
    try:
        while task.status not in TERMINAL:
            if task.status == "input_required":
                raise ToolError(
                    f"{where} failed: the task asks for input ({task.message or 'no message'}), "
                    "which codemode cannot give; it was cancelled"
                )
            await anyio.sleep(task.poll_interval)
            answer = await _send(client, types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task.task_id)))
            task = _parse_task(answer, where, expected_id=task.task_id, redact=redact)
        settled = True
        if task.status == "cancelled":
            raise ToolError(f"{where} failed: the server cancelled the task ({task.message or 'no message'})")
        payload = await _send(
            client, types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task.task_id))
        )
        result = types.CallToolResult.model_validate(payload, by_name=False)
        if task.status == "failed" and not result.is_error:
            raise ToolError(f"{where} failed: the task failed ({task.message or 'no message'})")
        return result
    finally:
        if not settled:
            on_abandon(task.task_id)


async def cancel_task(client: Client, task_id: str) -> None:
    """Send `tasks/cancel` for `task_id`. Raises what the request raises."""
    await _send(client, types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task_id)))


async def _send(client: Client, request: types.Request[Any, Any]) -> Mapping[str, Any]:
    session = client.session
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    opts: Any = {}
    session._stamp(data, opts)  # the protocol header (and, on modern wires, _meta)
    dispatcher = session._dispatcher
    raw = await dispatcher.send_raw_request(data["method"], data.get("params"), opts)
    if not isinstance(raw, Mapping):
        raise ToolError(f"{data['method']} answered with a {type(raw).__name__}, not an object")
    return raw


def _parse_task(raw: Any, where: str, *, expected_id: str | None, redact: Callable[[str], str]) -> _Task:
    """The fields of a task we act on, checked; a `ToolError` for anything else."""
    if not isinstance(raw, Mapping):
        raise ToolError(f"{where} failed: the server's task answer is malformed: no task object")
    task_id = raw.get("taskId")
    if not isinstance(task_id, str) or not task_id or len(task_id) > _MAX_ID_CHARS:
        raise ToolError(f"{where} failed: the server's task answer is malformed: no valid taskId")
    if expected_id is not None and task_id != expected_id:
        raise ToolError(f"{where} failed: the server answered about another task than the one asked for")
    status = raw.get("status")
    if status not in _KNOWN:
        shown = redact(repr(status))[:40] if isinstance(status, str) else type(status).__name__
        raise ToolError(f"{where} failed: the server reports an unknown task status {shown}")
    message = raw.get("statusMessage")
    message = redact(message)[:_MAX_MESSAGE_CHARS] if isinstance(message, str) else ""
    return _Task(task_id=task_id, status=str(status), message=message, poll_interval=_poll_seconds(raw))


def _poll_seconds(raw: Mapping[str, Any]) -> float:
    interval = raw.get("pollInterval")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
        return _DEFAULT_POLL
    return min(max(interval / 1000.0, _MIN_POLL), _MAX_POLL)
