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
import typing as _typing

from ._discovery import ServerSummary, ToolHit, ToolIndex, ToolNotFound
from ._limits import Limits
from ._observed import ShapeRecorder
from ._pinning import LockFileError, PinPolicy, PinReport, PinStore, ToolDefinitionChanged
from ._result import RunResult, RunTimings, ToolCallRecord
from ._sandbox import Backend, Sandbox
from ._tools import Tool, ToolFn

if _typing.TYPE_CHECKING:
    from ._config import Config, load_config
    from ._core import CodeMode
    from ._upstream import Hub, ServerFailure

# Names whose modules import the MCP SDK (most of a second): loaded on first use,
# so `import codemode` and a sandbox-only program stay quick.
_LAZY = {
    "CodeMode": "._core",
    "Config": "._config",
    "Hub": "._upstream",
    "ServerFailure": "._upstream",
    "load_config": "._config",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'codemode' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
