"""What a model is told about code mode: one text, used by the Python API's
system prompt and tool definitions and by the MCP server's tool descriptions."""

from __future__ import annotations

__all__ = [
    "CODE_CONTRACT",
    "DEFAULT_STUBS_BUDGET",
    "EXECUTE_DESCRIPTION",
    "EXECUTE_SUMMARY",
    "GET_STUBS_DESCRIPTION",
    "SEARCH_DESCRIPTION",
    "SEARCH_STUB_HITS",
    "approx_tokens",
    "with_stubs",
]

DEFAULT_STUBS_BUDGET = 4_000
"""Estimated tokens up to which every tool's stubs go into the system prompt and
execute_code's description, so a model can write its program at once (2 model
round trips: execute, answer) instead of searching and reading stubs first."""
SEARCH_STUB_HITS = 3
"""How many of the best hits `search_tools(with_stubs=True)` brings the stubs of."""

CODE_CONTRACT = """\
Write Python 3 to do the task in one step; it runs in a sandbox and only its final value comes back.
- Each MCP server is a namespace of async functions: `await server.tool(arg=...)`, keyword arguments only.
  Their typed stubs (signatures, docstrings, TypedDicts) say what each takes and returns.
- A tool returns its declared type. `-> Content` means it declares none: then the value is the result's
  text as a str, parsed into a dict or list when the whole text is a JSON object or array; an image, audio
  or resource comes as a dict, several blocks as a list.
- Top-level `await` works. The value of the last expression is the result (keep it small: filter,
  count or summarize in code instead of returning raw data). `print` output is returned separately.
- Run independent calls concurrently: `await asyncio.gather(*(server.tool(x=i) for i in items))`.
- A failed call raises `ToolError` (with `.code`); catch it to handle the failure.
- Available modules: json, re, math, datetime, collections, itertools, functools, statistics, asyncio and
  the rest of a small standard-library set. No files, network or processes: use the tools.
"""

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

_INLINE_INTRO = "The typed stubs of every tool (call execute_code directly; there is nothing to search):"


def with_stubs(text: str, stubs: str) -> str:
    """`text` followed by every tool's stubs, for a toolset within the budget."""
    return f"{text.rstrip()}\n\n{_INLINE_INTRO}\n```python\n{stubs.rstrip()}\n```\n"


def approx_tokens(text: str) -> int:
    """An upper estimate of `text`'s tokens without a tokenizer: UTF-8 bytes / 4
    (stub code runs at 4.0 to 4.8 characters per o200k token)."""
    return -(-len(text.encode("utf-8", "surrogatepass")) // 4)
