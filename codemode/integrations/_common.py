"""What every framework integration shares: the instructions, and the bodies of
the three tools as functions of a `CodeMode` that return text for a model.

Failure policy: nothing here raises for what a model sends. A run's failure is
rendered by `render_for_model`; a failure outside the code (no sandbox, a tool
definition changed since it was pinned, an unknown tool name) becomes
`Error [code]: message` text, so the agent can read it and the framework's run
goes on.

Trust: the stubs come from the upstream servers' tool definitions. The stub
generator escapes them (no text can leave a docstring), and pinning refuses a
definition that changed since it was first seen; their words still reach the
model, as any tool description does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._errors import CodemodeError
from .._prompt import CODE_CONTRACT, inline_contract
from .._render import render_for_model

if TYPE_CHECKING:
    from .._core import CodeMode

__all__ = [
    "execute_for_model",
    "instructions",
    "search_for_model",
    "stubs_for_model",
    "uses_discovery",
]


def uses_discovery(cm: CodeMode, discovery: bool | None = None) -> bool:
    """Whether the model gets `search_tools` and `get_tool_stubs`: `discovery`
    if given, else whether every stub together exceeds the CodeMode's
    `stubs_budget` (estimated tokens; `$CODEMODE_STUBS_BUDGET`, default 4,000)."""
    if discovery is not None:
        return discovery
    try:
        return cm.inline_stubs() is None
    except CodemodeError:
        return True  # the catalog cannot be read now: the discovery tools will say why


def instructions(cm: CodeMode, *, discovery: bool | None = None) -> str:
    """The instructions for an agent that has codemode's tools: the code
    contract, then every tool's stubs, or (with discovery) a compact index of
    the namespaces; by default as `cm.system_prompt()` decides. `cm` must be
    open; call it per run if the tools can change.

    Raises `CodemodeError` (e.g. `ToolDefinitionChanged`) if the catalog
    cannot be read."""
    inline = cm.inline_stubs()
    if uses_discovery(cm, discovery) != (inline is None):  # asked for the other form than the budget gives
        return _index(cm) if discovery else inline_contract(cm.stubs())
    return cm.system_prompt()


def _index(cm: CodeMode) -> str:
    lines = [CODE_CONTRACT, "Available namespaces (use search_tools / get_tool_stubs for details):"]
    for server in cm.list_servers():
        names = ", ".join(server.tools[:12]) + (", …" if len(server.tools) > 12 else "")
        lines.append(f"- {server.namespace} ({server.tool_count} tools): {names}")
    return "\n".join(lines)


async def execute_for_model(cm: CodeMode, code: str, *, trace: bool = False) -> str:
    """Run `code` and return `render_for_model`'s text (never raises for the
    code, nor for a sandbox or catalog that fails: that is returned as text)."""
    try:
        result = await cm.execute(code)
    except CodemodeError as exc:
        return _error_text(exc)
    return render_for_model(result, trace=trace)


def search_for_model(cm: CodeMode, query: str, limit: int = 10, *, with_stubs: bool = False) -> str:
    """One line per matching tool: `namespace.tool(signature) -> type  # summary`;
    with `with_stubs`, then the typed stubs of the best few hits."""
    try:
        hits = cm.search_tools(query, limit=max(1, min(limit, 50)), with_stubs=with_stubs)
    except CodemodeError as exc:
        return _error_text(exc)
    if not hits:
        return "No tool matches. Try other words; the instructions list every namespace."
    lines = "\n".join(hit.line for hit in hits)
    return f"{lines}\n\n```python\n{hits.stubs.rstrip()}\n```" if hits.stubs else lines


def stubs_for_model(cm: CodeMode, names: Sequence[str]) -> str:
    """The typed stubs of the named tools (`namespace.tool`); unknown names get
    close matches in the error text."""
    try:
        return cm.stubs(list(names))
    except CodemodeError as exc:
        return _error_text(exc)


def _error_text(exc: CodemodeError) -> str:
    return f"Error [{exc.code}]: {exc.message}"
