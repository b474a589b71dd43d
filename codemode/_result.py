from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._errors import ExecutionError

__all__ = ["RunResult", "RunTimings", "ToolCallRecord"]


@dataclass(frozen=True, kw_only=True)
class ToolCallRecord:
    """One tool call a run made, successful or not."""

    namespace: str
    tool: str
    """The Python names the code called: `namespace.tool`."""
    arguments: dict[str, Any]
    ok: bool
    error_code: str | None = None
    error_message: str | None = None
    batch: int = 0
    """Which host crossing carried it (calls in one `gather` share a batch)."""
    started_s: float = 0.0
    """Seconds from the start of the run."""
    duration_s: float = 0.0
    server: str = ""
    """The tool's namespace as the lock file and configuration name it."""
    wire_name: str = ""
    """The tool's name on its server (what was called there, and what is pinned);
    empty when the call named no known tool."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "tool": self.tool,
            "server": self.server,
            "wire_name": self.wire_name,
            "arguments": self.arguments,
            "ok": self.ok,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "batch": self.batch,
            "started_s": self.started_s,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True, kw_only=True)
class RunTimings:
    """Seconds spent, measured on the host."""

    total_s: float
    startup_s: float
    """Getting a fresh instance (wasm) or namespace (restricted) ready."""
    execute_s: float
    """Running the code, tool calls included."""
    tools_s: float
    """Wall time the host spent inside tool calls (batches run concurrently)."""

    def to_dict(self) -> dict[str, float]:
        return {
            "total_s": self.total_s,
            "startup_s": self.startup_s,
            "execute_s": self.execute_s,
            "tools_s": self.tools_s,
        }


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a run produced: the value of the code's last expression, its print
    output, or the error that ended it."""

    value: Any = None
    value_truncated: bool = False
    stdout: str = ""
    stdout_truncated: bool = False
    error: ExecutionError | None = None
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    timings: RunTimings
    backend: str
    """`wasm`, or `restricted` (in-process; not a security boundary)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> RunResult:
        """Raise `self.error` if the run failed; return self otherwise."""
        if self.error is not None:
            raise self.error
        return self

    def to_dict(self, *, trace: bool = False) -> dict[str, Any]:
        """JSON-ready; the tool-call log only when `trace` is set."""
        out: dict[str, Any] = {
            "ok": self.ok,
            "value": self.value,
            "value_truncated": self.value_truncated,
            "stdout": self.stdout,
            "stdout_truncated": self.stdout_truncated,
            "error": self.error.to_dict() if self.error else None,
            "backend": self.backend,
            "timings": self.timings.to_dict(),
        }
        if trace:
            out["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        return out
