"""OpenTelemetry spans for runs and tool calls, through the OpenTelemetry API only.

    <caller's span>                      e.g. the HTTP request's, from its `traceparent`
    └── codemode.run                     code size, limits, backend, outcome, tool-call counts
        ├── codemode.tool weather.forecast   namespace, tool, wire name, batch, duration, error code
        │   └── tools/call forecast       the MCP SDK's own client span, and the server's below it
        └── ...

codemode depends on `opentelemetry-api` (it comes with `mcp`); whether spans go
anywhere is the application's choice: set a tracer provider (the SDK is the
optional extra `codemode[otel]`) and they are exported; without one, the run
span is a non-recording span that only carries the caller's context (so a run
still reports a trace id it was given), and tool calls skip tracing entirely:
one attribute check per call (`Dispatcher.tracing is None`).

Failure policy: tracing never changes a run's outcome. Span attributes are
our own numbers and codes; no argument, result or code text goes into a span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

if TYPE_CHECKING:
    from ._limits import Limits
    from ._result import RunResult

__all__ = [
    "RunTrace",
    "TraceContextMiddleware",
    "attached",
    "extract_context",
    "inject_context",
    "run_span",
    "trace_id_of",
    "use_tracer_provider",
    "with_trace_id",
]

_tracer = trace.get_tracer("codemode")


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Trace with `provider` instead of the global one (None: the global one
    again). For tests and embedders that keep codemode's spans apart."""
    global _tracer
    _tracer = provider.get_tracer("codemode") if provider is not None else trace.get_tracer("codemode")


def extract_context(carrier: Mapping[str, Any] | None) -> otel_context.Context | None:
    """The context a W3C `traceparent` (and `tracestate`) in `carrier` names (HTTP
    headers, an MCP request's `_meta`); None when it carries no valid one, so the
    caller keeps its ambient context. Never raises for a malformed carrier."""
    if not carrier:
        return None
    try:
        ctx = propagate.extract(carrier)
    except (ValueError, TypeError):
        return None
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextmanager
def attached(ctx: otel_context.Context | None) -> Iterator[None]:
    """Make `ctx` the current context for the block (nothing if None)."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def inject_context(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context (`traceparent`) to outgoing `headers`, if there is one."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


def trace_id_of(span: Span) -> str | None:
    ctx = span.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


@dataclass(eq=False)
class RunTrace:
    """One run's span, and the tool-call spans made under it (only when recording)."""

    span: Span
    context: otel_context.Context

    @contextmanager
    def tool_call(self) -> Iterator[Span]:
        """A tool call's span, current for the block (so the MCP SDK's own client
        span nests under it). The dispatcher names it in `tool_finished`."""
        span = _tracer.start_span("codemode.tool", context=self.context, kind=SpanKind.INTERNAL)
        token = otel_context.attach(trace.set_span_in_context(span, self.context))
        try:
            yield span
        finally:
            otel_context.detach(token)
            span.end()

    @staticmethod
    def tool_finished(
        namespace: str, name: str, wire_name: str | None, batch: int, duration_s: float, error_code: str | None
    ) -> None:
        """Name the current tool-call span and give it its outcome."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        span.update_name(f"codemode.tool {namespace}.{name}")
        span.set_attributes(
            {
                "codemode.tool.namespace": namespace,
                "codemode.tool.name": name,
                "codemode.tool.wire_name": wire_name or name,
                "codemode.tool.batch": batch,
                "codemode.tool.duration_s": duration_s,
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": wire_name or name,
            }
        )
        if error_code is not None:
            span.set_attributes({"codemode.tool.error_code": error_code, "error.type": error_code})
            span.set_status(StatusCode.ERROR)

    @property
    def recording(self) -> bool:
        return self.span.is_recording()

    def finish(self, result: RunResult) -> RunResult:
        """Give the span the run's outcome; the result with its trace id."""
        if self.span.is_recording():
            calls = result.tool_calls
            self.span.set_attributes(
                {
                    "codemode.run.outcome": result.error.code if result.error is not None else "ok",
                    "codemode.run.tool_calls": len(calls),
                    "codemode.run.tool_calls_failed": sum(1 for c in calls if not c.ok),
                    "codemode.run.batches": len({c.batch for c in calls}),
                    "codemode.run.duration_s": result.timings.total_s,
                }
            )
            if result.error is not None:
                self.span.set_attribute("error.type", result.error.code)
                self.span.set_status(StatusCode.ERROR, result.error.message[:200])
        trace_id = trace_id_of(self.span)
        return replace(result, trace_id=trace_id) if trace_id is not None else result


@contextmanager
def run_span(code: str | bytes, limits: Limits, backend: str) -> Iterator[RunTrace]:
    """The span of one run, a child of the current context; ended on exit
    (an exception escaping the block is recorded on it)."""
    span = _tracer.start_span("codemode.run", kind=SpanKind.INTERNAL)
    if span.is_recording():  # a provider is set and samples this trace: worth describing the run
        size = len(code) if isinstance(code, (bytes, bytearray)) else len(code.encode("utf-8", "replace"))
        span.set_attributes(
            {
                "codemode.backend": backend,
                "codemode.code.bytes": size,
                "codemode.limits.timeout_s": limits.timeout,
                "codemode.limits.memory_bytes": limits.memory,
                "codemode.limits.max_tool_calls": limits.max_tool_calls,
                "codemode.limits.max_batch": limits.max_batch,
            }
        )
    with trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        yield RunTrace(span=span, context=trace.set_span_in_context(span))


def with_trace_id(callback: Callable[[dict[str, Any]], None], trace_id: str) -> Callable[[dict[str, Any]], None]:
    """`callback`, given each event with the run's `trace_id` added."""

    def tagged(event: dict[str, Any]) -> None:
        callback({**event, "trace_id": trace_id})

    return tagged


_ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class TraceContextMiddleware:
    """ASGI: a request's W3C `traceparent`/`tracestate` headers become the current
    context while it is served, so a run it starts is a child of the caller's
    span. A missing or malformed header changes nothing."""

    def __init__(self, app: _ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        carrier = {}
        for key, value in scope.get("headers", ()):
            name = bytes(key).decode("latin-1").lower()
            if name in ("traceparent", "tracestate"):
                carrier[name] = bytes(value).decode("latin-1")
        with attached(extract_context(carrier) if "traceparent" in carrier else None):
            await self.app(scope, receive, send)
