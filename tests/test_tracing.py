"""OpenTelemetry spans of runs and tool calls, recorded by the SDK's in-memory
exporter: the tree a gather makes, and the caller's context taken from a
Python caller, an HTTP `traceparent` and an MCP request's `_meta`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client as MCPClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from codemode import AsyncClient, CodeMode, Sandbox, Tool, ToolError, build_mcp_server
from codemode._tracing import attached, extract_context, use_tracer_provider
from tests.test_client import serving

pytestmark = pytest.mark.anyio

_X = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        use_tracer_provider(None)
        provider.shutdown()


def by_name(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def make_tools(provider: trace.TracerProvider | None = None) -> list[Tool]:
    async def get_item(x: int) -> int:
        if x < 0:
            raise ToolError("no such item")
        if provider is not None:  # a span the tool makes itself, as the MCP SDK does for an upstream call
            with provider.get_tracer("tool").start_as_current_span("inner"):
                await anyio.sleep(0)
        return x * 10

    def add_one(x: int) -> int:
        return x + 1

    return [
        Tool(name="get-item", fn=get_item, input_schema=_X, namespace="shop"),
        Tool(name="add_one", fn=add_one, input_schema=_X, namespace="shop"),
    ]


async def test_a_gather_of_ten_calls_is_one_run_span_with_ten_tool_spans_under_the_callers_span(
    spans: InMemorySpanExporter,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    code = (
        "import asyncio\n"
        "got = await asyncio.gather(*[shop.get_item(x=i) for i in range(9)], shop.get_item(x=-1), "
        "return_exceptions=True)\n"
        "len(got)"
    )
    async with Sandbox() as sandbox:
        with provider.get_tracer("test").start_as_current_span("caller") as caller:
            result = await sandbox.run(code, tools=make_tools(provider))
    assert result.ok and result.value == 10

    (run,) = by_name(spans, "codemode.run")
    tools = by_name(spans, "codemode.tool")
    assert run.parent is not None and run.parent.span_id == caller.get_span_context().span_id
    assert result.trace_id == trace.format_trace_id(caller.get_span_context().trace_id)
    assert len(tools) == 10
    assert {t.parent.span_id for t in tools if t.parent} == {run.context.span_id}
    assert {t.context.trace_id for t in tools} == {run.context.trace_id}
    assert {t.name for t in tools} == {"codemode.tool shop.get_item"}
    assert {t.attributes["codemode.tool.wire_name"] for t in tools if t.attributes} == {"get-item"}
    assert len({t.attributes["codemode.tool.batch"] for t in tools if t.attributes}) == 1  # one crossing
    failed = [t for t in tools if t.attributes and t.attributes.get("codemode.tool.error_code")]
    assert len(failed) == 1 and failed[0].attributes and failed[0].attributes["error.type"] == "tool_error"
    assert failed[0].status.status_code == trace.StatusCode.ERROR
    assert run.attributes is not None
    assert run.attributes["codemode.run.outcome"] == "ok"
    assert run.attributes["codemode.run.tool_calls"] == 10
    assert run.attributes["codemode.run.tool_calls_failed"] == 1
    assert run.attributes["codemode.run.batches"] == 1
    assert run.attributes["codemode.code.bytes"] == len(code.encode())
    assert run.attributes["codemode.limits.max_tool_calls"] == sandbox.limits.max_tool_calls
    # Numbers and codes only: no code text or argument values in any span.
    for span in [run, *tools]:
        assert not any("get_item(" in str(v) or str(v) == "-1" for v in (span.attributes or {}).values())
    # A span a tool makes is a child of its tool-call span.
    inner = by_name(spans, "inner")
    assert len(inner) == 9
    assert {s.parent.span_id for s in inner if s.parent} <= {t.context.span_id for t in tools}


async def test_a_sync_tool_answered_on_the_worker_thread_has_its_span_too(spans: InMemorySpanExporter) -> None:
    async with Sandbox() as sandbox:
        result = await sandbox.run("await shop.add_one(x=1)\nawait shop.add_one(x='x')", tools=make_tools())
    assert result.error is not None and result.error.code == "invalid_arguments"
    (run,) = by_name(spans, "codemode.run")
    tools = by_name(spans, "codemode.tool")
    assert [t.parent.span_id for t in tools if t.parent] == [run.context.span_id] * 2
    assert [t.attributes.get("codemode.tool.error_code") for t in tools if t.attributes] == [None, "invalid_arguments"]
    assert run.attributes is not None and run.attributes["codemode.run.outcome"] == "invalid_arguments"
    assert run.status.status_code == trace.StatusCode.ERROR
    assert run.parent is None  # no caller span: a root


async def test_without_a_provider_a_run_carries_only_the_callers_trace_id() -> None:
    async with Sandbox() as sandbox:
        plain = await sandbox.run("1 + 1")
        with attached(extract_context({"traceparent": TRACEPARENT})):
            given = await sandbox.run("1 + 1")
    assert plain.trace_id is None and "trace_id" not in plain.to_dict()
    assert given.trace_id == TRACE_ID and given.to_dict()["trace_id"] == TRACE_ID


async def test_a_traceparent_header_parents_the_run_over_http(spans: InMemorySpanExporter) -> None:
    async with serving() as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            response = await http.post(
                "/v1/execute", json={"code": "await tools.quick(x=1)"}, headers={"traceparent": TRACEPARENT}
            )
            assert response.json()["trace_id"] == TRACE_ID
            started = await http.post(
                "/v1/runs", json={"code": "await tools.quick(x=2)"}, headers={"traceparent": TRACEPARENT}
            )
            run_id = started.json()["id"]
        async with AsyncClient(url) as client:
            events = [e async for e in client.events(run_id)]
            # The client passes on its caller's context.
            with trace.get_tracer("test", tracer_provider=_provider_of(spans)).start_as_current_span(
                "caller"
            ) as caller:
                traced = await client.execute("await tools.quick(x=3)")
    assert [e.data.get("trace_id") for e in events[:-1]] == [TRACE_ID, TRACE_ID]
    final = events[-1].run
    assert final is not None and final.result is not None and final.result.trace_id == TRACE_ID
    runs = by_name(spans, "codemode.run")
    assert len(runs) == 3
    for run in runs[:2]:
        assert run.parent is not None and run.parent.is_remote
        assert trace.format_span_id(run.parent.span_id) == PARENT_ID
    assert runs[2].parent is not None and runs[2].parent.span_id == caller.get_span_context().span_id
    assert traced.trace_id == trace.format_trace_id(caller.get_span_context().trace_id)
    assert len(by_name(spans, "codemode.tool")) == 3


def _provider_of(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def test_an_mcp_requests_meta_traceparent_parents_the_run(spans: InMemorySpanExporter) -> None:
    async with CodeMode(tools=make_tools()) as cm:
        async with MCPClient(build_mcp_server(cm)) as client:
            result = await client.call_tool(
                "execute_code", {"code": "await shop.add_one(x=41)"}, meta={"traceparent": TRACEPARENT}
            )
    assert result.structured_content is not None
    assert result.structured_content["value"] == 42 and result.structured_content["trace_id"] == TRACE_ID
    (run,) = by_name(spans, "codemode.run")
    assert trace.format_trace_id(run.context.trace_id) == TRACE_ID
    # Under the MCP SDK's server span, itself a child of the request's traceparent
    # (not recorded here: the SDK traces through the global provider).
    assert run.parent is not None and trace.format_span_id(run.parent.span_id) == PARENT_ID


def test_the_readme_span_tree_nests_the_mcp_sdks_spans_under_the_tool_spans() -> None:
    # A process of its own: the example sets the global tracer provider, which the
    # MCP SDK traces through, and which can be set only once per process.
    example = Path(__file__).resolve().parent.parent / "examples" / "trace_tree.py"
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("agent step")
    assert lines[1].startswith("└── codemode.run") and "outcome=ok tool_calls=6 batches=2" in lines[1]
    tools = [i for i, line in enumerate(lines) if "codemode.tool weather." in line]
    assert len(tools) == 6
    for i in tools:
        assert lines[i + 1].lstrip("│ ").startswith("└── MCP send tools/call")
    assert lines[-1].startswith("result: 'Lima', trace_id: ")
