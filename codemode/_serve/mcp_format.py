"""A run as the MCP server answers it: one `CallToolResult`, the same for a
plain `execute_code` call and for a task's `tasks/result` (`mcp_server` and
`mcp_tasks` both use it, so neither imports the other for it)."""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, TextContent

from .._render import render_for_model
from .._result import RunResult

__all__ = ["format_run"]


def format_run(result: RunResult, *, trace: bool = False) -> CallToolResult:
    """A run as an MCP tool result: `render_for_model`'s text, the same data
    structured, the error as `isError`, and the tool-call log only when `trace`
    is set."""
    structured: dict[str, Any] = {
        "ok": result.ok,
        "value": result.value,
        "value_truncated": result.value_truncated,
        "stdout": result.stdout,
        "stdout_truncated": result.stdout_truncated,
        "error": result.error.to_dict() if result.error else None,
    }
    if result.trace_id is not None:  # the caller's trace (from `_meta.traceparent`) or ours
        structured["trace_id"] = result.trace_id
    if trace:
        structured["tool_calls"] = [call.to_dict() for call in result.tool_calls]
        structured["timings"] = result.timings.to_dict()
    return CallToolResult(
        content=[TextContent(type="text", text=render_for_model(result, trace=trace))],
        structured_content=structured,
        is_error=not result.ok,
    )
