"""Print the OpenTelemetry span tree of one run of the demo servers (the README's picture).

    python examples/trace_tree.py

It sets the OpenTelemetry SDK's tracer provider (`pip install 'codemode[otel]'`)
with an in-memory exporter, runs a program that fans out into a gather under an
"agent step" span, and renders the finished spans as a tree. The MCP SDK's own
client spans appear under codemode's tool-call spans.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from codemode import CodeMode, parse_config
from codemode._demo import demo_config

PROGRAM = """\
import asyncio
cities = await weather.list_cities()
forecasts = await asyncio.gather(*[weather.forecast(city=c, days=3) for c in cities])
max(forecasts, key=lambda f: sum(f["highs_c"]))["city"]
"""

_SHOWN = {
    "codemode.code.bytes": "code_bytes",
    "codemode.run.outcome": "outcome",
    "codemode.run.tool_calls": "tool_calls",
    "codemode.run.batches": "batches",
    "codemode.tool.wire_name": "wire_name",
    "codemode.tool.batch": "batch",
    "codemode.tool.error_code": "error_code",
}


def render(spans: Sequence[ReadableSpan], root_name: str) -> str:
    """The tree under the span called `root_name`, one line per span, children by start time."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def show(span: ReadableSpan, prefix: str, branch: str) -> None:
        ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        attrs = span.attributes or {}
        shown = " ".join(f"{short}={attrs[key]}" for key, short in _SHOWN.items() if key in attrs)
        lines.append(f"{prefix}{branch}{span.name}  {ms:.1f} ms  {shown}".rstrip())
        below = sorted(children.get(span.context.span_id, []), key=lambda s: s.start_time or 0)
        inner = prefix + {"": "", "├── ": "│   ", "└── ": "    "}[branch]
        for i, child in enumerate(below):
            show(child, inner, "└── " if i == len(below) - 1 else "├── ")

    for span in spans:
        if span.name == root_name:
            show(span, "", "")
    return "\n".join(lines)


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    async with CodeMode(config=parse_config(demo_config(), source="<demo>")) as cm:
        with trace.get_tracer("agent").start_as_current_span("agent step"):
            result = await cm.execute(PROGRAM)
    print(render(exporter.get_finished_spans(), "agent step"))
    print(f"result: {result.value!r}, trace_id: {result.trace_id}")


if __name__ == "__main__":
    anyio.run(main)
