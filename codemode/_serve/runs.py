"""Runs for the HTTP service: admission control, the executor every endpoint
shares, and the store of background runs with their event logs.

Admission: at most `max_running` runs execute at once and `max_waiting` more
wait for a slot; beyond that a request is refused at once (HTTP 429) rather
than piling up in memory.

Approval: a run whose program makes a call the tool-call policy marks "ask"
is `waiting_approval` while the call waits; the call (`call_id`, namespace,
tool, arguments preview) is in the run's events (`approval_requested`) and in
`pending_approvals`; `Run.decide` (POST /v1/runs/{id}/approvals) resumes it.
The wait is bounded by the CodeMode's `approval_timeout` and the run's own
timeout; no decision in time denies the call.

Retention: a finished run (with its result and event log) is kept for
`ttl_s` seconds, at most `max_finished` finished runs are kept, and all runs
together are kept within `max_bytes` (the oldest finished runs go first). The
store keeps previews, not payloads: a tool call's arguments, in its events and
in the stored call log, are cut to `PREVIEW_CHARS` (each value to
`VALUE_PREVIEW_CHARS`), with `arguments_truncated` and the full size in
`arguments_bytes`. Each run keeps at most `max_events` events; a late
subscriber that missed evicted ones is told how many. A forgotten run's id is
remembered (a bounded number of them) so that asking for it says why it is gone.

Ownership: a run belongs to the client that started it (the `owner` string the
app takes from the authenticated caller); any other client is told it does not
exist, so run ids cannot be probed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._core import CodeMode
from .._errors import CodemodeError
from .._limits import Limits
from .._policy import Approval, Approver, ToolCall
from .._result import RunResult
from .metrics import Metrics

__all__ = [
    "PREVIEW_CHARS",
    "VALUE_PREVIEW_CHARS",
    "Admission",
    "Busy",
    "Executor",
    "Run",
    "RunStore",
    "Ticket",
    "preview_arguments",
]

logger = logging.getLogger("codemode.http")

EventCallback = Callable[[dict[str, Any]], None]

PREVIEW_CHARS = 500
"""How much of one call's arguments (as compact JSON) a stored run keeps."""
VALUE_PREVIEW_CHARS = 200
_KEY_CHARS = 100
_FORGOTTEN_IDS = 10_000


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=repr)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def preview_arguments(arguments: Any) -> tuple[dict[str, Any], int, bool]:
    """(the arguments as kept, their full size in bytes of JSON, whether cut).

    Arguments whose JSON fits in `PREVIEW_CHARS` are kept whole. Otherwise each
    value whose JSON is longer than `VALUE_PREVIEW_CHARS` becomes that much of
    its JSON text (ending in "…"), keys are cut to 100 characters, and keys stop
    once the preview is full."""
    encoded = _json(arguments)
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if len(encoded) <= PREVIEW_CHARS and isinstance(arguments, dict):
        return arguments, size, False
    kept: dict[str, Any] = {}
    used = 0
    for key, value in arguments.items() if isinstance(arguments, dict) else ():
        text = _json(value)
        shown: Any = value if len(text) <= VALUE_PREVIEW_CHARS else _cut(text, VALUE_PREVIEW_CHARS)
        used += min(len(text), VALUE_PREVIEW_CHARS) + min(len(str(key)), _KEY_CHARS) + 4
        if used > PREVIEW_CHARS:
            break
        kept[_cut(str(key), _KEY_CHARS)] = shown
    return kept, size, True


def _preview_event(event: dict[str, Any]) -> dict[str, Any]:
    if "arguments" not in event:
        return event
    kept, size, cut = preview_arguments(event["arguments"])
    event = {**event, "arguments": kept, "arguments_bytes": size, "arguments_truncated": cut}
    if isinstance(event.get("error_message"), str):
        event["error_message"] = _cut(event["error_message"], PREVIEW_CHARS)
    return event


def _preview_result(result: RunResult) -> RunResult:
    calls = []
    for call in result.tool_calls:
        kept, _, cut = preview_arguments(call.arguments)
        message = _cut(call.error_message, PREVIEW_CHARS) if call.error_message is not None else None
        if cut or message != call.error_message:
            call = dataclasses.replace(call, arguments=kept, error_message=message)
        calls.append(call)
    return dataclasses.replace(result, tool_calls=calls)


class Busy(Exception):
    """Every running slot and queue place is taken."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the server is at capacity")
        self.retry_after_s = retry_after_s


class Admission:
    """A bounded queue in front of the runner; everything runs on one event loop."""

    def __init__(self, *, max_running: int, max_waiting: int, retry_after_s: int = 1) -> None:
        self.max_running = max_running
        self.capacity = max_running + max_waiting
        self.retry_after_s = retry_after_s
        self.admitted = 0
        self.running = 0
        self._slots = anyio.Semaphore(max_running)

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    @property
    def has_room(self) -> bool:
        """A running slot is free and nobody here waits for one."""
        return self.admitted < self.max_running

    def reserve(self, *, queued_elsewhere: bool = False) -> Ticket:
        """A place in the queue, taken now (no await, so no race on the loop).
        `queued_elsewhere`: the run was admitted by a shared queue (a fleet's),
        so this one's bound does not apply.

        Raises `Busy` when the queue is full."""
        if self.admitted >= self.capacity and not queued_elsewhere:
            raise Busy(self.retry_after_s)
        self.admitted += 1
        return Ticket(self)


class Ticket:
    """A reserved place; `async with ticket:` waits for a running slot. The place
    is given back on exit, or by `release()` if the ticket is never used."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = True
        self._running = False

    async def __aenter__(self) -> None:
        await self._admission._slots.acquire()
        self._running = True
        self._admission.running += 1

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give back the slot and the place. Safe to call twice."""
        if self._running:
            self._running = False
            self._admission.running -= 1
            self._admission._slots.release()
        if self._held:
            self._held = False
            self._admission.admitted -= 1


class Executor:
    """The one path from any endpoint to `CodeMode.execute`, keeping the metrics."""

    def __init__(self, cm: CodeMode, metrics: Metrics) -> None:
        self.cm = cm
        self.metrics = metrics

    async def run(
        self, code: str, limits: Limits, on_event: EventCallback | None = None, approver: Approver | None = None
    ) -> RunResult:
        """Run `code`; cancelling the caller cancels the run and its in-flight tool calls.
        `approver` decides the calls the tool-call policy asks about.

        Raises whatever `CodeMode.execute` raises (`SandboxUnavailable`)."""

        def observe(event: dict[str, Any]) -> None:
            if event.get("type") == "tool_call_finished":
                self.metrics.tool_call_finished(event)
            if on_event is not None:
                on_event(event)

        try:
            result = await self.cm.execute(code, limits=limits, on_event=observe, approver=approver)
        except anyio.get_cancelled_exc_class():
            self.metrics.run_finished("cancelled", None, None)
            raise
        except Exception:
            self.metrics.run_finished("failed", "internal_error", None)
            raise
        error = result.error.code if result.error is not None else None
        self.metrics.run_finished("succeeded" if result.ok else "failed", error, result.timings.total_s)
        return result


@dataclass(eq=False)
class _Pending:
    call: ToolCall
    decided: anyio.Event = field(default_factory=anyio.Event)
    answer: Approval = field(default_factory=lambda: Approval(approved=False))


@dataclass(eq=False, kw_only=True)
class Run:
    """One background run: its state, result and bounded event log."""

    id: str
    code: str
    limits: Limits
    trace: bool
    max_events: int
    owner: str = "anonymous"
    """Who started it: only they may read or cancel it."""
    account: Callable[[int], None] = field(default=lambda delta: None, repr=False)
    """Told of each change in the bytes this run holds (the store's budget)."""
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None
    result: RunResult | None = None
    failure: dict[str, Any] | None = None
    """A problem body, if the service itself could not carry out the run."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    _events: deque[tuple[int, dict[str, Any], int]] = field(init=False)
    _next_seq: int = field(default=1, init=False)
    _changed: anyio.Event = field(default_factory=anyio.Event, init=False)
    bytes: int = field(default=0, init=False)
    """What the run holds, roughly: its code, its events and its result as JSON."""
    _pending: dict[str, _Pending] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._events = deque(maxlen=self.max_events)
        self._grow(len(self.code.encode("utf-8", "surrogatepass")))

    def _grow(self, delta: int) -> None:
        self.bytes += delta
        self.account(delta)

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    def publish(self, event: dict[str, Any]) -> None:
        """Append an event to the log (arguments as a preview) and wake every subscriber."""
        event = _preview_event(event)
        size = len(_json(event))
        if len(self._events) == self.max_events and self._events:
            self._grow(-self._events[0][2])  # the deque drops its oldest
        self._events.append((self._next_seq, event, size))
        self._next_seq += 1
        self._grow(size)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def cancel(self) -> None:
        self.scope.cancel()

    async def approver(self, call: ToolCall) -> Approval:
        """The run's approver: holds `call` until `decide` answers it. The gate
        bounds the wait (and denies on timeout); cancelling the run ends it."""
        pending = self._pending[call.call_id] = _Pending(call)
        self.status = "waiting_approval"
        self._wake()
        try:
            await pending.decided.wait()
            return pending.answer
        finally:
            del self._pending[call.call_id]
            if not self._pending and self.status == "waiting_approval":
                self.status = "running"
                self._wake()

    def decide(self, call_id: str, *, approved: bool, by: str, reason: str = "") -> bool:
        """Answer a pending call; False if the run has no pending call `call_id`
        (never asked, already decided, or timed out)."""
        pending = self._pending.get(call_id)
        if pending is None or pending.decided.is_set():
            return False
        pending.answer = Approval(approved=approved, by=by, reason=reason)
        pending.decided.set()
        return True

    def finish(self, status: str, *, result: RunResult | None = None, failure: dict[str, Any] | None = None) -> None:
        if self.finished:
            return
        if result is not None:
            result = _preview_result(result)
        self.status, self.result, self.failure = status, result, failure
        self.finished_at, self.finished_mono = time.time(), time.monotonic()
        held = len(_json(self.info())) if result is not None or failure is not None else 0
        self._grow(held - len(self.code.encode("utf-8", "surrogatepass")))
        self.code = ""  # not needed once it ran
        self.done.set()
        self._wake()

    def snapshot(self, after: int) -> tuple[int, list[tuple[int, dict[str, Any]]], bool, anyio.Event]:
        """Taken with no await in between, so nothing published can be missed:
        (events lost to the bound, events after seq `after`, finished, the event
        that fires on the next change)."""
        first = self._events[0][0] if self._events else self._next_seq
        lost = max(0, first - (after + 1))
        return lost, [(seq, ev) for seq, ev, _ in self._events if seq > after], self.finished, self._changed

    async def subscribe(self, after: int, ping_s: float) -> AsyncIterator[tuple[str, int | None, Any]]:
        """(event name, seq, data) for every event after seq `after`, live ones
        as they come, then ("result", None, ...) and the end. ("ping", None,
        None) every `ping_s` of silence keeps proxies from closing the stream."""
        while True:
            lost, events, finished, changed = self.snapshot(after)
            if lost:
                yield "events_dropped", None, {"count": lost}
            for seq, event in events:
                yield str(event.get("type", "event")), seq, event
                after = seq
            if finished:
                yield "result", None, self.info()
                return
            with anyio.move_on_after(ping_s) as quiet:
                await changed.wait()
            if quiet.cancelled_caught:
                yield "ping", None, None

    def info(self) -> dict[str, Any]:
        """The `RunInfo` shape."""
        return {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result.to_dict(trace=self.trace) if self.result is not None else None,
            "error": self.failure,
            "replica": None,
            "pending_approvals": [p.call.to_dict() for p in self._pending.values() if not p.decided.is_set()],
        }


class RunStore:
    """Background runs; an async context manager owning the task group they run in.
    Leaving it cancels every run still going."""

    def __init__(
        self,
        executor: Executor,
        admission: Admission,
        *,
        ttl_s: float = 600.0,
        max_finished: int = 200,
        max_events: int = 1_000,
        max_bytes: int = 256 * 2**20,
    ) -> None:
        self.executor = executor
        self.admission = admission
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0
        """What every run kept holds (`Run.bytes`), kept within `max_bytes` by
        forgetting finished runs; running runs are bounded by their event count."""
        self._runs: OrderedDict[str, Run] = OrderedDict()
        # Forgotten run id -> (owner, why), so asking for it gets a true answer.
        self._forgotten: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> RunStore:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        if tg is None:
            return None
        tg.cancel_scope.cancel()
        return await tg.__aexit__(exc_type, exc, tb)

    def start(self, code: str, limits: Limits, *, trace: bool, owner: str = "anonymous") -> Run:
        """Admit a run for `owner` and start it in the background.

        Raises `Busy` when the queue is full, `RuntimeError` if the store is not open."""
        if self._tg is None:
            raise RuntimeError("the run store is not open")
        self.prune()
        ticket = self.admission.reserve()
        run = Run(
            id="run_" + secrets.token_urlsafe(12),
            code=code,
            limits=limits,
            trace=trace,
            max_events=self.max_events,
            owner=owner,
            account=self._account,
        )
        self._runs[run.id] = run
        # Started from the request's task, the run's task copies its context: the
        # run's span is a child of the request's `traceparent`.
        self._tg.start_soon(self._drive, run, ticket)
        return run

    # -- `store.Runs`, the seam the app uses ------------------------------------------------------------------------

    async def submit(self, code: str, limits: Limits, *, trace: bool, owner: str) -> dict[str, Any]:
        return self.start(code, limits, trace=trace, owner=owner).info()

    async def info(self, run_id: str, owner: str) -> dict[str, Any] | None:
        run = self.get(run_id, owner)
        return run.info() if run is not None else None

    async def why_forgotten(self, run_id: str, owner: str) -> str | None:
        return self.forgotten(run_id, owner)

    async def events(self, run_id: str, after: int, ping_s: float) -> AsyncIterator[tuple[str, int | None, Any]]:
        run = self._runs.get(run_id)
        if run is None:
            return
        async for item in run.subscribe(after, ping_s):
            yield item

    async def cancel(self, run_id: str, wait_s: float) -> dict[str, Any] | None:
        run = self._runs.get(run_id)
        if run is None:
            return None
        if not run.finished:
            run.cancel()
            with anyio.move_on_after(wait_s):
                await run.done.wait()
        return run.info()

    async def decide(self, run_id: str, call_id: str, *, approved: bool, by: str, reason: str = "") -> bool:
        run = self._runs.get(run_id)
        return run is not None and run.decide(call_id, approved=approved, by=by, reason=reason)

    async def ping(self) -> None:
        pass  # this process's memory

    def stop_intake(self) -> None:
        pass  # runs start where they are submitted, and the app refuses new ones while stopping

    # -- the in-process API ------------------------------------------------------------------------------------------

    def get(self, run_id: str, owner: str = "anonymous") -> Run | None:
        """The run, if it is kept and `owner` started it."""
        self.prune()
        run = self._runs.get(run_id)
        return run if run is not None and run.owner == owner else None

    def forgotten(self, run_id: str, owner: str = "anonymous") -> str | None:
        """Why `owner`'s run `run_id` is no longer kept; None if it is not known to have been."""
        entry = self._forgotten.get(run_id)
        return entry[1] if entry is not None and entry[0] == owner else None

    def _account(self, delta: int) -> None:
        self.bytes += delta
        if delta > 0 and self.bytes > self.max_bytes:
            self.prune()

    def prune(self) -> None:
        """Forget finished runs past their time, then the oldest beyond the count,
        then the oldest while the store holds more than its byte budget."""
        now = time.monotonic()
        finished = sorted(
            (r for r in self._runs.values() if r.finished_mono is not None), key=lambda r: r.finished_mono or now
        )
        kept = len(finished)
        for run in finished:
            if now - (run.finished_mono or now) > self.ttl_s:
                why = f"finished runs are kept {self.ttl_s:g} s"
            elif kept > self.max_finished:
                why = f"only the {self.max_finished} most recent finished runs are kept"
            elif self.bytes > self.max_bytes:
                why = f"finished runs are forgotten, oldest first, to keep the run store within {_mb(self.max_bytes)}"
            else:
                break
            self._forget(run, why)
            kept -= 1

    def _forget(self, run: Run, why: str) -> None:
        del self._runs[run.id]
        self.bytes -= run.bytes
        self._forgotten[run.id] = (run.owner, why)
        while len(self._forgotten) > _FORGOTTEN_IDS:
            self._forgotten.popitem(last=False)

    async def _drive(self, run: Run, ticket: Ticket) -> None:
        try:
            with run.scope:
                async with ticket:
                    run.status, run.started_at = "running", time.time()
                    result = await self.executor.run(run.code, run.limits, run.publish, run.approver)
                run.finish("succeeded" if result.ok else "failed", result=result)
            if run.started_at is None:  # cancelled while queued: the executor never saw it
                self.executor.metrics.run_finished("cancelled", None, None)
        except Exception as exc:  # top level of a background task: becomes the run's typed failure
            logger.exception("run %s failed inside the service", run.id)
            # A CodemodeError's message is meant for users; anything else is a bug.
            if isinstance(exc, CodemodeError):
                code, detail, status = exc.code, exc.message, 503
            else:
                code, detail, status = "internal_error", "an unexpected error; see the server log", 500
            run.finish(
                "failed",
                failure={"code": code, "title": "The run could not be carried out", "detail": detail, "status": status},
            )
        finally:
            ticket.release()
            # Cancelled by DELETE (scope caught it) or by shutdown (re-raised).
            run.finish("cancelled")
            self.prune()


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"
