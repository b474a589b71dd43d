"""`render_for_model`: the one text every surface returns to a model, from real runs."""

from __future__ import annotations

import json

import pytest

from codemode import Sandbox, Tool, ToolError, render_for_model

pytestmark = pytest.mark.anyio


def _refuse(reason: str) -> str:
    raise ToolError(f"refused: {reason}")


TOOLS = [
    Tool(name="double", fn=lambda x: 2 * x, input_schema={"type": "object", "properties": {"x": {"type": "integer"}}}),
    Tool(name="refuse", fn=_refuse, input_schema={"type": "object", "properties": {"reason": {"type": "string"}}}),
]


@pytest.fixture(scope="module")
async def sandbox() -> Sandbox:
    sandbox = Sandbox(backend="wasm")
    await sandbox.load()
    return sandbox


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_a_value_is_compact_json_and_stdout_follows_a_separator(sandbox: Sandbox) -> None:
    result = await sandbox.run('print("two calls")\n{"a": await tools.double(x=21), "b": [1, 2]}', tools=TOOLS)
    text = render_for_model(result)
    value, stdout = text.split("\n\n--- stdout ---\n")
    assert json.loads(value) == {"a": 42, "b": [1, 2]} and stdout == "two calls"


async def test_a_string_value_is_returned_as_is_without_stdout_section(sandbox: Sandbox) -> None:
    assert render_for_model(await sandbox.run('"plain text"')) == "plain text"


async def test_an_uncaught_exception_names_code_type_message_and_the_users_line(sandbox: Sandbox) -> None:
    text = render_for_model(await sandbox.run("x = 1\ny = x / 0\ny"))
    assert text.splitlines() == [
        "Error [uncaught_exception]: ZeroDivisionError: division by zero",
        "  line 2, in <module>: y = x / 0",
    ]


async def test_an_uncaught_tool_error_names_the_call_and_the_users_line(sandbox: Sandbox) -> None:
    text = render_for_model(await sandbox.run('n = 1\nawait tools.refuse(reason="no")', tools=TOOLS))
    assert text.splitlines() == [
        "Error [tool_error]: ToolError: refused: no (calling tools.refuse)",
        '  line 2, in <module>: await tools.refuse(reason="no")',
    ]


async def test_trace_lists_each_call_only_when_asked(sandbox: Sandbox) -> None:
    result = await sandbox.run("await tools.double(x=1)", tools=TOOLS)
    assert "tool calls" not in render_for_model(result)
    trace = render_for_model(result, trace=True).split("\n\n")[1].splitlines()
    assert trace[0] == "--- tool calls (1) ---" and trace[1].startswith('[batch 1] tools.double({"x": 1}) ok at ')
