"""The seam between the runner and whatever provides tools.

A `Tool` is a name, a JSON Schema and an async callable. The runner does not care
whether it wraps an MCP server's tool or a plain Python function; the MCP hub
produces `Tool`s with one namespace per server.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

__all__ = ["Tool", "ToolFn"]

ToolFn = Callable[..., Awaitable[Any] | Any]
"""Called with the tool's arguments as keyword arguments, by their schema names.

An async function runs on the event loop that called `Sandbox.run` (so it may
use loop-bound resources: MCP sessions, HTTP client pools). A plain function
cannot depend on the loop, so a lone call runs directly on the sandbox's worker
thread, skipping the hop to the event loop; calls in one `gather` each get a
thread of their own."""

_EMPTY_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, kw_only=True, eq=False)
class Tool:
    """A tool the model's code may call, as `await <namespace>.<name>(...)`.

    `name` and `namespace` may be any strings: the stub generator turns them
    into valid, unique Python identifiers and keeps the mapping. `fn` receives
    the arguments by their schema names and returns JSON-serializable data; it
    may raise `codemode.ToolError` to fail the call with a clean message. See
    `ToolFn` for where sync and async functions run. Tools compare by identity."""

    name: str
    fn: ToolFn = field(repr=False, compare=False)
    input_schema: Mapping[str, Any] = field(default_factory=lambda: dict(_EMPTY_OBJECT_SCHEMA))
    description: str = ""
    namespace: str = "tools"
    output_schema: Mapping[str, Any] | None = None
    python_name: str | None = None
    """The identifier the stubs use for this tool inside its namespace; None
    derives one from `name` (in listing order, so a new tool could take it).
    `CodeMode` sets it from the lock file, so a pinned tool keeps its name."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("Tool.name must be a non-empty string")
        if not isinstance(self.namespace, str) or not self.namespace:
            raise ValueError("Tool.namespace must be a non-empty string")
        if not callable(self.fn):
            raise TypeError(f"Tool.fn of {self.name!r} must be callable")
        if not isinstance(self.input_schema, Mapping):
            raise TypeError(f"Tool.input_schema of {self.name!r} must be a JSON Schema object")

    @cached_property
    def is_async(self) -> bool:
        """True if `fn` must run on the event loop."""
        fn = self.fn
        return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004 (an async __call__)
