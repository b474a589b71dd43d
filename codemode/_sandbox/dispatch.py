"""Where the sandbox's tool calls are carried out on the host.

The guest sends a batch of calls as JSON, which `frames` checks and parses
before anything runs; `Dispatcher.run_batch` resolves each
to its `Tool`, validates the arguments against the tool's input schema, runs the
batch concurrently in one anyio task group, and answers with one outcome per
call. Limits that end the run (call count, batch size, deadline) make it answer
`{"abort": ...}` and remember the typed error, which then wins over whatever
the guest reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import jsonschema

from .._errors import (
    BatchLimitExceeded,
    ExecutionError,
    RunTimeout,
    ToolCallLimitExceeded,
    ToolError,
)
from .._limits import Limits
from .._result import ToolCallRecord
from .._stubgen import ToolBinding
from .._tools import Tool
from .crossing import RunEnded, await_on_loop
from .frames import Call, FrameRefused, log_refusal

if TYPE_CHECKING:
    from .._tracing import RunTrace

__all__ = ["RUN_CANCELLED", "Dispatcher"]

logger = logging.getLogger("codemode")


_validators: weakref.WeakKeyDictionary[Tool, jsonschema.protocols.Validator | None] = weakref.WeakKeyDictionary()
_fast_checks: weakref.WeakKeyDictionary[Tool, Callable[[dict[str, Any]], bool] | None] = weakref.WeakKeyDictionary()
_encode = json.JSONEncoder(allow_nan=False).encode
RUN_CANCELLED = json.dumps({"abort": "the run was cancelled"})
"""The answer that tells the guest its run was cancelled."""

# JSON Schema's types, as Python checks (bool is not a number; 1.0 is an integer).
_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
_INERT = frozenset({"description", "title", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"})


def _fast_check(schema: Mapping[str, Any]) -> Callable[[dict[str, Any]], bool] | None:
    """An exact, quick `is_valid` for the schemas most tools have: an object whose
    properties each constrain only their type. None for anything richer."""
    if set(schema) - _INERT - {"type", "properties", "required", "additionalProperties", "$schema"}:
        return None
    if schema.get("type", "object") != "object" or not isinstance(schema.get("properties", {}), Mapping):
        return None
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required) or not isinstance(extra, bool):
        return None
    types: dict[str, Callable[[Any], bool] | None] = {}
    for name, prop in schema.get("properties", {}).items():
        if not isinstance(prop, Mapping) or set(prop) - _INERT - {"type"}:
            return None
        kind = prop.get("type")
        if kind is None:
            types[name] = None
        elif isinstance(kind, str) and kind in _TYPE_CHECKS:
            types[name] = _TYPE_CHECKS[kind]
        else:
            return None

    def check(arguments: dict[str, Any]) -> bool:
        for name in required:
            if name not in arguments:
                return False
        for name, value in arguments.items():
            if name in types:
                test = types[name]
                if test is not None and not test(value):
                    return False
            elif not extra:
                return False
        return True

    return check


def _validator(tool: Tool) -> jsonschema.protocols.Validator | None:
    """The tool's compiled input-schema validator (None: the schema is unusable)."""
    try:
        return _validators[tool]
    except KeyError:
        pass
    schema = dict(tool.input_schema)
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        validator: jsonschema.protocols.Validator | None = cls(schema)
    except (jsonschema.exceptions.SchemaError, TypeError, ValueError) as exc:
        # A server's broken schema must not stop its tool from being called.
        logger.warning("input schema of tool %r cannot be checked: %s", tool.name, exc)
        validator = None
    _validators[tool] = validator
    return validator


def _validation_error(binding: ToolBinding, arguments: dict[str, Any]) -> str | None:
    tool = binding.tool
    try:
        fast = _fast_checks[tool]
    except KeyError:
        fast = _fast_checks[tool] = _fast_check(tool.input_schema)
    if fast is not None and fast(arguments):
        return None
    # The full validator decides (and words the error) for anything else.
    validator = _validator(tool)
    if validator is None:
        return None
    try:
        if validator.is_valid(arguments):
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except (jsonschema.exceptions.SchemaError, TypeError, ValueError, RecursionError) as exc:
        logger.warning("input schema of %s cannot be checked: %s", binding.qualified_name, exc)
        return None
    if error is None:
        return None
    parts = list(error.absolute_path)
    if parts and isinstance(parts[0], str):
        py_names = {wire: py for py, wire in binding.params.items()}
        parts[0] = py_names.get(parts[0], parts[0])
    path = ".".join(str(p) for p in parts)
    return f"{path}: {error.message}" if path else error.message


class _Exited(Exception):
    """A SystemExit or KeyboardInterrupt a sync tool raised, carried as a failure of its call."""

    def __init__(self, exited: SystemExit | KeyboardInterrupt) -> None:
        super().__init__(repr(exited))
        self.exited = exited


def _call_sync_tool(fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """`fn(**arguments)` on the thread the sync tool runs on. A SystemExit or
    KeyboardInterrupt it raises (argparse exits on arguments it refuses) fails
    the call like any exception: raised on as they are, they trapped the guest
    on the run's worker and, from anyio's thread in a gather, left the event
    loop and ended the process. On this thread only the tool can raise them:
    signals are handled on the main thread."""
    try:
        return fn(**arguments)
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Exited(exc) from None


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Dispatcher:
    """Carries out one run's tool calls. Not reused across runs."""

    bindings: Mapping[tuple[str, str], ToolBinding]
    limits: Limits
    deadline: float
    """`time.monotonic()` by which the run must end."""
    started: float = field(default_factory=time.monotonic)
    fatal: ExecutionError | None = None
    tools_s: float = 0.0
    on_event: Callable[[dict[str, Any]], None] | None = None
    """Told of each call as it starts and ends (from the thread the call runs on)."""
    observe: Callable[[Tool, Any], None] | None = None
    """Given each successful call's tool and value (for observed output shapes)."""
    tracing: RunTrace | None = None
    """The run's trace, when its span is recording: then each call gets a span."""
    _batches: int = 0
    # (namespace, tool, arguments, started, finished, batch, error code, message,
    # the Tool or None): tuples on the hot path, records only when someone asks.
    _log: list[tuple[str, str, dict[str, Any], float, float, int, str | None, str | None, Tool | None]] = field(
        default_factory=list
    )

    @property
    def calls(self) -> list[ToolCallRecord]:
        """Every call so far, in the order they finished."""
        return [self._as_record(*entry) for entry in self._log]

    def _as_record(
        self,
        namespace: str,
        name: str,
        args: dict[str, Any],
        started: float,
        finished: float,
        batch: int,
        code: str | None,
        message: str | None,
        tool: Tool | None = None,
    ) -> ToolCallRecord:
        return ToolCallRecord(
            namespace=namespace,
            tool=name,
            server=tool.namespace if tool is not None else "",
            wire_name=tool.name if tool is not None else "",
            arguments=args,
            ok=code is None,
            error_code=code,
            error_message=message,
            batch=batch,
            started_s=round(started - self.started, 6),
            duration_s=round(finished - started, 6),
        )

    def _abort(self, error: ExecutionError) -> str:
        if self.fatal is None:
            self.fatal = error
        return json.dumps({"abort": self.fatal.message})

    def refuse(self, refused: FrameRefused) -> str:
        """Answer a frame that may not run: nothing of it runs, the run ends."""
        log_refusal(refused)
        return self._abort(refused.error)

    def _admit(self, batch: list[Call]) -> str | None:
        """The abort answer if this batch may not run; None if it may."""
        if self.fatal is not None:
            return self._abort(self.fatal)
        if len(batch) > self.limits.max_batch:
            return self._abort(
                BatchLimitExceeded(f"{len(batch)} tool calls in one batch; the limit is {self.limits.max_batch}")
            )
        if len(self._log) + len(batch) > self.limits.max_tool_calls:
            return self._abort(ToolCallLimitExceeded(f"more than {self.limits.max_tool_calls} tool calls in one run"))
        if self.deadline - time.monotonic() <= 0:
            return self._abort(RunTimeout(f"the run exceeded its {self.limits.timeout:g} s timeout"))
        self._batches += 1
        return None

    def try_inline(self, batch: list[Call]) -> str | None:
        """On the worker thread: carry out a batch that needs no event loop (one
        call to a sync tool, or a refusal); None if it needs the loop."""
        if len(batch) != 1:
            return None
        item = batch[0]
        binding = self._binding(item)
        if binding is not None and binding.tool.is_async:
            return None
        refused = self._admit(batch)
        if refused is not None:
            return refused
        t0 = time.monotonic()
        try:
            answer = "[" + self._call_sync(item, self._batches, binding) + "]"
        except RunEnded:
            # The tool (or its approval) waited on the loop past the run's end:
            # the run is over, not the tool at fault (nor worth a traceback).
            if time.monotonic() >= self.deadline:
                return self._abort(RunTimeout(f"the run exceeded its {self.limits.timeout:g} s timeout"))
            return RUN_CANCELLED
        finally:
            self.tools_s += time.monotonic() - t0
        return answer

    async def run_batch(self, batch: list[Call]) -> str:
        """On the event loop: carry out one batch concurrently; the answer the
        guest receives, as JSON."""
        refused = self._admit(batch)
        if refused is not None:
            return refused
        outcomes: list[str] = [""] * len(batch)
        t0 = time.monotonic()
        # asyncio's own timeout, not an anyio cancel scope: the batch runs in a
        # task of its own on an asyncio loop (`crossing`), and this costs a
        # third as much per crossing.
        try:
            async with asyncio.timeout(self.deadline - t0):
                if len(batch) == 1:
                    outcomes[0] = await self._call_async(batch[0], self._batches)
                else:
                    async with anyio.create_task_group() as tg:
                        for i, item in enumerate(batch):
                            tg.start_soon(self._store, outcomes, i, item, self._batches)
        except TimeoutError:
            self.tools_s += time.monotonic() - t0
            return self._abort(
                RunTimeout(f"the run exceeded its {self.limits.timeout:g} s timeout while waiting on tool calls")
            )
        self.tools_s += time.monotonic() - t0
        return "[" + ",".join(outcomes) + "]"

    async def _store(self, outcomes: list[str], i: int, item: Call, batch: int) -> None:
        outcomes[i] = await self._call_async(item, batch)

    def _binding(self, item: Call) -> ToolBinding | None:
        return self.bindings.get((item.ns, item.tool))

    def _prepare(self, item: Call, binding: ToolBinding | None) -> tuple[ToolBinding, dict[str, Any]]:
        """The binding and wire-named arguments of a call. Raises _Failure."""
        if binding is None:
            raise _Failure("unknown_tool", f"there is no tool {item.ns}.{item.tool}")
        py_args = item.args
        unexpected = [k for k in py_args if k not in binding.params]
        if unexpected:
            raise _Failure(
                "invalid_arguments",
                f"{binding.qualified_name}() got unexpected arguments: {', '.join(map(str, unexpected))}",
            )
        wire_args = {binding.params[k]: v for k, v in py_args.items()}
        problem = _validation_error(binding, wire_args)
        if problem:
            raise _Failure("invalid_arguments", f"invalid arguments for {binding.qualified_name}: {problem}")
        if self.on_event is not None:
            self.on_event(
                {
                    "type": "tool_call_started",
                    "namespace": binding.namespace,
                    "tool": binding.name,
                    "server": binding.tool.namespace,
                    "wire_name": binding.tool.name,
                    "arguments": wire_args,
                    "batch": self._batches,
                }
            )
        return binding, wire_args

    def _call_sync(self, item: Call, batch: int, known: ToolBinding | None) -> str:
        if self.tracing is not None:
            with self.tracing.tool_call():
                return self._call_sync_untraced(item, batch, known)
        return self._call_sync_untraced(item, batch, known)

    def _call_sync_untraced(self, item: Call, batch: int, known: ToolBinding | None) -> str:
        started = time.monotonic()
        binding: ToolBinding | None = None
        wire_args: dict[str, Any] = {}
        try:
            binding, wire_args = self._prepare(item, known)
            value = _call_sync_tool(binding.tool.fn, wire_args)
            if hasattr(value, "__await__"):  # a sync function that returned an awaitable
                try:  # cut at the run's deadline, as an async tool's call is (not a grace later)
                    value = await_on_loop(_await_until, value, self.deadline)
                except TimeoutError:
                    if time.monotonic() < self.deadline:
                        raise  # the tool's own timeout: its failure
                    raise RunEnded("the run's deadline passed while a tool's awaitable ran") from None
            return self._success(item, binding, wire_args, value, started, batch)
        except RunEnded:
            raise
        except Exception as exc:
            return self._failure(item, binding, wire_args, exc, started, batch)

    async def _call_async(self, item: Call, batch: int) -> str:
        if self.tracing is not None:
            with self.tracing.tool_call():
                return await self._call_async_untraced(item, batch)
        return await self._call_async_untraced(item, batch)

    async def _call_async_untraced(self, item: Call, batch: int) -> str:
        started = time.monotonic()
        binding: ToolBinding | None = None
        wire_args: dict[str, Any] = {}
        try:
            binding, wire_args = self._prepare(item, self._binding(item))
            if binding.tool.is_async:
                value = await binding.tool.fn(**wire_args)
            else:  # sync tools in a gather: each on a thread of its own
                value = await anyio.to_thread.run_sync(_call_sync_tool, binding.tool.fn, wire_args)
                if hasattr(value, "__await__"):
                    value = await value
            return self._success(item, binding, wire_args, value, started, batch)
        except Exception as exc:
            return self._failure(item, binding, wire_args, exc, started, batch)

    def _success(
        self,
        item: Call,
        binding: ToolBinding,
        wire_args: dict[str, Any],
        value: Any,
        started: float,
        batch: int,
    ) -> str:
        try:
            encoded = _encode(value)
        except (TypeError, ValueError) as exc:
            raise _Failure("tool_error", f"{binding.qualified_name} returned data that is not JSON: {exc}") from exc
        if len(encoded) > self.limits.max_tool_result_bytes:
            raise _Failure(
                "tool_result_too_large",
                f"{binding.qualified_name} returned {len(encoded)} bytes; "
                f"the limit is {self.limits.max_tool_result_bytes}",
            )
        self._record(binding.namespace, binding.name, wire_args, started, batch, tool=binding.tool)
        if self.observe is not None:
            self.observe(binding.tool, value)
        return '{"id":%d,"ok":true,"value":%s}' % (item.id, encoded)  # noqa: UP031 (hot path)

    def _failure(
        self,
        item: Call,
        binding: ToolBinding | None,
        wire_args: dict[str, Any],
        exc: Exception,
        started: float,
        batch: int,
    ) -> str:
        if isinstance(exc, (_Failure, ToolError)):
            code, message = exc.code, exc.message
        else:  # a tool's own bug becomes a ToolError for the model
            raised = exc.exited if isinstance(exc, _Exited) else exc
            logger.warning("tool %s raised", binding.qualified_name if binding else "?", exc_info=raised)
            code, message = "tool_error", f"{type(raised).__name__}: {raised}"
        namespace = binding.namespace if binding else item.ns
        name = binding.name if binding else item.tool
        tool = binding.tool if binding else None
        self._record(namespace, name, wire_args, started, batch, code=code, message=message, tool=tool)
        error = {"code": code, "message": message, "tool": f"{namespace}.{name}"}
        return json.dumps({"id": item.id, "ok": False, "error": error})

    def _record(
        self,
        namespace: str,
        name: str,
        args: dict[str, Any],
        started: float,
        batch: int,
        *,
        code: str | None = None,
        message: str | None = None,
        tool: Tool | None = None,
    ) -> None:
        entry = (namespace, name, args, started, time.monotonic(), batch, code, message, tool)
        self._log.append(entry)
        if self.tracing is not None:
            binding = self.bindings.get((namespace, name))
            wire = binding.tool.name if binding is not None else None
            self.tracing.tool_finished(namespace, name, wire, batch, entry[4] - started, code)
        if self.on_event is not None:
            self.on_event({"type": "tool_call_finished", **self._as_record(*entry).to_dict()})


async def _await_until(value: Any, deadline: float) -> Any:
    """`await value` on the loop, cut when the run's `deadline` (monotonic) passes."""
    async with asyncio.timeout(deadline - time.monotonic()):
        return await value
