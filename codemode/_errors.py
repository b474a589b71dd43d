"""Errors, one tree under `CodemodeError`; each class has a stable `code`.

    CodemodeError
    ├── SandboxUnavailable        sandbox_unavailable   the guest could not be built or loaded
    ├── ConfigError               config_error          a bad configuration (by path and field)
    ├── StoreUnavailable          store_unavailable     the shared run store (Redis) cannot be reached
    ├── ToolError                 tool_error            raised by a tool to fail a call cleanly
    │   ├── ServerUnavailable     server_unavailable    the tool's MCP server is down (retried in the background)
    │   ├── UpstreamResultTooLarge tool_result_too_large an MCP server's answer was over the host's cap
    │   ├── ToolDenied            denied                the tool-call policy denies the call
    │   └── ApprovalDenied        approval_denied       an approver refused it, or did not decide in time
    ├── ExecutionError                                  what a run can end with: `RunResult.error`
    │   ├── CodeRejected                                the code never ran
    │   │   ├── EmptyCode         empty_code
    │   │   ├── CodeTooLarge      code_too_large
    │   │   ├── InvalidEncoding   invalid_encoding
    │   │   └── CodeSyntaxError   syntax_error          with line, column and the line's text
    │   ├── UncaughtException     uncaught_exception    type, message, traceback of the model's lines
    │   ├── Deadlock              deadlock              every task waits and no tool call is pending
    │   ├── ToolCallFailed        tool_error            an uncaught ToolError from a tool call
    │   │   ├── UnknownTool       unknown_tool
    │   │   ├── InvalidArguments  invalid_arguments     arguments failed the tool's input schema
    │   │   ├── ToolServerUnavailable server_unavailable
    │   │   ├── ToolResultTooLarge tool_result_too_large
    │   │   ├── ToolCallDenied    denied                an uncaught ToolDenied
    │   │   └── ToolCallNotApproved approval_denied     an uncaught ApprovalDenied
    │   ├── LimitExceeded
    │   │   ├── RunTimeout        timeout
    │   │   ├── MemoryLimitExceeded memory_limit
    │   │   ├── ToolCallLimitExceeded tool_call_limit
    │   │   └── BatchLimitExceeded batch_limit
    │   ├── ResultNotSerializable result_not_serializable the result holds a value JSON cannot (type, path)
    │   ├── RunCancelled          cancelled             the caller cancelled the run
    │   └── SandboxCrashed        sandbox_crashed       the guest trapped or answered garbage
    │       └── MalformedToolCalls malformed_tool_calls the guest sent tool calls of the wrong shape
    └── ServiceError              service_error         the HTTP service refused a request (`codemode.Client`)
        ├── Unauthorized          unauthorized          no or a wrong bearer token
        ├── Forbidden             forbidden             a Host or Origin the service does not answer
        ├── RequestRejected       invalid_request       malformed, invalid, too large or of the wrong type
        ├── ServiceBusy           busy                  every run slot and queue place is taken
        ├── RunNotFound           run_not_found         no such run (or it was forgotten)
        └── ServiceUnreachable    unreachable           no connection, or the connection kept dropping

Lower-level errors (wasmtime traps, MCP errors) are converted in the backend or
hub that sees them, with `raise ... from exc`; they never reach callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ApprovalDenied",
    "BatchLimitExceeded",
    "CodeRejected",
    "CodeSyntaxError",
    "CodeTooLarge",
    "CodemodeError",
    "ConfigError",
    "Deadlock",
    "EmptyCode",
    "ExecutionError",
    "Forbidden",
    "InvalidArguments",
    "InvalidEncoding",
    "LimitExceeded",
    "MalformedToolCalls",
    "MemoryLimitExceeded",
    "RequestRejected",
    "ResultNotSerializable",
    "RunCancelled",
    "RunNotFound",
    "RunTimeout",
    "SandboxCrashed",
    "SandboxUnavailable",
    "ServerUnavailable",
    "ServiceBusy",
    "ServiceError",
    "ServiceUnreachable",
    "StoreUnavailable",
    "ToolCallDenied",
    "ToolCallFailed",
    "ToolCallLimitExceeded",
    "ToolCallNotApproved",
    "ToolDenied",
    "ToolError",
    "ToolResultTooLarge",
    "ToolServerUnavailable",
    "TracebackLine",
    "Unauthorized",
    "UncaughtException",
    "UnknownTool",
    "UpstreamResultTooLarge",
    "execution_error_from_dict",
]


class CodemodeError(Exception):
    """Root of every error codemode raises or reports."""

    code: ClassVar[str] = "codemode_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: `code`, `type`, `message` and any details."""
        return {"code": self.code, "type": type(self).__name__, "message": self.message}


class SandboxUnavailable(CodemodeError):
    """The sandbox guest could not be built or loaded."""

    code = "sandbox_unavailable"


class ConfigError(CodemodeError):
    """A configuration is invalid."""

    code = "config_error"


class StoreUnavailable(CodemodeError):
    """The shared run store (Redis) could not be reached or refused a command."""

    code = "store_unavailable"


class ToolError(CodemodeError):
    """Raise from a tool function to fail the call with a clean message.

    The model's code sees it as a catchable `ToolError` inside the sandbox."""

    code = "tool_error"


class ServerUnavailable(ToolError):
    """The tool's MCP server is not connected; it is retried in the background."""

    code = "server_unavailable"


class UpstreamResultTooLarge(ToolError):
    """An MCP server's answer was over the host's per-message cap; it was not read."""

    code = "tool_result_too_large"


class ToolDenied(ToolError):
    """The tool-call policy denied the call before it was made (`codemode.Policy`)."""

    code = "denied"


class ApprovalDenied(ToolError):
    """The call needed approval and was refused, or not decided in time."""

    code = "approval_denied"


class ExecutionError(CodemodeError):
    """A run did not produce a result. Found in `RunResult.error`, never raised
    by `Sandbox.run`; `RunResult.raise_for_error()` raises it."""


class CodeRejected(ExecutionError):
    """The code was refused before it ran."""


class EmptyCode(CodeRejected):
    code = "empty_code"


class CodeTooLarge(CodeRejected):
    code = "code_too_large"


class InvalidEncoding(CodeRejected):
    code = "invalid_encoding"


class CodeSyntaxError(CodeRejected):
    code = "syntax_error"

    def __init__(self, message: str, *, line: int | None, column: int | None, text: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.text = text

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "unknown line"
        caret = ""
        if self.text and self.column:
            caret = f"\n    {self.text}\n    {' ' * (self.column - 1)}^"
        return f"{self.message} ({where}){caret}"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "line": self.line, "column": self.column, "text": self.text}


@dataclass(frozen=True, kw_only=True)
class TracebackLine:
    """One frame of the model's own code: line number, function, source text."""

    line: int
    name: str
    text: str


class _HasTraceback(ExecutionError):
    def __init__(self, message: str, *, traceback: list[TracebackLine] | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback or []

    def __str__(self) -> str:
        # The model's own lines, so whoever prints the error sees where it came from.
        lines = [self._head()]
        lines += [f"  line {f.line}, in {f.name}: {f.text}" for f in self.traceback]
        return "\n".join(lines)

    def _head(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        frames = [{"line": f.line, "name": f.name, "text": f.text} for f in self.traceback]
        return {**super().to_dict(), "traceback": frames}


class UncaughtException(_HasTraceback):
    """The model's code raised and did not catch. `exc_type` is the exception's
    class name inside the sandbox."""

    code = "uncaught_exception"

    def __init__(self, message: str, *, exc_type: str, traceback: list[TracebackLine] | None = None) -> None:
        super().__init__(message, traceback=traceback)
        self.exc_type = exc_type

    def _head(self) -> str:
        return f"{self.exc_type}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "exc_type": self.exc_type}


class Deadlock(_HasTraceback):
    code = "deadlock"


class ToolCallFailed(_HasTraceback):
    """A tool call failed and the model's code did not catch the ToolError."""

    code = "tool_error"

    def __init__(self, message: str, *, tool: str | None = None, traceback: list[TracebackLine] | None = None) -> None:
        super().__init__(message, traceback=traceback)
        self.tool = tool

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tool": self.tool}


class UnknownTool(ToolCallFailed):
    code = "unknown_tool"


class InvalidArguments(ToolCallFailed):
    code = "invalid_arguments"


class ToolResultTooLarge(ToolCallFailed):
    code = "tool_result_too_large"


class ToolServerUnavailable(ToolCallFailed):
    code = "server_unavailable"


class ToolCallDenied(ToolCallFailed):
    code = "denied"


class ToolCallNotApproved(ToolCallFailed):
    code = "approval_denied"


class LimitExceeded(ExecutionError):
    """A run hit one of its `Limits`."""


class RunTimeout(LimitExceeded):
    code = "timeout"


class MemoryLimitExceeded(LimitExceeded):
    code = "memory_limit"


class ToolCallLimitExceeded(LimitExceeded):
    code = "tool_call_limit"


class BatchLimitExceeded(LimitExceeded):
    code = "batch_limit"


class RunCancelled(ExecutionError):
    """The run was cancelled by its caller before it finished."""

    code = "cancelled"


class SandboxCrashed(ExecutionError):
    """The guest trapped (other than by a limit) or answered something unreadable."""

    code = "sandbox_crashed"


class MalformedToolCalls(SandboxCrashed):
    """The guest sent the host tool calls of the wrong shape (only a tampered
    guest runtime can); none of them ran."""

    code = "malformed_tool_calls"


class ResultNotSerializable(ExecutionError):
    """The result (the code's last expression) holds a value JSON cannot
    represent. `path` says where (`result[0]['k']`), `value_type` its type,
    `value_repr` a short repr of it."""

    code = "result_not_serializable"

    def __init__(self, message: str, *, path: str, value_type: str, value_repr: str) -> None:
        super().__init__(message)
        self.path = path
        self.value_type = value_type
        self.value_repr = value_repr

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "path": self.path, "value_type": self.value_type, "value_repr": self.value_repr}


TOOL_ERRORS_BY_CODE: dict[str, type[ToolCallFailed]] = {
    cls.code: cls
    for cls in (
        ToolCallFailed,
        UnknownTool,
        InvalidArguments,
        ToolResultTooLarge,
        ToolServerUnavailable,
        ToolCallDenied,
        ToolCallNotApproved,
    )
}


def _subclasses(cls: type[ExecutionError]) -> list[type[ExecutionError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def execution_error_from_dict(data: dict[str, Any]) -> ExecutionError:
    """The typed error a `to_dict()` describes (as the HTTP service sends it in a
    result): found by its `type`, else its `code`; an unknown one becomes a plain
    `ExecutionError` carrying the message. Never raises for a dict of another shape."""
    classes = _subclasses(ExecutionError)
    by_name = {cls.__name__: cls for cls in classes}
    by_code = {cls.code: cls for cls in reversed(classes) if "code" in cls.__dict__}
    cls = by_name.get(str(data.get("type"))) or by_code.get(str(data.get("code"))) or ExecutionError
    message = str(data.get("message", ""))
    raw = data.get("traceback")
    frames = [
        TracebackLine(line=int(f.get("line") or 0), name=str(f.get("name", "")), text=str(f.get("text", "")))
        for f in (raw if isinstance(raw, list) else [])
        if isinstance(f, dict)
    ]
    if issubclass(cls, CodeSyntaxError):
        line, column = data.get("line"), data.get("column")
        return cls(
            message,
            line=line if isinstance(line, int) else None,
            column=column if isinstance(column, int) else None,
            text=str(data.get("text") or ""),
        )
    if issubclass(cls, UncaughtException):
        return cls(message, exc_type=str(data.get("exc_type", "Exception")), traceback=frames)
    if issubclass(cls, ToolCallFailed):
        tool = data.get("tool")
        return cls(message, tool=str(tool) if tool else None, traceback=frames)
    if issubclass(cls, _HasTraceback):
        return cls(message, traceback=frames)
    return cls(message)


class ServiceError(CodemodeError):
    """The HTTP service answered a request with an error (`codemode.Client`).

    `status` is the HTTP status, `problem` the whole problem body; its
    `problem["code"]` is the service's own code, which may be finer than the
    class's `code` (e.g. `forbidden_origin` for a `Forbidden`)."""

    code = "service_error"

    def __init__(self, message: str, *, status: int, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = dict(problem or {})

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "status": self.status, "problem": self.problem}


class Unauthorized(ServiceError):
    code = "unauthorized"


class Forbidden(ServiceError):
    code = "forbidden"


class RequestRejected(ServiceError):
    code = "invalid_request"


class ServiceBusy(ServiceError):
    """Every run slot and queue place is taken; retry after `retry_after_s`."""

    code = "busy"

    def __init__(
        self, message: str, *, status: int, problem: dict[str, Any] | None = None, retry_after_s: float = 1.0
    ) -> None:
        super().__init__(message, status=status, problem=problem)
        self.retry_after_s = retry_after_s


class RunNotFound(ServiceError):
    code = "run_not_found"


class ServiceUnreachable(ServiceError):
    """The service could not be reached, or its connection kept dropping."""

    code = "unreachable"

    def __init__(self, message: str) -> None:
        super().__init__(message, status=0)
