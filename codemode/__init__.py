"""codemode: run model-written Python that composes MCP tools in a WebAssembly sandbox."""

from ._errors import (
    BatchLimitExceeded,
    CodemodeError,
    CodeRejected,
    CodeSyntaxError,
    CodeTooLarge,
    ConfigError,
    Deadlock,
    EmptyCode,
    ExecutionError,
    InvalidArguments,
    InvalidEncoding,
    LimitExceeded,
    MemoryLimitExceeded,
    RunTimeout,
    SandboxCrashed,
    SandboxUnavailable,
    ToolCallFailed,
    ToolCallLimitExceeded,
    ToolError,
    ToolResultTooLarge,
    TracebackLine,
    UncaughtException,
    UnknownTool,
)
from ._limits import Limits
from ._result import RunResult, RunTimings, ToolCallRecord
from ._sandbox import Backend, Sandbox
from ._tools import Tool, ToolFn

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BatchLimitExceeded",
    "CodeRejected",
    "CodeSyntaxError",
    "CodeTooLarge",
    "CodemodeError",
    "ConfigError",
    "Deadlock",
    "EmptyCode",
    "ExecutionError",
    "InvalidArguments",
    "InvalidEncoding",
    "LimitExceeded",
    "Limits",
    "MemoryLimitExceeded",
    "RunResult",
    "RunTimeout",
    "RunTimings",
    "Sandbox",
    "SandboxCrashed",
    "SandboxUnavailable",
    "Tool",
    "ToolCallFailed",
    "ToolCallLimitExceeded",
    "ToolCallRecord",
    "ToolError",
    "ToolFn",
    "ToolResultTooLarge",
    "TracebackLine",
    "UncaughtException",
    "UnknownTool",
]
