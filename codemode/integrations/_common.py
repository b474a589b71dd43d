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
from .._prompt import CODE_CONTRACT
from .._render import render_for_model

if TYPE_CHECKING:
    from .._core import CodeMode

__all__ = [
    "DISCOVERY_STUB_CHARS",
    "execute_for_model",
    "instructions",
    "search_for_model",
    "stubs_for_model",
    "uses_discovery",
]

DISCOVERY_STUB_CHARS = 16_000
"""Stubs longer than this (about 4,000 tokens) are not put in the instructions:
the model gets an index of namespaces and the discovery tools instead."""

_DISCOVERY_SENTENCE = "Their typed stubs (signatures, docstrings, TypedDicts) come from `get_tool_stubs`."
_INLINE_SENTENCE = "Their typed stubs (signatures, docstrings, TypedDicts) are below: they are the whole API."


def uses_discovery(cm: CodeMode, discovery: bool | None = None) -> bool:
    """Whether the model gets `search_tools` and `get_tool_stubs`: `discovery`
    if given, else whether every stub together exceeds `DISCOVERY_STUB_CHARS`."""
    if discovery is not None:
        return discovery
    try:
        return len(cm.stubs()) > DISCOVERY_STUB_CHARS
    except CodemodeError:
        return True  # the catalog cannot be read now: the discovery tools will say why


def instructions(cm: CodeMode, *, discovery: bool | None = None) -> str:
    """The instructions for an agent that has codemode's tools: the code
    contract, then every tool's stubs, or (with discovery) a compact index of
    the namespaces. `cm` must be open; call it per run if the tools can change.

    Raises `CodemodeError` (e.g. `ToolDefinitionChanged`) if the catalog
    cannot be read."""
    if uses_discovery(cm, discovery):
        return cm.system_prompt()
    contract = CODE_CONTRACT.replace(_DISCOVERY_SENTENCE, _INLINE_SENTENCE)
    stubs = cm.stubs().strip()
    return f"{contract}\nCall the `execute_code` tool with the program.\n\n```python\n{stubs}\n```\n"


async def execute_for_model(cm: CodeMode, code: str, *, trace: bool = False) -> str:
    """Run `code` and return `render_for_model`'s text (never raises for the
    code, nor for a sandbox or catalog that fails: that is returned as text)."""
    try:
        result = await cm.execute(code)
    except CodemodeError as exc:
        return _error_text(exc)
    return render_for_model(result, trace=trace)


def search_for_model(cm: CodeMode, query: str, limit: int = 10) -> str:
    """One line per matching tool: `namespace.tool(signature) -> type  # summary`."""
    try:
        hits = cm.search_tools(query, limit=max(1, min(limit, 50)))
    except CodemodeError as exc:
        return _error_text(exc)
    if not hits:
        return "No tool matches. Try other words; the instructions list every namespace."
    return "\n".join(hit.line for hit in hits)


def stubs_for_model(cm: CodeMode, names: Sequence[str]) -> str:
    """The typed stubs of the named tools (`namespace.tool`); unknown names get
    close matches in the error text."""
    try:
        return cm.stubs(list(names))
    except CodemodeError as exc:
        return _error_text(exc)


def _error_text(exc: CodemodeError) -> str:
    return f"Error [{exc.code}]: {exc.message}"
