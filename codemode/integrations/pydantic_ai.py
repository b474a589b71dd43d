"""codemode as a pydantic-ai toolset: `execute_code`, with the tool stubs in the
agent's instructions (or, for a large toolset, an index of namespaces plus
`search_tools` and `get_tool_stubs`).

    from pydantic_ai import Agent
    from codemode import CodeMode
    from codemode.integrations.pydantic_ai import codemode_toolset

    async with CodeMode.from_config("mcp.json") as cm:
        agent = Agent("anthropic:claude-sonnet-4-5", toolsets=[codemode_toolset(cm)])
        result = await agent.run("Which city is warmest this week?")

Each tool returns `codemode.render_for_model`'s text. Needs
`pip install 'codemode[pydantic-ai]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from pydantic_ai import FunctionToolset
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "codemode.integrations.pydantic_ai needs pydantic-ai: pip install 'codemode[pydantic-ai]'"
    ) from exc

from ._common import execute_for_model, instructions, search_for_model, stubs_for_model, uses_discovery

if TYPE_CHECKING:
    from .._core import CodeMode

__all__ = ["codemode_toolset"]


def codemode_toolset(cm: CodeMode, *, discovery: bool | None = None, id: str = "codemode") -> FunctionToolset[Any]:
    """A toolset giving an agent code mode over `cm` (which must be open).

    `discovery` adds `search_tools` and `get_tool_stubs` and puts only an index
    in the instructions; by default, when all stubs together are too long to
    inline (the CodeMode's `stubs_budget`, as `system_prompt()`). The instructions are
    computed for each model request, so a server whose tools change is seen."""
    use_discovery = uses_discovery(cm, discovery)

    def codemode_instructions() -> str:
        return instructions(cm, discovery=use_discovery)

    async def execute_code(code: str) -> str:
        """Run a Python program that composes tool calls, and return its final value.

        Args:
            code: Python source; the value of its last expression is returned.
        """
        return await execute_for_model(cm, code)

    async def search_tools(query: str, limit: int = 10, with_stubs: bool = False) -> str:
        """Find tools by what they do: one line per tool, `namespace.tool(signature) -> type  # summary`.

        Args:
            query: What the tool should do, in a few words, e.g. 'read a file'.
            limit: At most this many tools (1 to 50).
            with_stubs: Also return the typed stubs of the best hits, to skip get_tool_stubs.
        """
        return search_for_model(cm, query, limit, with_stubs=with_stubs)

    async def get_tool_stubs(names: list[str]) -> str:
        """Typed Python stubs for the named tools; read them before writing code that calls those tools.

        Args:
            names: Tool names as `namespace.tool`, e.g. ["filesystem.read_text_file"].
        """
        return stubs_for_model(cm, names)

    tools: list[Any] = [search_tools, get_tool_stubs, execute_code] if use_discovery else [execute_code]
    return FunctionToolset(tools, id=id, instructions=codemode_instructions, docstring_format="google")
