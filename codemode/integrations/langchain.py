"""codemode for LangChain and LangGraph: `StructuredTool`s and the instructions
(system prompt) to give the model.

    from langchain.agents import create_agent
    from codemode import CodeMode
    from codemode.integrations.langchain import codemode_instructions, codemode_tools

    async with CodeMode.from_config("mcp.json") as cm:
        agent = create_agent("openai:gpt-5", tools=codemode_tools(cm), system_prompt=codemode_instructions(cm))
        result = await agent.ainvoke({"messages": [("user", "Which city is warmest this week?")]})

`codemode_tools` is `[execute_code]`, plus `search_tools` and `get_tool_stubs`
when the toolset is too large to inline its stubs (then the instructions hold
an index instead). The tools are async only (`ainvoke`); each returns
`codemode.render_for_model`'s text. Needs `pip install 'codemode[langchain]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

try:
    from langchain_core.tools import StructuredTool
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "codemode.integrations.langchain needs langchain-core: pip install 'codemode[langchain]'"
    ) from exc

from .._prompt import EXECUTE_SUMMARY, GET_STUBS_DESCRIPTION, SEARCH_DESCRIPTION
from ._common import execute_for_model, instructions, search_for_model, stubs_for_model, uses_discovery

if TYPE_CHECKING:
    from .._core import CodeMode

__all__ = ["codemode_instructions", "codemode_tools", "execute_code_tool"]


class _ExecuteArgs(BaseModel):
    code: str = Field(description="Python source; the value of its last expression is returned.")


class _SearchArgs(BaseModel):
    query: str = Field(description="What the tool should do, in a few words, e.g. 'read a file'.")
    limit: int = Field(default=10, ge=1, le=50, description="At most this many tools.")
    with_stubs: bool = Field(
        default=False, description="Also return the typed stubs of the best hits, to skip get_tool_stubs."
    )


class _StubsArgs(BaseModel):
    names: list[str] = Field(min_length=1, description="Tool names as `namespace.tool`.")


def codemode_instructions(cm: CodeMode, *, discovery: bool | None = None) -> str:
    """The system prompt: the code contract and the stubs (or an index).
    Pass the same `discovery` as to `codemode_tools`."""
    return instructions(cm, discovery=discovery)


def codemode_tools(cm: CodeMode, *, discovery: bool | None = None) -> list[StructuredTool]:
    """`execute_code`, preceded by `search_tools` and `get_tool_stubs` when
    discovery is on (by default: when the stubs are too long to inline)."""

    async def search_tools(query: str, limit: int = 10, with_stubs: bool = False) -> str:
        return search_for_model(cm, query, limit, with_stubs=with_stubs)

    async def get_tool_stubs(names: list[str]) -> str:
        return stubs_for_model(cm, names)

    tools = [execute_code_tool(cm)]
    if uses_discovery(cm, discovery):
        tools[:0] = [
            StructuredTool.from_function(
                coroutine=search_tools, name="search_tools", description=SEARCH_DESCRIPTION, args_schema=_SearchArgs
            ),
            StructuredTool.from_function(
                coroutine=get_tool_stubs,
                name="get_tool_stubs",
                description=GET_STUBS_DESCRIPTION,
                args_schema=_StubsArgs,
            ),
        ]
    return tools


def execute_code_tool(cm: CodeMode) -> StructuredTool:
    """The `execute_code` tool alone: runs the model's program on `cm` (open)."""

    async def execute_code(code: str) -> str:
        return await execute_for_model(cm, code)

    return StructuredTool.from_function(
        coroutine=execute_code, name="execute_code", description=EXECUTE_SUMMARY, args_schema=_ExecuteArgs
    )
