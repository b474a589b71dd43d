"""The code contract, on both backends: results, print, await, gather, errors."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from codemode import (
    CodeSyntaxError,
    CodeTooLarge,
    EmptyCode,
    InvalidArguments,
    InvalidEncoding,
    Limits,
    Sandbox,
    Tool,
    ToolCallFailed,
    ToolError,
    UncaughtException,
    UnknownTool,
)

pytestmark = pytest.mark.anyio


def make_tools(calls: list[dict[str, Any]] | None = None) -> list[Tool]:
    async def sleepy(ms: int, tag: str = "") -> dict[str, Any]:
        if calls is not None:
            calls.append({"ms": ms, "tag": tag})
        await anyio.sleep(ms / 1000)
        return {"slept_ms": ms, "tag": tag}

    async def add(a: int, b: int) -> int:
        return a + b

    async def fail(reason: str) -> None:
        raise ToolError(f"refused: {reason}")

    async def broken() -> None:
        raise KeyError("internal")

    return [
        Tool(
            name="sleepy",
            fn=sleepy,
            description="Sleep for `ms` milliseconds.",
            input_schema={
                "type": "object",
                "properties": {"ms": {"type": "integer", "minimum": 0}, "tag": {"type": "string"}},
                "required": ["ms"],
            },
        ),
        Tool(
            name="add",
            fn=add,
            input_schema={
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        ),
        Tool(
            name="fail",
            fn=fail,
            input_schema={"type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]},
        ),
        Tool(name="broken", fn=broken),
    ]


async def run(backend: str, code: str | bytes, *, tools: list[Tool] | None = None, **limits: Any):
    sandbox = Sandbox(backend=backend)  # type: ignore[arg-type]
    return await sandbox.run(
        code, tools=make_tools() if tools is None else tools, limits=Limits(**limits) if limits else None
    )


async def test_result_is_the_last_expression(backend: str) -> None:
    result = await run(backend, "x = 20\ny = x + 1\n{'answer': x + y, 'items': [1, 2.5, None, True]}")
    assert result.ok, result.error
    assert result.value == {"answer": 41, "items": [1, 2.5, None, True]}
    assert result.backend == backend


async def test_no_trailing_expression_gives_none(backend: str) -> None:
    result = await run(backend, "x = 1\nif x:\n    y = 2\n")
    assert result.ok and result.value is None


async def test_print_is_captured_apart_from_the_result(backend: str) -> None:
    result = await run(backend, "print('hello', 42)\nprint('second', end='!')\n'done'")
    assert result.value == "done"
    assert result.stdout == "hello 42\nsecond!"


async def test_top_level_await_calls_tools(backend: str) -> None:
    result = await run(backend, "s = await tools.add(a=2, b=3)\nawait tools.add(a=s, b=10)")
    assert result.value == 15
    assert [(c.tool, c.arguments, c.ok) for c in result.tool_calls] == [
        ("add", {"a": 2, "b": 3}, True),
        ("add", {"a": 5, "b": 10}, True),
    ]


async def test_asyncio_run_main_works(backend: str) -> None:
    code = (
        "import asyncio\n"
        "async def main():\n"
        "    a, b = await asyncio.gather(tools.add(a=1, b=2), tools.add(a=3, b=4))\n"
        "    return a * b\n"
        "asyncio.run(main())\n"
    )
    result = await run(backend, code)
    assert result.ok, result.error
    assert result.value == 21


async def test_gather_runs_tool_calls_concurrently(backend: str) -> None:
    calls: list[dict[str, Any]] = []
    code = (
        "import asyncio\n"
        "r = await asyncio.gather(*[tools.sleepy(ms=200, tag=str(i)) for i in range(10)])\n"
        "[x['tag'] for x in r]"
    )
    t0 = time.monotonic()
    result = await run(backend, code, tools=make_tools(calls))
    elapsed = time.monotonic() - t0
    assert result.value == [str(i) for i in range(10)]
    assert len(calls) == 10
    # Ten 200 ms calls one after another would take 2 s.
    assert elapsed < 1.0, elapsed
    assert len({c.batch for c in result.tool_calls}) == 1, "all ten calls crossed in one batch"


async def test_nested_gathers_cross_once_per_level(backend: str) -> None:
    code = (
        "import asyncio\n"
        "async def pair(i):\n"
        "    a = await tools.add(a=i, b=1)\n"
        "    return await tools.add(a=a, b=1)\n"
        "await asyncio.gather(*[pair(i) for i in range(5)])"
    )
    result = await run(backend, code)
    assert result.value == [2, 3, 4, 5, 6]
    assert sorted({c.batch for c in result.tool_calls}) == [1, 2]


async def test_tool_error_is_catchable(backend: str) -> None:
    code = (
        "try:\n    await tools.fail(reason='no')\nexcept ToolError as e:\n    caught = (str(e), e.code, e.tool)\ncaught"
    )
    result = await run(backend, code)
    assert result.value == ["refused: no", "tool_error", "tools.fail"]
    assert result.tool_calls[0].ok is False and result.tool_calls[0].error_code == "tool_error"


async def test_uncaught_tool_error_reports_the_tool_and_line(backend: str) -> None:
    result = await run(backend, "x = 1\nawait tools.fail(reason='bad')\n")
    assert isinstance(result.error, ToolCallFailed)
    assert result.error.code == "tool_error"
    assert result.error.tool == "tools.fail"
    assert [f.line for f in result.error.traceback] == [2]


async def test_a_tool_bug_becomes_a_tool_error(backend: str) -> None:
    result = await run(backend, "await tools.broken()")
    assert isinstance(result.error, ToolCallFailed)
    assert "KeyError" in result.error.message


async def test_traceback_has_the_models_line_numbers(backend: str) -> None:
    code = "def outer():\n    return inner(0)\n\ndef inner(d):\n    return 10 / d\n\nouter()\n"
    result = await run(backend, code)
    assert isinstance(result.error, UncaughtException)
    assert result.error.exc_type == "ZeroDivisionError"
    assert [(f.line, f.name, f.text) for f in result.error.traceback] == [
        (7, "<module>", "outer()"),
        (2, "outer", "return inner(0)"),
        (5, "inner", "return 10 / d"),
    ]


async def test_syntax_error_has_line_and_caret(backend: str) -> None:
    result = await run(backend, "x = 1\ny = (2 +\nz = 3\n")
    assert isinstance(result.error, CodeSyntaxError)
    assert result.error.code == "syntax_error"
    assert result.error.line in (2, 3)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("", EmptyCode),
        ("   \n\t\n", EmptyCode),
        (b"x = '\xff\xfe'", InvalidEncoding),
        ("x = 1\n" * 50_000, CodeTooLarge),
    ],
)
async def test_bad_code_is_refused_before_it_runs(backend: str, code: str | bytes, error: type) -> None:
    result = await run(backend, code)
    assert isinstance(result.error, error)
    assert result.tool_calls == []


@pytest.mark.parametrize("code", ["\ufeffx = 2\nx * 21", "\ufeffx = 2\nx * 21".encode()])
async def test_a_leading_byte_order_mark_is_accepted(backend: str, code: str | bytes) -> None:
    # Editors on Windows start UTF-8 files with one; CPython's file reader accepts it.
    result = await run(backend, code)
    assert result.error is None and result.value == 42


async def test_wrong_argument_types_are_refused_before_the_tool_runs(backend: str) -> None:
    calls: list[dict[str, Any]] = []
    code = "try:\n    await tools.sleepy(ms='soon')\nexcept ToolError as e:\n    r = e.code\nr"
    result = await run(backend, code, tools=make_tools(calls))
    assert result.value == "invalid_arguments"
    assert calls == []
    uncaught = await run(backend, "await tools.sleepy(ms=-5)")
    assert isinstance(uncaught.error, InvalidArguments)
    assert "ms" in uncaught.error.message


async def test_calling_a_tool_that_was_not_given_is_refused(backend: str) -> None:
    result = await run(backend, "await _call_tool('tools', 'rm_rf', {'path': '/'})")
    if backend == "restricted":
        # RestrictedPython refuses underscore names before the code runs.
        assert isinstance(result.error, CodeSyntaxError)
    else:
        assert isinstance(result.error, UnknownTool)
        assert result.error.code == "unknown_tool"
    assert [c.ok for c in result.tool_calls] in ([], [False])


async def test_non_json_results_come_back_as_data_or_safe_repr(backend: str) -> None:
    code = (
        "import datetime, decimal\n"
        "class Thing:\n"
        "    pass\n"
        "{'set': {3, 1, 2}, 'tuple': (1, 2), 'when': datetime.date(2026, 1, 2),"
        " 'money': decimal.Decimal('1.10'), 'thing': Thing(), 'nan': float('nan')}"
    )
    result = await run(backend, code)
    assert result.ok, result.error
    thing = result.value.pop("thing")
    assert thing.startswith("<") and "Thing object" in thing
    assert result.value == {"set": [1, 2, 3], "tuple": [1, 2], "when": "2026-01-02", "money": "1.10", "nan": "nan"}


async def test_ints_too_long_to_print_come_back_as_a_note_not_a_crash(backend: str) -> None:
    # Python refuses to print ints of more than 4300 digits; json.dumps raises for them.
    result = await run(backend, "{'big': 10**5000, 'small': 10**50, 'nan': float('inf')}")
    assert result.ok, result.error
    assert result.value == {"big": "<int of 16610 bits, too long to show>", "small": 10**50, "nan": "inf"}


async def test_forgotten_await_is_explained(backend: str) -> None:
    result = await run(backend, "tools.add(a=1, b=2)")
    assert isinstance(result.error, UncaughtException)
    assert "await" in result.error.message


async def test_large_stdout_and_result_are_truncated_with_a_marker(backend: str) -> None:
    result = await run(
        backend, "for i in range(10000):\n    print('x' * 100)\n'y' * 100000", max_stdout=1000, max_result=500
    )
    assert result.ok
    assert result.stdout_truncated and "truncated" in result.stdout and len(result.stdout) < 1200
    assert result.value_truncated and isinstance(result.value, str) and "truncated" in result.value


async def test_the_curated_stdlib_works_including_time_zones(backend: str) -> None:
    code = (
        "import zoneinfo, datetime, statistics, re, collections, decimal\n"
        "paris = zoneinfo.ZoneInfo('Europe/Paris')\n"
        "summer = datetime.datetime(2026, 7, 1, 12, tzinfo=paris).utcoffset().total_seconds() / 3600\n"
        "winter = datetime.datetime(2026, 1, 1, 12, tzinfo=paris).utcoffset().total_seconds() / 3600\n"
        "[summer, winter, statistics.median([3, 1, 2]), re.sub(r'\\d', '#', 'a1b2'),\n"
        " collections.Counter('aab').most_common(1)[0][0], str(decimal.Decimal('0.1') * 3)]"
    )
    result = await run(backend, code)
    assert result.ok, result.error
    assert result.value == [2.0, 1.0, 2, "a#b#", "a", "0.3"]


def wide_namespace(n: int, calls: list[dict[str, Any]]) -> list[Tool]:
    """`n` tools in one namespace, each echoing what it was sent."""

    async def echo(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return kwargs

    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "limit": {"type": "integer", "default": 10},
            "filter": {"type": "object", "properties": {"field": {"type": "string"}}, "required": ["field"]},
        },
        "required": ["id"],
    }
    return [Tool(name=f"get_{i}", namespace="api", fn=echo, input_schema=schema) for i in range(n)]


async def test_a_tool_of_a_large_namespace_behaves_as_its_stub_says(backend: str) -> None:
    calls: list[dict[str, Any]] = []
    tools = wide_namespace(300, calls)
    # RestrictedPython has no getattr() nor dir(): there the name is spelled out.
    wasm = backend == "wasm"
    dynamic = "getattr(api, 'get_' + str(299))" if wasm else "api.get_299"
    code = (
        "errors = []\n"
        "for bad in (lambda: api.get_7(), lambda: api.get_7(id='a', nope=1), lambda: api.get_7('a')):\n"
        "    try:\n"
        "        bad()\n"
        "    except TypeError as e:\n"
        "        errors.append('TypeError')\n"
        "try:\n"
        "    missing = api.no_such_tool\n"
        "except AttributeError:\n"
        "    errors.append('AttributeError')\n"
        "f = Filter(field='x')\n"
        "a = await api.get_7(id='a', filter=f)\n"
        f"b = await {dynamic}(id='b')\n"
        f"[errors, a, b, {'len(dir(api))' if wasm else 300}]"
    )
    result = await run(backend, code, tools=tools)
    assert result.ok, result.error
    # The defaults the stub shows are sent; a name spelled only at run time
    # works too (without its record: the host checks its arguments).
    assert result.value == [
        # (RestrictedPython's getattr guard gives None for a missing attribute.)
        ["TypeError"] * 3 + (["AttributeError"] if wasm else []),
        {"id": "a", "limit": 10, "filter": {"field": "x"}},
        {"id": "b"} if wasm else {"id": "b", "limit": 10},
        300,
    ]


async def test_a_run_is_sent_only_the_records_and_types_its_code_names() -> None:
    from codemode._sandbox.guest_tools import GuestTools, identifiers

    stubs = Sandbox(backend="restricted").stubs(wide_namespace(1000, []))
    fields = GuestTools(stubs).request_fields(identifiers("await api.get_7(id='a')"))
    import json

    bound = json.loads("{" + fields + "}")
    assert list(bound["namespaces"]["api"]["tools"]) == ["get_7"]
    assert bound["namespaces"]["api"]["tools"]["get_7"] == [["id", "limit", "filter"], ["id"], {"limit": 10}]
    assert len(bound["namespaces"]["api"]["names"].split()) == 1000
    assert bound["types"] == ""
    with_type = json.loads("{" + GuestTools(stubs).request_fields({"api", "Filter"}) + "}")
    assert with_type["types"].startswith("class Filter(TypedDict):")


async def test_events_of_sync_tools_reach_the_loop_in_order_before_the_run_ends(backend: str) -> None:
    import threading

    def double(x: int) -> int:
        return 2 * x

    tools = [Tool(name="double", fn=double, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}})]
    loop_thread = threading.get_ident()
    events: list[tuple[str, int, bool]] = []

    def on_event(event: dict[str, Any]) -> None:
        events.append((event["type"], event["arguments"]["x"], threading.get_ident() == loop_thread))

    sandbox = Sandbox(backend=backend)  # type: ignore[arg-type]
    result = await sandbox.run("[await tools.double(x=i) for i in range(3)]", tools=tools, on_event=on_event)
    assert result.value == [0, 2, 4]
    assert [e[:2] for e in events] == [
        (kind, i) for i in range(3) for kind in ("tool_call_started", "tool_call_finished")
    ]
    assert all(on_loop for _, _, on_loop in events)


async def test_a_sync_tool_that_returns_an_awaitable_is_awaited_on_the_loop(backend: str) -> None:
    import threading

    loop_thread = threading.get_ident()

    async def on_loop(x: int) -> list[Any]:
        return [x * 2, threading.get_ident() == loop_thread]

    # A lambda is not a coroutine function: it is called on the worker thread,
    # and what it returns is awaited on the event loop.
    tools = [Tool(name="lazy", fn=lambda x: on_loop(x), input_schema={"type": "object", "properties": {"x": {}}})]
    result = await Sandbox(backend=backend).run("await tools.lazy(x=21)", tools=tools)  # type: ignore[arg-type]
    assert result.value == [42, True], result.error
