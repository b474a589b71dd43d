from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._errors import ExecutionError, execution_error_from_dict

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
    decision: str | None = None
    """What the tool-call policy decided, when one is set (see `codemode.Policy`):
    `allowed` (by rule), `approved`, `denied` (by rule) or `approval_denied`
    (by the approver, or no decision in time). None: no policy, or the call
    failed before the policy was asked (unknown tool, invalid arguments)."""
    decided_by: str | None = None
    """Who decided: `policy`, or the approver's name for asked calls."""

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
            "decision": self.decision,
            "decided_by": self.decided_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolCallRecord:
        """The inverse of `to_dict` (e.g. for a record read from the HTTP service).

        Raises `KeyError` or `TypeError` for a dict of another shape."""
        return cls(
            namespace=str(data["namespace"]),
            tool=str(data["tool"]),
            arguments=dict(data.get("arguments") or {}),
            ok=bool(data["ok"]),
            error_code=data.get("error_code"),
            error_message=data.get("error_message"),
            batch=int(data.get("batch", 0)),
            started_s=float(data.get("started_s", 0.0)),
            duration_s=float(data.get("duration_s", 0.0)),
            server=str(data.get("server") or ""),
            wire_name=str(data.get("wire_name") or ""),
            decision=data.get("decision"),
            decided_by=data.get("decided_by"),
        )


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunTimings:
        """The inverse of `to_dict`. Raises `KeyError` or `TypeError` for another shape."""
        return cls(
            total_s=float(data["total_s"]),
            startup_s=float(data["startup_s"]),
            execute_s=float(data["execute_s"]),
            tools_s=float(data["tools_s"]),
        )


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
    trace_id: str | None = None
    """The OpenTelemetry trace the run's span belongs to (32 hex digits), when
    the run was traced: a tracer provider is set, or the caller's context
    carried a trace (e.g. a `traceparent` header)."""

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
        if self.trace_id is not None:
            out["trace_id"] = self.trace_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """The inverse of `to_dict`: the error becomes its typed `ExecutionError`
        again (by its `type`, else its `code`).

        Raises `KeyError` or `TypeError` for a dict of another shape."""
        error = data.get("error")
        return cls(
            value=data.get("value"),
            value_truncated=bool(data.get("value_truncated", False)),
            stdout=str(data.get("stdout", "")),
            stdout_truncated=bool(data.get("stdout_truncated", False)),
            error=execution_error_from_dict(error) if isinstance(error, dict) else None,
            tool_calls=[ToolCallRecord.from_dict(c) for c in data.get("tool_calls") or []],
            timings=RunTimings.from_dict(data["timings"]),
            backend=str(data["backend"]),
            trace_id=data.get("trace_id"),
        )
