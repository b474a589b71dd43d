"""codemode: run model-written Python that composes MCP tools in a WebAssembly sandbox."""

import typing as _typing

from ._discovery import ServerSummary, ToolHit, ToolHits, ToolIndex, ToolNotFound
from ._errors import (
    ApprovalDenied,
    BatchLimitExceeded,
    CodemodeError,
    CodeRejected,
    CodeSyntaxError,
    CodeTooLarge,
    ConfigError,
    Deadlock,
    EmptyCode,
    ExecutionError,
    Forbidden,
    InvalidArguments,
    InvalidEncoding,
    LimitExceeded,
    MalformedToolCalls,
    MemoryLimitExceeded,
    RequestRejected,
    ResultNotSerializable,
    RunCancelled,
    RunNotFound,
    RunTimeout,
    SandboxCrashed,
    SandboxUnavailable,
    ServerUnavailable,
    ServiceBusy,
    ServiceError,
    ServiceUnreachable,
    ToolCallDenied,
    ToolCallFailed,
    ToolCallLimitExceeded,
    ToolCallNotApproved,
    ToolDenied,
    ToolError,
    ToolResultTooLarge,
    TracebackLine,
    Unauthorized,
    UncaughtException,
    UnknownTool,
)
from ._limits import Limits
from ._observed import ShapeRecorder
from ._pinning import LockFileError, PinPolicy, PinReport, PinStore, ToolDefinitionChanged
from ._policy import Approval, Policy, ToolCall
from ._render import render_for_model
from ._result import RunResult, RunTimings, ToolCallRecord
from ._sandbox.runner import Backend, Sandbox
from ._tools import Tool, ToolFn

if _typing.TYPE_CHECKING:
    from ._client import AsyncClient, Client, RunEvent, RunInfo
    from ._core import CodeMode
    from ._serve.app import HttpSettings, create_app
    from ._serve.mcp_server import build_server as build_mcp_server
    from ._stubgen import StubSet, render_stubs
    from ._upstream.config import Config, load_config, parse_config
    from ._upstream.hub import Hub, ServerFailure

# Names whose modules import the MCP SDK, FastAPI, httpx or Jinja2 (most of a second):
# loaded on first use, so `import codemode` and a sandbox-only program stay quick.
# name -> (module, attribute)
_LAZY = {
    "AsyncClient": ("._client", "AsyncClient"),
    "Client": ("._client", "Client"),
    "RunEvent": ("._client", "RunEvent"),
    "RunInfo": ("._client", "RunInfo"),
    "CodeMode": ("._core", "CodeMode"),
    "Config": ("._upstream.config", "Config"),
    "HttpSettings": ("._serve.app", "HttpSettings"),
    "Hub": ("._upstream.hub", "Hub"),
    "ServerFailure": ("._upstream.hub", "ServerFailure"),
    "StubSet": ("._stubgen", "StubSet"),
    "build_mcp_server": ("._serve.mcp_server", "build_server"),
    "create_app": ("._serve.app", "create_app"),
    "load_config": ("._upstream.config", "load_config"),
    "parse_config": ("._upstream.config", "parse_config"),
    "render_stubs": ("._stubgen", "render_stubs"),
}


def __getattr__(name: str) -> _typing.Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'codemode' has no attribute {name!r}")
    import importlib

    module, attribute = target
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Approval",
    "ApprovalDenied",
    "AsyncClient",
    "Backend",
    "BatchLimitExceeded",
    "Client",
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
    "Forbidden",
    "HttpSettings",
    "Hub",
    "InvalidArguments",
    "InvalidEncoding",
    "LimitExceeded",
    "Limits",
    "LockFileError",
    "MalformedToolCalls",
    "MemoryLimitExceeded",
    "PinPolicy",
    "PinReport",
    "PinStore",
    "Policy",
    "RequestRejected",
    "ResultNotSerializable",
    "RunCancelled",
    "RunEvent",
    "RunInfo",
    "RunNotFound",
    "RunResult",
    "RunTimeout",
    "RunTimings",
    "Sandbox",
    "SandboxCrashed",
    "SandboxUnavailable",
    "ServerFailure",
    "ServerSummary",
    "ServerUnavailable",
    "ServiceBusy",
    "ServiceError",
    "ServiceUnreachable",
    "ShapeRecorder",
    "StubSet",
    "Tool",
    "ToolCall",
    "ToolCallDenied",
    "ToolCallFailed",
    "ToolCallLimitExceeded",
    "ToolCallNotApproved",
    "ToolCallRecord",
    "ToolDefinitionChanged",
    "ToolDenied",
    "ToolError",
    "ToolFn",
    "ToolHit",
    "ToolHits",
    "ToolIndex",
    "ToolNotFound",
    "ToolResultTooLarge",
    "TracebackLine",
    "Unauthorized",
    "UncaughtException",
    "UnknownTool",
    "build_mcp_server",
    "create_app",
    "load_config",
    "parse_config",
    "render_for_model",
    "render_stubs",
]
