"""codemode for agent frameworks: one `execute_code` tool (plus discovery tools
when the toolset is large) and the instructions that teach a model to use it.

    codemode.integrations.pydantic_ai     a pydantic-ai toolset      pip install 'codemode[pydantic-ai]'
    codemode.integrations.openai_agents   OpenAI Agents SDK tools    pip install 'codemode[openai-agents]'
    codemode.integrations.langchain       LangChain StructuredTools  pip install 'codemode[langchain]'

Every integration returns the same text to the model (`codemode.render_for_model`)
and is built from the framework-free pieces here, which also serve a framework
not listed: `instructions(cm)` for the system prompt, and `execute_for_model`,
`search_for_model`, `stubs_for_model` as the tools' bodies.

Importing this package imports no framework; each module above raises an
`ImportError` naming the extra to install when its framework is missing.
"""

from __future__ import annotations

from ._common import (
    execute_for_model,
    instructions,
    search_for_model,
    stubs_for_model,
    uses_discovery,
)

__all__ = [
    "execute_for_model",
    "instructions",
    "search_for_model",
    "stubs_for_model",
    "uses_discovery",
]
