"""What a model is told about code mode: one text, used by the Python API's
system prompt and tool definitions and by the MCP server's tool descriptions."""

from __future__ import annotations

import re

__all__ = [
    "CODE_CONTRACT",
    "DEFAULT_STUBS_BUDGET",
    "EXECUTE_DESCRIPTION",
    "EXECUTE_SUMMARY",
    "GET_STUBS_DESCRIPTION",
    "SEARCH_DESCRIPTION",
    "SEARCH_STUB_HITS",
    "approx_tokens",
    "code_contract",
    "inline_contract",
    "uses_content",
    "with_stubs",
]

DEFAULT_STUBS_BUDGET = 4_000
"""Estimated tokens up to which every tool's stubs go into the system prompt and
execute_code's description, so a model can write its program at once (2 model
round trips: execute, answer) instead of searching and reading stubs first."""
SEARCH_STUB_HITS = 3
"""How many of the best hits `search_tools(with_stubs=True)` brings the stubs of."""

# One line per point: a model reads no wrapping, and in JSON each wrap costs tokens.
_CONTRACT_HEAD = (
    "Write one Python 3 program for the task; it runs in a sandbox. Top-level `await` works. The value of its "
    "last expression comes back (keep it small: filter, count or summarize in code), and so does `print` output.\n"
    "- Call tools as their typed stubs show: `await server.tool(arg=...)`, keyword arguments only. Run independent "
    "calls concurrently: `await asyncio.gather(*(server.tool(x=i) for i in items))`.\n"
)
_CONTENT_RULE = (
    "- `-> Content` means no declared type: the value is the result's text as a str (a JSON object or array "
    "parsed), a dict per image, audio or resource, a list if several.\n"
)
_CONTRACT_TAIL = (
    "- A failed call raises `ToolError` (with `.code`), which the program can catch.\n"
    "- Modules: json, re, math, datetime, collections, itertools, functools, statistics, asyncio and a few more "
    "of the standard library; no files, network or processes.\n"
)


def code_contract(*, untyped: bool = True) -> str:
    """What a model must know to write a program: the contract, with the rule
    for `-> Content` only when `untyped` (some tool it may call lacks an output
    schema, or which tools it will read is not known yet)."""
    return _CONTRACT_HEAD + (_CONTENT_RULE if untyped else "") + _CONTRACT_TAIL


CODE_CONTRACT = code_contract()
"""The whole contract, for a model that may meet any tool."""

SEARCH_DESCRIPTION = (
    "Find tools by what they do. Returns one line per tool: `namespace.tool(signature) -> type  # summary`. "
    f"With with_stubs=true, also the typed stubs of the best {SEARCH_STUB_HITS} hits, so you can write the "
    "program at once; otherwise call get_tool_stubs for the few tools you will use. Then run execute_code once."
)

GET_STUBS_DESCRIPTION = (
    "Typed Python stubs (signatures, docstrings, input/output types) for the named tools, "
    'e.g. ["filesystem.read_text_file"]. Read them before writing code that calls those tools.'
)

EXECUTE_SUMMARY = "Run a Python program that composes tool calls, and return its final value."

EXECUTE_DESCRIPTION = EXECUTE_SUMMARY + "\n\n" + CODE_CONTRACT

_INLINE_INTRO = "Stubs of every tool:"

_UNTYPED = re.compile(r"^Content = Any$", re.M)


def uses_content(stubs: str) -> bool:
    """Whether `stubs` (from `render_stubs`) has a tool that returns `Content`."""
    return _UNTYPED.search(stubs) is not None


def with_stubs(text: str, stubs: str) -> str:
    """`text` followed by every tool's stubs, for a toolset within the budget."""
    return f"{text.rstrip()}\n\n{_INLINE_INTRO}\n```python\n{stubs.rstrip()}\n```\n"


def inline_contract(stubs: str) -> str:
    """The contract for exactly these tools, followed by their stubs: what a
    model needs when every stub fits the budget (no search, and the `Content`
    rule only if some tool returns `Content`)."""
    return with_stubs(code_contract(untyped=uses_content(stubs)), stubs)


def approx_tokens(text: str) -> int:
    """An upper estimate of `text`'s tokens without a tokenizer: UTF-8 bytes / 4
    (stub code runs at 4.0 to 4.8 characters per o200k token)."""
    return -(-len(text.encode("utf-8", "surrogatepass")) // 4)
