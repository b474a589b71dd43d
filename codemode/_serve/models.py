"""The HTTP service's wire shapes: pydantic models for requests and responses
(they are also the OpenAPI schema), and the one problem shape every error takes.

Results are serialized by `RunResult.to_dict` so the HTTP answer is exactly what
the Python API and CLI print; the response models here describe that shape and
a test checks they agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._limits import GUEST_MIN_MEMORY, Limits

__all__ = [
    "ApprovalIn",
    "ApprovalOut",
    "ExecuteRequest",
    "ExecuteResponse",
    "Health",
    "LimitsIn",
    "PendingApproval",
    "Problem",
    "RunCreated",
    "RunInfo",
    "RunStatus",
    "SearchResponse",
    "ServersResponse",
]

RunStatus = Literal["queued", "running", "waiting_approval", "succeeded", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Strict(BaseModel):
    # A misspelt field ("timout") is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid")


class LimitsIn(_Strict):
    """Limits for one run. Each omitted field takes the server's default; each
    given one is capped at the server's maximum (silently: the run still happens).
    Strict: `true` or `"5"` is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)

    timeout: float | None = Field(
        default=None, gt=0, description="Wall-clock seconds for the whole run, tool calls included."
    )
    memory: int | None = Field(
        default=None,
        ge=GUEST_MIN_MEMORY,
        description=f"Bytes the guest's memory may grow to; at least {GUEST_MIN_MEMORY}, its initial memory.",
    )
    max_tool_calls: int | None = Field(default=None, gt=0, description="Tool calls the run may make.")
    max_batch: int | None = Field(default=None, gt=0, description="Tool calls one `asyncio.gather` level may carry.")
    max_batch_bytes: int | None = Field(
        default=None, gt=0, description="Size of one crossing's tool calls, as UTF-8 JSON, leaving the sandbox."
    )
    max_code_bytes: int | None = Field(default=None, gt=0, description="Size of the code, in UTF-8 bytes.")
    max_tool_result_bytes: int | None = Field(default=None, gt=0, description="Size of one tool result, as JSON.")
    max_stdout: int | None = Field(default=None, gt=0, description="Characters of print output kept.")
    max_result: int | None = Field(default=None, gt=0, description="Characters of the result's JSON kept.")

    def resolve(self, default: Limits, maximum: Limits) -> Limits:
        """The limits a run gets: `default` overridden by the given fields, each
        capped at `maximum`."""
        changes: dict[str, float] = {}
        for name in type(self).model_fields:
            wanted = getattr(self, name)
            base = getattr(default, name)
            value = base if wanted is None else wanted
            changes[name] = min(value, getattr(maximum, name))
        return default.replace(**changes)


class ExecuteRequest(_Strict):
    code: str = Field(
        description="Python source. The value of its last expression is the result; top-level `await` calls the tools."
    )
    limits: LimitsIn | None = None
    trace: bool = Field(default=False, description="Include the tool-call log (`tool_calls`) in the result.")


class ExecutionErrorOut(BaseModel):
    """Why a run failed. Extra fields depend on `code` (e.g. `line` for `syntax_error`,
    `traceback` for `uncaught_exception`)."""

    model_config = ConfigDict(extra="allow")
    code: str
    type: str
    message: str


class TimingsOut(BaseModel):
    total_s: float
    startup_s: float
    execute_s: float
    tools_s: float


class ToolCallOut(BaseModel):
    namespace: str = Field(description="The namespace as code names it.")
    tool: str = Field(description="The tool's Python name, as code called it.")
    server: str = Field(default="", description="The namespace the lock file and configuration use.")
    wire_name: str = Field(default="", description="The tool's name on its server (what is pinned and called).")
    arguments: dict[str, Any] = Field(
        description="In a background run's stored call log, a preview: values past 200 characters are cut (ending in …)."
    )
    ok: bool
    error_code: str | None
    error_message: str | None
    batch: int
    started_s: float
    duration_s: float
    decision: Literal["allowed", "denied", "approved", "approval_denied"] | None = Field(
        default=None, description="The tool-call policy's decision, when a policy is set."
    )
    decided_by: str | None = Field(default=None, description="`policy`, or who approved or refused the call.")


class ExecuteResponse(BaseModel):
    """A run's result. `ok` is false when the code failed; the request itself
    still succeeded (HTTP 200)."""

    ok: bool
    value: Any = Field(description="The value of the code's last expression (JSON).")
    value_truncated: bool
    stdout: str
    stdout_truncated: bool
    error: ExecutionErrorOut | None
    backend: str
    timings: TimingsOut
    tool_calls: list[ToolCallOut] | None = Field(default=None, description="Only when the request asked for `trace`.")
    trace_id: str | None = Field(
        default=None,
        description="The OpenTelemetry trace of the run (32 hex digits), when it was traced: the server has a "
        "tracer provider, or the request carried a `traceparent`.",
    )


class Problem(BaseModel):
    """Every error the service answers with (`application/problem+json`). `code` is
    stable and meant for programs; `title` and `detail` are for people."""

    model_config = ConfigDict(extra="allow")
    code: str = Field(examples=["not_found"])
    title: str
    detail: str
    status: int


class RunCreated(BaseModel):
    id: str
    status: RunStatus


class PendingApproval(BaseModel):
    call_id: str
    namespace: str
    tool: str
    preview: str = Field(description="The call's arguments as JSON, cut to 500 characters.")


class ApprovalIn(_Strict):
    call_id: str = Field(description="From the `approval_requested` event or `pending_approvals`.")
    approved: bool
    reason: str = Field(default="", max_length=1_000, description="Shown to the program when the call is refused.")


class ApprovalOut(BaseModel):
    call_id: str
    decision: Literal["approved", "approval_denied"]
    by: str


class RunInfo(BaseModel):
    id: str
    status: RunStatus
    created_at: float = Field(description="Unix time.")
    started_at: float | None
    finished_at: float | None
    result: ExecuteResponse | None = Field(description="Once the run succeeded or failed.")
    error: Problem | None = Field(default=None, description="Set if the service itself could not carry out the run.")
    replica: str | None = Field(
        default=None, description="The replica carrying out the run, in a fleet (`--store redis://…`); else null."
    )
    pending_approvals: list[PendingApproval] = Field(
        default_factory=list, description="Tool calls waiting for a decision (`POST /v1/runs/{id}/approvals`)."
    )


class ServerOut(BaseModel):
    namespace: str
    server: str
    tool_count: int
    tools: list[str]


class FailureOut(BaseModel):
    server: str
    namespace: str
    code: str
    message: str


class ServerStateOut(BaseModel):
    server: str
    namespace: str
    state: Literal["connecting", "ready", "unavailable"] = Field(
        description="Unavailable servers are retried in the background; their calls fail with `server_unavailable`."
    )
    tools: int = Field(description="Tools listed (for an unavailable server: at its last successful listing).")
    last_error: FailureOut | None = Field(description="Why the last attempt to connect failed.")


class ServersResponse(BaseModel):
    servers: list[ServerOut]
    failures: list[FailureOut] = Field(description="Configured servers that are unavailable now.")
    states: list[ServerStateOut] = Field(description="Every configured server's connection state.")


class ToolHitOut(BaseModel):
    name: str = Field(description="`namespace.tool`, as the code calls it and /v1/stubs takes it.")
    namespace: str
    tool: str
    score: float
    signature: str
    summary: str


class SearchResponse(BaseModel):
    hits: list[ToolHitOut]
    stubs: str | None = Field(default=None, description="With `with_stubs=true`: the stubs of the best few hits.")


class Health(BaseModel):
    status: Literal["ok", "starting", "degraded"] = Field(
        description="`degraded` when some configured server is unavailable, `starting` while some still connect."
    )
    backend: str
    tools: int
    failures: list[FailureOut]
    servers: list[ServerStateOut] = Field(description="Every configured server's connection state.")
