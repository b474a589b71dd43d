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
    RunCancelled,
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
from ._config import Config, load_config
from ._core import CodeMode
from ._discovery import ServerSummary, ToolHit, ToolIndex, ToolNotFound
from ._limits import Limits
from ._observed import ShapeRecorder
from ._pinning import LockFileError, PinPolicy, PinReport, PinStore, ToolDefinitionChanged
from ._result import RunResult, RunTimings, ToolCallRecord
from ._sandbox import Backend, Sandbox
from ._tools import Tool, ToolFn
from ._upstream import Hub, ServerFailure

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BatchLimitExceeded",
    "CodeMode",
    "CodeRejected",
    "CodeSyntaxError",
    "CodeTooLarge",
    "CodemodeError",
    "Config",
    "ConfigError",
    "Deadlock",
    "EmptyCode",
    "ExecutionError",
    "Hub",
    "InvalidArguments",
    "InvalidEncoding",
    "LimitExceeded",
    "Limits",
    "LockFileError",
    "MemoryLimitExceeded",
    "PinPolicy",
    "PinReport",
    "PinStore",
    "RunCancelled",
    "RunResult",
    "RunTimeout",
    "RunTimings",
    "Sandbox",
    "SandboxCrashed",
    "SandboxUnavailable",
    "ServerFailure",
    "ServerSummary",
    "ShapeRecorder",
    "Tool",
    "ToolCallFailed",
    "ToolCallLimitExceeded",
    "ToolCallRecord",
    "ToolDefinitionChanged",
    "ToolError",
    "ToolFn",
    "ToolHit",
    "ToolIndex",
    "ToolNotFound",
    "ToolResultTooLarge",
    "TracebackLine",
    "UncaughtException",
    "UnknownTool",
    "load_config",
]
