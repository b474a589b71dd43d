"""Where the sandbox's tool calls are carried out on the host.

The guest sends a batch of calls as JSON; `Dispatcher.run_batch` resolves each
to its `Tool`, validates the arguments against the tool's input schema, runs the
batch concurrently in one anyio task group, and answers with one outcome per
call. Limits that end the run (call count, batch size, deadline) make it answer
`{"abort": ...}` and remember the typed error, which then wins over whatever
the guest reports.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import anyio
import jsonschema

from ._errors import (
    BatchLimitExceeded,
    ExecutionError,
    RunTimeout,
    ToolCallLimitExceeded,
    ToolError,
)
from ._limits import Limits
from ._result import ToolCallRecord
from ._stubgen import ToolBinding

__all__ = ["Dispatcher"]

logger = logging.getLogger("codemode")


@cache
def _validator_for(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _validation_error(binding: ToolBinding, arguments: Mapping[str, Any]) -> str | None:
    schema = binding.tool.input_schema
    try:
        validator = _validator_for(json.dumps(schema, sort_keys=True, default=repr))
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(arguments)))
    except (jsonschema.exceptions.SchemaError, TypeError, ValueError) as exc:
        # A server's broken schema must not stop its tool from being called.
        logger.warning("input schema of %s cannot be checked: %s", binding.qualified_name, exc)
        return None
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path)
    py_names = {wire: py for py, wire in binding.params.items()}
    if error.absolute_path and isinstance(error.absolute_path[0], str):
        head = py_names.get(error.absolute_path[0], error.absolute_path[0])
        path = ".".join([head, *(str(p) for p in list(error.absolute_path)[1:])])
    return f"{path}: {error.message}" if path else error.message


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
    calls: list[ToolCallRecord] = field(default_factory=list)
    fatal: ExecutionError | None = None
    tools_s: float = 0.0
    _batches: int = 0

    def _abort(self, error: ExecutionError) -> str:
        if self.fatal is None:
            self.fatal = error
        return json.dumps({"abort": self.fatal.message})

    async def run_batch(self, batch_json: str) -> str:
        """Carry out one batch; the answer the guest receives, as JSON."""
        if self.fatal is not None:
            return self._abort(self.fatal)
        batch = json.loads(batch_json)
        if len(batch) > self.limits.max_batch:
            return self._abort(BatchLimitExceeded(
                f"{len(batch)} tool calls in one batch; the limit is {self.limits.max_batch}"))
        if len(self.calls) + len(batch) > self.limits.max_tool_calls:
            return self._abort(ToolCallLimitExceeded(
                f"more than {self.limits.max_tool_calls} tool calls in one run"))
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return self._abort(RunTimeout(f"the run exceeded its {self.limits.timeout:g} s timeout"))
        self._batches += 1
        outcomes: list[str] = [""] * len(batch)
        t0 = time.monotonic()
        with anyio.move_on_after(remaining) as scope:
            if len(batch) == 1:
                outcomes[0] = await self._one(batch[0], self._batches)
            else:
                async with anyio.create_task_group() as tg:
                    for i, item in enumerate(batch):
                        tg.start_soon(self._store, outcomes, i, item, self._batches)
        self.tools_s += time.monotonic() - t0
        if scope.cancelled_caught:
            return self._abort(RunTimeout(
                f"the run exceeded its {self.limits.timeout:g} s timeout while waiting on tool calls"))
        return "[" + ",".join(outcomes) + "]"

    async def _store(self, outcomes: list[str], i: int, item: dict[str, Any], batch: int) -> None:
        outcomes[i] = await self._one(item, batch)

    async def _one(self, item: dict[str, Any], batch: int) -> str:
        call = item.get("call") or {}
        namespace, name = str(call.get("ns")), str(call.get("tool"))
        py_args = call.get("args") if isinstance(call.get("args"), dict) else {}
        started = time.monotonic()
        wire_args: dict[str, Any] = {}
        try:
            binding = self.bindings.get((namespace, name))
            if binding is None:
                raise _Failure("unknown_tool", f"there is no tool {namespace}.{name}")
            unexpected = [k for k in py_args if k not in binding.params]
            if unexpected:
                raise _Failure("invalid_arguments",
                               f"{binding.qualified_name}() got unexpected arguments: {', '.join(map(str, unexpected))}")
            wire_args = {binding.params[k]: v for k, v in py_args.items()}
            problem = _validation_error(binding, wire_args)
            if problem:
                raise _Failure("invalid_arguments", f"invalid arguments for {binding.qualified_name}: {problem}")
            value = binding.tool.fn(**wire_args)
            if hasattr(value, "__await__"):
                value = await value
            try:
                encoded = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise _Failure("tool_error", f"{binding.qualified_name} returned data that is not JSON: {exc}") from exc
            if len(encoded) > self.limits.max_tool_result_bytes:
                raise _Failure("tool_result_too_large",
                               f"{binding.qualified_name} returned {len(encoded)} bytes; "
                               f"the limit is {self.limits.max_tool_result_bytes}")
            self._record(namespace, name, wire_args, started, batch)
            return '{"id":%d,"ok":true,"value":%s}' % (item["id"], encoded)
        except _Failure as failure:
            code, message = failure.code, failure.message
        except ToolError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:  # a tool's own bug becomes a ToolError for the model
            logger.warning("tool %s.%s raised", namespace, name, exc_info=True)
            code, message = "tool_error", f"{type(exc).__name__}: {exc}"
        self._record(namespace, name, wire_args, started, batch, code=code, message=message)
        error = {"code": code, "message": message, "tool": f"{namespace}.{name}"}
        return json.dumps({"id": item["id"], "ok": False, "error": error})

    def _record(self, namespace: str, name: str, args: dict[str, Any], started: float, batch: int,
                *, code: str | None = None, message: str | None = None) -> None:
        now = time.monotonic()
        self.calls.append(ToolCallRecord(
            namespace=namespace, tool=name, arguments=args, ok=code is None,
            error_code=code, error_message=message, batch=batch,
            started_s=round(started - self.started, 6), duration_s=round(now - started, 6)))
