"""The runner: `Sandbox.run(code, tools=..., limits=...)` -> `RunResult`.

It checks the code, renders the stubs for the run's tools (once per tool set;
the guest binds them lazily, see guest_tools.py), and hands one JSON request
to a backend on a worker thread (`workers`). While the guest runs, each batch of
tool calls comes back to this event loop (`crossing.LoopCrossing`), where the
`Dispatcher` carries it out. The guest's JSON answer becomes a typed result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import anyio.to_thread

from .._errors import (
    TOOL_ERRORS_BY_CODE,
    CodeSyntaxError,
    CodeTooLarge,
    Deadlock,
    EmptyCode,
    ExecutionError,
    InvalidEncoding,
    MemoryLimitExceeded,
    ResultNotSerializable,
    RunTimeout,
    SandboxCrashed,
    TracebackLine,
    UncaughtException,
)
from .._limits import Limits
from .._result import RunResult, RunTimings
from .._stubgen import StubSet, render_stubs
from .._tools import Tool
from .crossing import LoopCrossing, bound
from .dispatch import RUN_CANCELLED, Dispatcher
from .epoch import RunGuard
from .frames import FrameRefused
from .frames import parse as parse_frame
from .guest_tools import GuestTools, identifiers
from .pooling import PoolSettings
from .workers import WorkerPool

if TYPE_CHECKING:
    from .._tracing import RunTrace

__all__ = ["Backend", "Sandbox"]

logger = logging.getLogger("codemode")

# A thread abandoned at its deadline (the restricted backend, which cannot cut a
# long C call) gets this long to notice before the run reports its timeout.
_GRACE_S = 1.0


class Backend(Protocol):
    """Where code runs. `execute` blocks; it is called on a worker thread."""

    name: str

    def load(self) -> None: ...

    def execute(self, request_json: str, host_call: Any, limits: Limits, guard: RunGuard) -> tuple[str, float]: ...


# The threads runs execute on, shared by every Sandbox of the process.
_workers = WorkerPool()
_shared_wasm: dict[PoolSettings, Backend] = {}
_shared_lock = threading.Lock()


def _backend(kind: str | Backend, pool_warm: int | None = None, pool_max: int | None = None) -> Backend:
    if not isinstance(kind, str):
        return kind
    if kind == "wasm":
        pool = PoolSettings.resolve(warm=pool_warm, max=pool_max)
        # One set of engines and compiled components per process and pool
        # setting, shared by every Sandbox.
        with _shared_lock:
            backend = _shared_wasm.get(pool)
            if backend is None:
                from .wasm import WasmBackend

                backend = _shared_wasm[pool] = WasmBackend(pool=pool)
        return backend
    if kind == "restricted":
        from .restricted import RestrictedBackend

        return RestrictedBackend()
    raise ValueError(f"unknown backend {kind!r}: use 'wasm' or 'restricted'")


class Sandbox:
    """Runs model-written code against tools, one fresh sandbox per run.

    `backend` is `"wasm"` (default: a fresh WebAssembly instance per run) or
    `"restricted"` (in-process RestrictedPython, faster to start, NOT a security
    boundary). `max_concurrency` bounds the runs executing at once; others wait.

    `pool_warm` and `pool_max` (wasm): sandbox instances kept resident between
    runs (about 17 MiB each; 0 keeps none, every instance is made on demand) and
    alive at once. Defaults: `$CODEMODE_POOL_WARM` and `$CODEMODE_POOL_MAX`, else
    3 and 256. Memory beyond the warm slots is given back as each run ends.

    Raises `ValueError` for pool sizes that do not fit together, `ConfigError`
    for such environment variables that are not whole numbers.
    """

    def __init__(
        self,
        *,
        backend: Literal["wasm", "restricted"] | Backend = "wasm",
        limits: Limits | None = None,
        max_concurrency: int = 8,
        pool_warm: int | None = None,
        pool_max: int | None = None,
    ) -> None:
        self.backend = _backend(backend, pool_warm, pool_max)
        self.limits = limits or Limits()
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._stub_cache: OrderedDict[tuple[int, ...], tuple[list[Tool], StubSet, GuestTools]] = OrderedDict()

    async def __aenter__(self) -> Sandbox:
        await self.load()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing to release today; kept so a Sandbox is used as a context manager."""

    async def load(self) -> None:
        """Load (and on first use build) the backend, off the event loop.

        Raises `SandboxUnavailable`."""
        await anyio.to_thread.run_sync(self.backend.load)

    def stubs(self, tools: Sequence[Tool]) -> StubSet:
        """The stubs the model's code sees for `tools` (cached per tool set)."""
        return self._catalog(tools)[1]

    def _catalog(self, tools: Sequence[Tool]) -> tuple[list[Tool], StubSet, GuestTools]:
        key = tuple(id(t) for t in tools)
        hit = self._stub_cache.get(key)
        if hit is not None:
            self._stub_cache.move_to_end(key)
            return hit
        stubs = render_stubs(tools)
        # The tools themselves are kept so their ids cannot be reused while cached.
        entry = self._stub_cache[key] = (list(tools), stubs, GuestTools(stubs))
        if len(self._stub_cache) > 64:
            self._stub_cache.popitem(last=False)
        return entry

    async def run(
        self,
        code: str | bytes,
        *,
        tools: Sequence[Tool] = (),
        limits: Limits | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        observe: Callable[[Tool, Any], None] | None = None,
    ) -> RunResult:
        """Run `code` with access to `tools`; never raises for anything the code
        does: failures are in `RunResult.error`. `on_event` is told, on this event
        loop, of each tool call as it starts and as it ends; `observe` is given each
        successful call's tool and value (from the thread the call ran on).

        Raises `SandboxUnavailable` if the backend cannot be loaded."""
        # One span per run, a child of the caller's; its trace id goes into the result.
        # (Imported here: OpenTelemetry's import would add ~9 ms to `import codemode`.)
        from .._tracing import run_span, trace_id_of, with_trace_id

        with run_span(code, limits or self.limits, self.backend.name) as traced:
            trace_id = trace_id_of(traced.span)
            if on_event is not None and trace_id is not None:
                on_event = with_trace_id(on_event, trace_id)
            result = await self._run(code, tools, limits, on_event, observe, traced if traced.recording else None)
            return traced.finish(result)

    async def _run(
        self,
        code: str | bytes,
        tools: Sequence[Tool],
        limits: Limits | None,
        on_event: Callable[[dict[str, Any]], None] | None,
        observe: Callable[[Tool, Any], None] | None,
        tracing: RunTrace | None,
    ) -> RunResult:
        limits = limits or self.limits
        t0 = time.monotonic()
        rejected = _check_code(code, limits)
        if isinstance(rejected, ExecutionError):
            return self._result(t0, error=rejected)
        _, stubs, guest_tools = self._catalog(tools)
        deadline = t0 + limits.timeout
        dispatcher = Dispatcher(
            bindings=stubs.bindings,
            limits=limits,
            deadline=deadline,
            started=t0,
            on_event=_on_loop(on_event) if on_event else None,
            observe=observe,
            tracing=tracing,
        )
        request = json.dumps(
            {
                "code": rejected,
                "limits": {"max_stdout": limits.max_stdout, "max_result": limits.max_result},
                "deadline_s": limits.timeout,
            }
        )
        # The tools as lazy namespaces (see guest_tools.py), spliced in as JSON.
        request = request[:-1] + "," + guest_tools.request_fields(identifiers(rejected)) + "}"

        guard = RunGuard(deadline=deadline)
        crossing = LoopCrossing()
        host_call = _HostCalls(dispatcher, crossing, guard)

        startup = 0.0
        response: str | None = None
        error: ExecutionError | None = None
        t_exec = time.monotonic()
        with anyio.move_on_after(max(0.0, deadline - time.monotonic()) + _GRACE_S):
            try:
                # The limiter bounds the runs executing at once (the wait for a
                # slot counts against the run's timeout).
                response, startup = await _workers.run(
                    _execute, self.backend, request, host_call, limits, guard, crossing, limiter=self._limiter
                )
            except anyio.get_cancelled_exc_class():
                # Our caller gave up: stop the guest within a tick, not at its
                # deadline, and the tool calls it waits on.
                guard.cancelled.set()
                crossing.cancel()
                raise
            except ExecutionError as exc:  # RunTimeout from the restricted backend
                error = exc
            except Exception as exc:
                from .wasm import WasmTrap

                if not isinstance(exc, WasmTrap):
                    raise
                error = exc.error
        if response is None and error is None:
            error = RunTimeout(f"the run exceeded its {limits.timeout:g} s timeout")
        execute_s = time.monotonic() - t_exec
        if dispatcher.fatal is not None:
            # The host ended the run; whatever the guest said after that is moot.
            return self._result(t0, error=dispatcher.fatal, dispatcher=dispatcher, startup=startup, execute_s=execute_s)
        if error is not None:
            return self._result(t0, error=error, dispatcher=dispatcher, startup=startup, execute_s=execute_s)
        assert response is not None
        return self._from_response(response, limits, t0, dispatcher, startup, execute_s)

    def _from_response(
        self, response: str, limits: Limits, t0: float, dispatcher: Dispatcher, startup: float, execute_s: float
    ) -> RunResult:
        common: dict[str, Any] = {"dispatcher": dispatcher, "startup": startup, "execute_s": execute_s}
        # Checked before parsing: an honest guest's answer always fits (see
        # `_answer_cap`); anything longer means its runtime was tampered with.
        cap = _answer_cap(limits)
        if len(response) > cap:
            return self._result(
                t0,
                error=SandboxCrashed(f"the guest's answer is {len(response)} characters; these limits allow {cap}"),
                **common,
            )
        try:
            data = json.loads(response)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            stdout, stdout_truncated = _cap(str(data.get("stdout", "")), limits.max_stdout)
            common.update(stdout=stdout, stdout_truncated=stdout_truncated or bool(data.get("stdout_truncated")))
            if data.get("ok"):
                value, truncated = data.get("value"), bool(data.get("value_truncated"))
                if len(response) > limits.max_result + _MARKER_ROOM:
                    value, truncated = _cap_value(value, truncated, limits.max_result)
                return self._result(t0, value=value, value_truncated=truncated, **common)
            return self._result(t0, error=_error_from_guest(data.get("error"), limits), **common)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            logger.warning("unreadable answer from the sandbox guest: %r", response[:500])
            return self._result(t0, error=SandboxCrashed(f"the guest's answer could not be read: {exc}"), **common)

    def _result(
        self,
        t0: float,
        *,
        dispatcher: Dispatcher | None = None,
        startup: float = 0.0,
        execute_s: float = 0.0,
        **fields: Any,
    ) -> RunResult:
        timings = RunTimings(
            total_s=time.monotonic() - t0,
            startup_s=startup,
            execute_s=execute_s,
            tools_s=dispatcher.tools_s if dispatcher else 0.0,
        )
        calls = list(dispatcher.calls) if dispatcher else []
        return RunResult(timings=timings, tool_calls=calls, backend=self.backend.name, **fields)


def _execute(
    backend: Backend, request: str, host_call: _HostCalls, limits: Limits, guard: RunGuard, crossing: LoopCrossing
) -> tuple[str, float]:
    """On the worker thread: the run, with its crossing bound to the thread for
    code other than the guest's that needs the loop (see `crossing.await_on_loop`)."""
    with bound(crossing, guard.deadline):
        return backend.execute(request, host_call, limits, guard)


class _HostCalls:
    """The run's side of `call-tools`, on the worker thread (`hostcall.Handler`)."""

    def __init__(self, dispatcher: Dispatcher, crossing: LoopCrossing, guard: RunGuard) -> None:
        self.dispatcher = dispatcher
        self.crossing = crossing
        self.guard = guard
        self.max_frame_bytes = dispatcher.limits.max_batch_bytes

    def refuse(self, refused: FrameRefused) -> str:
        return self.dispatcher.refuse(refused)

    def __call__(self, frame: str) -> str:
        if self.guard.cancelled.is_set():
            # A sync tool is answered here, not on the loop: without this the
            # guest went on calling one until its next epoch check.
            return RUN_CANCELLED
        try:
            batch = parse_frame(frame, self.max_frame_bytes)
        except FrameRefused as refused:
            return self.refuse(refused)
        # Sync tools are answered right here on the worker thread; async
        # tools (and gathers) cross to the event loop.
        answer = self.dispatcher.try_inline(batch)
        if answer is not None:
            return answer
        # The batch ends itself at the deadline; the bound is for a loop that stopped answering.
        timeout = self.guard.deadline - time.monotonic() + _GRACE_S
        answer = self.crossing.run(self.dispatcher.run_batch, batch, timeout=timeout)
        return answer if answer is not None else RUN_CANCELLED


def _on_loop(callback: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """`callback`, delivered on the current event loop from whatever thread calls
    it. From another thread it is queued, not waited for: events keep their
    order, and each reaches the loop before the run's own end does (both go
    through the loop's FIFO of callbacks), without a worker waiting on a hop.
    Events after the loop has closed are dropped."""
    loop_thread = threading.get_ident()
    loop = asyncio.get_running_loop()

    def deliver(event: dict[str, Any]) -> None:
        if threading.get_ident() == loop_thread:
            callback(event)
            return
        try:
            loop.call_soon_threadsafe(callback, event)
        except RuntimeError:
            # The loop has closed (asyncio.run ended) while this run's worker
            # was still busy: nobody is listening any more.
            pass

    return deliver


def _check_code(code: object, limits: Limits) -> str | ExecutionError:
    """The code as text, or why it is refused before running."""
    if isinstance(code, (bytes, bytearray, memoryview)):
        raw = bytes(code)
        if len(raw) > limits.max_code_bytes:
            return CodeTooLarge(f"the code is {len(raw)} bytes; the limit is {limits.max_code_bytes}")
        try:
            code = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return InvalidEncoding(f"the code is not valid UTF-8: {exc}")
    if not isinstance(code, str):
        return InvalidEncoding(f"the code must be text, not {type(code).__name__}")
    # Editors on Windows start UTF-8 files with a byte-order mark; CPython's own
    # file reader drops it, so do the same (only at the very start).
    code = code.removeprefix("\ufeff")
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return InvalidEncoding(f"the code is not valid Unicode text: {exc}")
    if size > limits.max_code_bytes:
        return CodeTooLarge(f"the code is {size} bytes; the limit is {limits.max_code_bytes}")
    if not code.strip():
        return EmptyCode("the code is empty")
    if "\x00" in code:
        return CodeSyntaxError("source code cannot contain null bytes", line=None, column=None, text="")
    return code


# What the guest's answer may hold beyond the value and the output: the error's
# message (4,000 characters), 60 traceback lines of 300, field names; and how
# far an escaped character can stretch in JSON (`\u0000`: 6).
_ANSWER_OVERHEAD = 65_536
_ESCAPE = 6
_MARKER_ROOM = 64  # runtime.MARKER_ROOM: the truncation marker past max_result
_encode_result = json.JSONEncoder(ensure_ascii=False).encode


def _answer_cap(limits: Limits) -> int:
    """The longest answer an honest guest gives under `limits`: its value's JSON
    is at most `max_result` (+ marker), its output `max_stdout` characters."""
    return limits.max_result + _MARKER_ROOM + _ESCAPE * (limits.max_stdout + _MARKER_ROOM) + _ANSWER_OVERHEAD


def _cap_value(value: Any, truncated: bool, limit: int) -> tuple[Any, bool]:
    """`value` if its JSON fits `limit` (+ the marker); else the start of that
    JSON as a string, with the marker, as the guest should have done."""
    text = _encode_result(value)
    if len(text) <= limit + _MARKER_ROOM:
        return value, truncated
    return text[:limit] + f"\n…[truncated {len(text) - limit} characters]", True


def _cap(text: str, limit: int) -> tuple[str, bool]:
    marker_room = 64
    if len(text) <= limit + marker_room:
        return text, False
    return text[:limit] + f"\n…[truncated {len(text) - limit} characters]", True


def _frames(raw: object) -> list[TracebackLine]:
    frames = []
    for frame in raw if isinstance(raw, list) else []:
        if isinstance(frame, dict):
            frames.append(
                TracebackLine(
                    line=int(frame.get("line") or 0), name=str(frame.get("name", "")), text=str(frame.get("text", ""))
                )
            )
    return frames


def _error_from_guest(error: object, limits: Limits) -> ExecutionError:
    if not isinstance(error, dict):
        return SandboxCrashed("the guest reported a failure without details")
    kind = error.get("kind")
    message = str(error.get("message", ""))
    if kind == "syntax":
        line, column = error.get("line"), error.get("column")
        return CodeSyntaxError(
            message,
            line=line if isinstance(line, int) else None,
            column=column if isinstance(column, int) else None,
            text=str(error.get("text", "")),
        )
    frames = _frames(error.get("traceback"))
    if kind == "tool":
        cls = TOOL_ERRORS_BY_CODE.get(str(error.get("code")), TOOL_ERRORS_BY_CODE["tool_error"])
        tool = error.get("tool")
        return cls(message, tool=str(tool) if tool else None, traceback=frames)
    if kind == "deadlock":
        return Deadlock(message, traceback=frames)
    if kind == "not_serializable":
        return ResultNotSerializable(
            message,
            path=str(error.get("path", "result"))[:500],
            value_type=str(error.get("type", ""))[:200],
            value_repr=str(error.get("repr", ""))[:300],
        )
    if kind == "exception":
        exc_type = str(error.get("type", "Exception"))
        if exc_type == "MemoryError":
            return MemoryLimitExceeded(f"the run ran out of memory (limit {limits.memory // (1024 * 1024)} MiB)")
        return UncaughtException(message, exc_type=exc_type, traceback=frames)
    return SandboxCrashed(f"the guest failed: {message or kind}")
