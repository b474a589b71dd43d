"""Tool-call policy and approval: whether each call a program makes may go out.

For every call, before it is made, the policy answers `allow`, `deny` or `ask`:

- `allow`: the call is made;
- `deny`: it is not; the program gets a catchable `ToolError` with code `denied`;
- `ask`: the run pauses on that call until an approver decides. Approved, the
  call is made; refused, or no decision within `approval_timeout`, the program
  gets a `ToolError` with code `approval_denied`.

The rules come from `CodeMode(policy=...)` (a `Policy` or any function of a
`ToolCall`) and from each server's `"codemode": {"approve": [...]}` in the
config; when both speak, the stricter answer wins (deny, then ask, then allow).
The approver is an async function given to `CodeMode(approver=...)` or to one
`execute(..., approver=...)`; the HTTP service and the MCP server pass their own.

Trust and failure policy: this runs on the host, on calls already checked
against the tool's schema, so the model's code cannot skip it. It fails
closed: an approver that raises, or none configured, denies. Every decision
goes to the run's call log (`ToolCallRecord.decision`, `.decided_by`) and, when
tracing records, to the call's span (`codemode.tool.decision`, `.decided_by`).

Tools are wrapped where `CodeMode` builds them, so the runner and dispatcher
know nothing of policies. Which run a call belongs to (for its call log, its
events and a per-run approver) travels in a context variable, which the runner
carries into the sandbox's worker thread and back to the event loop.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import anyio

from ._errors import ApprovalDenied, ToolDenied
from ._result import ToolCallRecord
from ._sandbox.crossing import await_on_loop
from ._tools import Tool

__all__ = ["Approval", "Approver", "Decision", "Policy", "PolicyFn", "ToolCall"]

logger = logging.getLogger("codemode")

Decision = Literal["allow", "deny", "ask"]
_STRICTNESS: dict[str, int] = {"allow": 0, "ask": 1, "deny": 2}
_REFUSALS = frozenset({"denied", "approval_denied"})
PREVIEW_CHARS = 500
"""Characters of a call's arguments, as JSON, shown to an approver."""


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """A call a program is about to make, as a policy and an approver see it.

    `namespace` and `tool` are the server's namespace and the tool's own name
    (as the server lists it); `arguments` are the validated arguments, by their
    schema names. `call_id` names this call in events and approval requests."""

    namespace: str
    tool: str
    arguments: Mapping[str, Any]
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.tool}"

    @property
    def preview(self) -> str:
        """The arguments as JSON, cut to `PREVIEW_CHARS` characters with a marker."""
        text = json.dumps(dict(self.arguments), ensure_ascii=False, default=repr)
        return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"

    def to_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "namespace": self.namespace, "tool": self.tool, "preview": self.preview}


@dataclass(frozen=True, kw_only=True)
class Approval:
    """An approver's answer; an approver may also return a plain bool."""

    approved: bool
    by: str = "approver"
    """Who decided, for the call log (a user name, a client id)."""
    reason: str = ""
    """Shown to the program when the call is refused."""


PolicyFn = Callable[[ToolCall], Decision]
Approver = Callable[[ToolCall], Awaitable[bool | Approval]]


class Policy:
    """Rules by shell pattern over `namespace.tool`, e.g.

        Policy(approve=["fs.write_*", "*.delete_*"], deny=["shell.*"])

    Deny wins over approve; a call no pattern matches gets `default`."""

    def __init__(self, *, approve: Sequence[str] = (), deny: Sequence[str] = (), default: Decision = "allow") -> None:
        if default not in _STRICTNESS:
            raise ValueError(f"default must be 'allow', 'deny' or 'ask', not {default!r}")
        self.approve = tuple(approve)
        self.deny = tuple(deny)
        self.default: Decision = default

    def __call__(self, call: ToolCall) -> Decision:
        name = call.qualified_name
        if any(fnmatchcase(name, pattern) for pattern in self.deny):
            return "deny"
        if any(fnmatchcase(name, pattern) for pattern in self.approve):
            return "ask"
        return self.default

    def __repr__(self) -> str:
        return f"Policy(approve={list(self.approve)!r}, deny={list(self.deny)!r}, default={self.default!r})"


def stricter(a: Decision, b: Decision) -> Decision:
    return a if _STRICTNESS[a] >= _STRICTNESS[b] else b


@dataclass
class RunGate:
    """One run's view of the gate: its approver, its events and its decisions."""

    approver: Approver | None = None
    on_event: Callable[[dict[str, Any]], None] | None = None
    deadline: float | None = None
    """`time.monotonic()` when the run's timeout ends: no approval waits past it."""
    # (tool, arguments, decision, decided_by), in the order the calls were decided.
    decisions: list[tuple[Tool, dict[str, Any], str, str]] = field(default_factory=list)

    def annotate(
        self, calls: list[ToolCallRecord], names: Mapping[tuple[str, str], tuple[str, str]]
    ) -> list[ToolCallRecord]:
        """`calls` with each call's decision filled in. `names` maps a tool's
        (namespace, name) to the Python names its call records carry.

        A record is matched to the first unused decision for the same tool and
        equal arguments that agrees on whether the call was refused, so that
        identical concurrent calls, one approved and one not, pair correctly."""
        pending = list(self.decisions)
        out: list[ToolCallRecord] = []
        for record in calls:
            refused = record.error_code in _REFUSALS
            for i, (tool, arguments, decision, by) in enumerate(pending):
                if (
                    names.get((tool.namespace, tool.name)) == (record.namespace, record.tool)
                    and arguments == record.arguments
                    and (decision in _REFUSALS) == refused
                ):
                    record = dataclasses.replace(record, decision=decision, decided_by=by)
                    del pending[i]
                    break
            out.append(record)
        return out


def _mark_span(decision: str, by: str) -> None:
    """Put the decision on the tool call's span (current here when tracing records)."""
    from opentelemetry import trace  # the MCP SDK's dependency; imported only when a policy decides

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({"codemode.tool.decision": decision, "codemode.tool.decided_by": by})


_current_run: contextvars.ContextVar[RunGate | None] = contextvars.ContextVar("codemode_run_gate", default=None)


class Gate:
    """Decides and, when asked, waits for approval; wraps tools so every call passes it."""

    def __init__(self, policies: Sequence[PolicyFn], approver: Approver | None, approval_timeout: float) -> None:
        if approval_timeout <= 0:
            raise ValueError("approval_timeout must be positive")
        self.policies = list(policies)
        self.approver = approver
        self.approval_timeout = approval_timeout

    def run(self, run: RunGate) -> contextvars.Token[RunGate | None]:
        """Make `run` the current run (reset with `release`)."""
        return _current_run.set(run)

    @staticmethod
    def release(token: contextvars.Token[RunGate | None]) -> None:
        _current_run.reset(token)

    def decide(self, call: ToolCall) -> Decision:
        decision: Decision = "allow"
        for policy in self.policies:
            try:
                answer = policy(call)
            except Exception:  # a policy function's failure must not open the gate, nor look like the tool's
                logger.exception("the policy %r failed on %s: denying it", policy, call.qualified_name)
                answer = "deny"
            if answer not in _STRICTNESS:
                logger.warning("policy %r answered %r for %s: denying", policy, answer, call.qualified_name)
                answer = "deny"
            decision = stricter(decision, answer)
        return decision

    def wrap(self, tool: Tool) -> Tool:
        """`tool`, with every call passing this gate first (sync stays sync)."""
        inner = tool.fn
        if tool.is_async:

            async def gated_async(**arguments: Any) -> Any:
                await self._admit(tool, arguments)
                return await inner(**arguments)

            return dataclasses.replace(tool, fn=gated_async)

        def gated_sync(**arguments: Any) -> Any:
            # Sync tools run on a worker thread; an approval waits on the run's event loop.
            call = self._call(tool, arguments)
            decision = self.decide(call)
            if decision == "ask":
                await_on_loop(self._ask, tool, call)
            else:
                self._settle(tool, call, decision)
            return inner(**arguments)

        return dataclasses.replace(tool, fn=gated_sync)

    @staticmethod
    def _call(tool: Tool, arguments: dict[str, Any]) -> ToolCall:
        return ToolCall(namespace=tool.namespace, tool=tool.name, arguments=arguments)

    async def _admit(self, tool: Tool, arguments: dict[str, Any]) -> None:
        call = self._call(tool, arguments)
        decision = self.decide(call)
        if decision == "ask":
            await self._ask(tool, call)
        else:
            self._settle(tool, call, decision)

    def _settle(self, tool: Tool, call: ToolCall, decision: Decision) -> None:
        """Record a rule's allow or deny; raise `ToolDenied` for deny."""
        run = _current_run.get()
        outcome = "allowed" if decision == "allow" else "denied"
        _mark_span(outcome, "policy")
        if run is not None:
            run.decisions.append((tool, dict(call.arguments), outcome, "policy"))
        if decision == "deny":
            raise ToolDenied(f"{call.qualified_name} is denied by the tool-call policy")

    async def _ask(self, tool: Tool, call: ToolCall) -> None:
        """Wait for an approver's decision; raise `ApprovalDenied` unless approved."""
        run = _current_run.get()
        approver = (run.approver if run is not None else None) or self.approver

        def record(decision: str, by: str) -> None:
            _mark_span(decision, by)
            if run is not None:
                run.decisions.append((tool, dict(call.arguments), decision, by))
                if run.on_event is not None:
                    run.on_event({"type": "approval_decided", **call.to_dict(), "decision": decision, "by": by})

        if approver is None:
            record("approval_denied", "no approver")
            raise ApprovalDenied(f"{call.qualified_name} needs approval and no approver is configured")
        wait, cut_by_run = self.approval_timeout, False
        if run is not None and run.deadline is not None and run.deadline - time.monotonic() < wait:
            # Ending the wait here, cleanly, beats being torn down with the run.
            wait, cut_by_run = max(0.0, run.deadline - time.monotonic()), True
        if run is not None and run.on_event is not None:
            run.on_event({"type": "approval_requested", **call.to_dict(), "timeout_s": round(wait, 3)})
        answer: bool | Approval = False
        try:
            with anyio.move_on_after(wait) as waited:
                answer = await approver(call)
        except Exception:  # the approver's own failure: deny, never let the call through
            logger.exception("the approver failed on %s: denying it", call.qualified_name)
            record("approval_denied", "approver error")
            raise ApprovalDenied(f"{call.qualified_name} was not approved: the approver failed") from None
        if waited.cancelled_caught and cut_by_run:
            record("approval_denied", "run timeout")
            raise ApprovalDenied(f"{call.qualified_name} was not approved before the run's timeout")
        if waited.cancelled_caught:
            record("approval_denied", "timeout")
            raise ApprovalDenied(f"{call.qualified_name} was not approved within {self.approval_timeout:g} s")
        approval = answer if isinstance(answer, Approval) else Approval(approved=answer is True)
        if not approval.approved:
            record("approval_denied", approval.by)
            reason = f": {approval.reason}" if approval.reason else ""
            raise ApprovalDenied(f"{call.qualified_name} was denied by {approval.by}{reason}")
        record("approved", approval.by)
