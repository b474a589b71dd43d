"""Approval over MCP 2026-07-28 sessions: a paused run that outlives one `tools/call`.

From protocol 2026-07-28 a server cannot send a request to the client in the
middle of a call. It answers the call with an `InputRequiredResult` (here: one
elicitation, "Allow fs.write_file({...})?") and a `request_state`; the client
asks its user and calls the tool again with the answer and that state. A
codemode run cannot be restarted from the top (its earlier calls had effects),
so the run keeps going in the server's task group while it waits, and each
retry of `execute_code` picks it up again by the key in `request_state`:

    round 1: start the run; it reaches a call that needs approval -> InputRequiredResult
    round 2: the user's answer decides that call; the run goes on -> its result
             (or the next InputRequiredResult)

Bounds: a paused run waits at most the CodeMode's `approval_timeout` and its
own timeout (the gate denies the call then), and counts against the server's
concurrent runs while it lives. A run whose client never comes back finishes
on its own and is forgotten. `request_state` is sealed by the SDK (an
authenticated, encrypted token), and the run key inside it is random.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from mcp.server.mcpserver import Context
from mcp_types import ElicitRequest, ElicitRequestFormParams, ElicitResult, InputRequiredResult

from .._core import CodeMode
from .._errors import CodemodeError
from .._limits import Limits
from .._policy import Approval, ToolCall
from .._result import RunResult

__all__ = ["NO_ELICITATION", "Rounds", "approval_message"]

_KEY = "approve"
APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean", "default": False, "description": "Let the program make this call."}},
    "required": ["approve"],
}


NO_ELICITATION = "it needs a person's approval, and this MCP client cannot ask (it does not support elicitation)"


def approval_message(call: ToolCall) -> str:
    return f"A program wants to call {call.qualified_name}({call.preview}). Allow it?"


@dataclass(eq=False)
class _Run:
    key: str
    asking: ToolCall | None = None
    result: RunResult | None = None
    failure: CodemodeError | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)
    answer: Approval | None = None
    answered: anyio.Event = field(default_factory=anyio.Event)
    watchers: int = 0
    """Rounds waiting on the run now."""
    can_ask: bool = True
    """Whether the client said it supports elicitation."""

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def approver(self, call: ToolCall) -> Approval:
        """The run's approver: publishes `call` and waits for the next round's answer."""
        if not self.can_ask:
            return Approval(approved=False, by="mcp client", reason=NO_ELICITATION)
        self.answer, self.answered = None, anyio.Event()
        self.asking = call
        self._wake()
        try:
            await self.answered.wait()
        finally:
            self.asking = None
        return self.answer or Approval(approved=False, by="mcp user")

    def decide(self, answer: Approval) -> None:
        self.answer = answer
        self.asking = None  # now, not when the approver resumes: the next round must not see it again
        self.answered.set()

    async def next_step(self) -> ToolCall | None:
        """Wait until the run asks about a call (returned) or ends (None)."""
        while self.asking is None and self.result is None and self.failure is None:
            await self.changed.wait()
        return self.asking


class Rounds:
    """The paused runs of one MCP server, in a task group its lifespan owns."""

    def __init__(self, cm: CodeMode, limits: Limits, runs: anyio.CapacityLimiter) -> None:
        self.cm = cm
        self.limits = limits
        self._limiter = runs
        self._runs: dict[str, _Run] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    @property
    def available(self) -> bool:
        return self._tg is not None

    async def call(self, code: str, ctx: Context) -> RunResult | InputRequiredResult:
        """One round of `execute_code`: start the run or resume it from
        `request_state`, then answer its result or its next question.

        Raises `CodemodeError` if the run could not be carried out, and
        `LookupError` for a `request_state` naming no live run."""
        run = self._resume(ctx) if ctx.request_state else self._start(code, ctx)
        run.watchers += 1
        try:
            asking = await run.next_step()
        finally:
            run.watchers -= 1
        if asking is not None:
            params = ElicitRequestFormParams(message=approval_message(asking), requested_schema=APPROVAL_SCHEMA)
            return InputRequiredResult(
                input_requests={_KEY: ElicitRequest(params=params)},
                request_state=json.dumps({"run": run.key, "call": asking.call_id}),
            )
        self._runs.pop(run.key, None)
        if run.failure is not None:
            raise run.failure
        assert run.result is not None
        return run.result

    def _start(self, code: str, ctx: Context) -> _Run:
        if self._tg is None:
            raise RuntimeError("the MCP server's lifespan is not running")
        capabilities = ctx.client_capabilities
        can_ask = capabilities is not None and capabilities.elicitation is not None
        run = _Run(key=secrets.token_urlsafe(16), can_ask=can_ask)
        self._runs[run.key] = run
        self._tg.start_soon(self._drive, run, code)
        return run

    def _resume(self, ctx: Context) -> _Run:
        try:
            state = json.loads(ctx.request_state or "")
            run = self._runs[state["run"]]
        except (ValueError, TypeError, KeyError):
            raise LookupError("this run is gone: it ended (an approval times out) or the server restarted") from None
        response = (ctx.input_responses or {}).get(_KEY)
        approved = (
            isinstance(response, ElicitResult)
            and response.action == "accept"
            and bool((response.content or {}).get("approve"))
        )
        if run.asking is not None and run.asking.call_id == state.get("call"):
            action = response.action if isinstance(response, ElicitResult) else "no answer"
            reason = "" if approved else f"the user answered {action}"
            run.decide(Approval(approved=approved, by="mcp user", reason=reason))
        return run

    async def _drive(self, run: _Run, code: str) -> None:
        try:
            async with self._limiter:
                run.result = await self.cm.execute(code, limits=self.limits, approver=run.approver)
        except CodemodeError as exc:
            run.failure = exc
        finally:
            if run.result is None and run.failure is None:  # cancelled with the server
                run.failure = CodemodeError("the server stopped before the run finished")
            if run.watchers == 0:  # its client is not waiting on it (and may never come back)
                self._runs.pop(run.key, None)
            run._wake()
