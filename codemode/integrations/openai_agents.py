"""codemode for the OpenAI Agents SDK: `FunctionTool`s and the instructions to add.

    from agents import Agent, Runner
    from codemode import CodeMode
    from codemode.integrations.openai_agents import codemode_instructions, codemode_tools

    async with CodeMode.from_config("mcp.json") as cm:
        agent = Agent(name="assistant", instructions=codemode_instructions(cm), tools=codemode_tools(cm))
        result = await Runner.run(agent, "Which city is warmest this week?")

`codemode_tools` is `[execute_code]`, plus `search_tools` and `get_tool_stubs`
when the toolset is too large to inline its stubs (then the instructions hold
an index instead). Each tool returns `codemode.render_for_model`'s text. Needs
`pip install 'codemode[openai-agents]'`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import jsonschema

try:
    from agents import FunctionTool
    from agents.tool_context import ToolContext
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "codemode.integrations.openai_agents needs the OpenAI Agents SDK: pip install 'codemode[openai-agents]'"
    ) from exc

from .._prompt import EXECUTE_SUMMARY, GET_STUBS_DESCRIPTION, SEARCH_DESCRIPTION
from ._common import execute_for_model, instructions, search_for_model, stubs_for_model, uses_discovery

if TYPE_CHECKING:
    from .._core import CodeMode

__all__ = ["codemode_instructions", "codemode_tools", "execute_code_tool"]

_CODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "description": "Python source; the value of its last expression is returned."}
    },
    "required": ["code"],
    "additionalProperties": False,
}
_SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "What the tool should do, in a few words, e.g. 'read a file'."},
        "limit": {"type": "integer", "description": "At most this many tools (1 to 50)."},
        "with_stubs": {
            "type": "boolean",
            "description": "Also return the typed stubs of the best hits, to skip get_tool_stubs.",
        },
    },
    "required": ["query", "limit", "with_stubs"],
    "additionalProperties": False,
}
_STUBS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "names": {"type": "array", "items": {"type": "string"}, "description": "Tool names as `namespace.tool`."}
    },
    "required": ["names"],
    "additionalProperties": False,
}


def codemode_instructions(cm: CodeMode, *, discovery: bool | None = None) -> str:
    """The agent's instructions: the code contract and the stubs (or an index).
    Pass the same `discovery` as to `codemode_tools`."""
    return instructions(cm, discovery=discovery)


def codemode_tools(cm: CodeMode, *, discovery: bool | None = None) -> list[FunctionTool]:
    """`execute_code`, preceded by `search_tools` and `get_tool_stubs` when
    discovery is on (by default: when the stubs are too long to inline)."""

    async def search(args: dict[str, Any]) -> str:
        return search_for_model(cm, args["query"], args["limit"], with_stubs=args["with_stubs"])

    async def stubs(args: dict[str, Any]) -> str:
        return stubs_for_model(cm, args["names"])

    tools = [execute_code_tool(cm)]
    if uses_discovery(cm, discovery):
        tools[:0] = [
            _tool("search_tools", SEARCH_DESCRIPTION, _SEARCH_SCHEMA, search),
            _tool("get_tool_stubs", GET_STUBS_DESCRIPTION, _STUBS_SCHEMA, stubs),
        ]
    return tools


def execute_code_tool(cm: CodeMode) -> FunctionTool:
    """The `execute_code` tool alone: runs the model's program on `cm` (open)."""

    async def execute(args: dict[str, Any]) -> str:
        return await execute_for_model(cm, args["code"])

    return _tool("execute_code", EXECUTE_SUMMARY, _CODE_SCHEMA, execute)


def _tool(
    name: str, description: str, schema: dict[str, Any], body: Callable[[dict[str, Any]], Awaitable[str]]
) -> FunctionTool:
    async def invoke(ctx: ToolContext[Any], args_json: str) -> str:
        # The SDK hands over the model's raw JSON: it is checked here, and a
        # bad call is answered as text the model can correct.
        try:
            args = json.loads(args_json)
            jsonschema.validate(args, schema)
        except ValueError:
            return f"Error [invalid_arguments]: the arguments of {name} are not JSON"
        except jsonschema.ValidationError as exc:
            return f"Error [invalid_arguments]: {name}: {exc.message}"
        return await body(args)

    return FunctionTool(
        name=name, description=description, params_json_schema=schema, on_invoke_tool=invoke, strict_json_schema=True
    )
