"""A `RunResult` as the text a model reads: one rendering for every surface.

The MCP server's `execute_code` and each agent-framework integration return
exactly this text, so a model sees the same shape whichever way it reached
codemode:

- the value (a string as is, anything else as compact JSON), with a note when
  it was truncated;
- or the error: `Error [code]: ...` with the exception type, its message and
  the lines of the model's own code it passed through;
- then `--- stdout ---` and the captured `print` output, if there was any;
- then, only when asked, the tool-call log (arguments shortened).

Everything here is already capped by the run's limits (`max_result`,
`max_stdout`); the renderer adds no data the run did not return.
"""

from __future__ import annotations

import json
from typing import Any

from ._errors import CodeSyntaxError, ExecutionError, ToolCallFailed, UncaughtException
from ._result import RunResult, ToolCallRecord

__all__ = ["render_for_model"]

_TRACE_ARGS_CHARS = 200


def render_for_model(result: RunResult, *, trace: bool = False) -> str:
    """The text a model should read for `result`; see the module docstring.

    `trace` appends the tool-call log (debugging only: it costs tokens)."""
    parts = [_error_text(result.error) if result.error is not None else _value_text(result)]
    if result.stdout:
        parts.append("--- stdout ---\n" + result.stdout.rstrip("\n"))
    if trace:
        parts.append(_trace_text(result.tool_calls))
    return "\n\n".join(parts)


def _value_text(result: RunResult) -> str:
    value: Any = result.value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    if result.value_truncated:
        text += "\n[the result was truncated: return something smaller, e.g. filter or count in code]"
    return text


def _error_text(error: ExecutionError) -> str:
    if isinstance(error, (UncaughtException, CodeSyntaxError)):
        head = str(error)  # these include the exception type, traceback lines or the caret
    else:
        head = error.message
        if isinstance(error, ToolCallFailed):
            # What the code saw: an uncaught ToolError, and from which call.
            head = f"ToolError: {head}" + (f" (calling {error.tool})" if error.tool else "")
        frames = getattr(error, "traceback", None) or []
        if frames:
            head += "\n" + "\n".join(f"  line {f.line}, in {f.name}: {f.text}" for f in frames)
    return f"Error [{error.code}]: {head}"


def _trace_text(calls: list[ToolCallRecord]) -> str:
    lines = [f"--- tool calls ({len(calls)}) ---"]
    for call in calls:
        args = json.dumps(call.arguments, ensure_ascii=False, default=repr)
        if len(args) > _TRACE_ARGS_CHARS:
            args = args[:_TRACE_ARGS_CHARS] + "…"
        status = "ok" if call.ok else f"{call.error_code}: {call.error_message}"
        if call.decision is not None and call.decision != "allowed":
            status += f" [{call.decision} by {call.decided_by}]"
        lines.append(
            f"[batch {call.batch}] {call.namespace}.{call.tool}({args}) {status} "
            f"at {call.started_s:.3f}s took {call.duration_s:.3f}s"
        )
    return "\n".join(lines)
