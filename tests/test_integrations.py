"""Agent frameworks drive codemode through their own offline test models, over a
real MCP server (the fixture server over stdio) and real wasm runs: each test
checks the tools and instructions the model was given, and that the model read
the program's final value (and nothing else) from the tool result."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from codemode import CodeMode, parse_config
from codemode.integrations import instructions
from tests.fixtures.helpers import stdio_entry

# Each framework is an optional extra (all in `.[dev]`, which .ci/run installs):
# without it, its tests skip and say which extra brings it.
needs_pydantic_ai = pytest.mark.skipif(
    importlib.util.find_spec("pydantic_ai") is None,
    reason="pydantic-ai is not installed (pip install 'codemode[pydantic-ai]')",
)
needs_openai_agents = pytest.mark.skipif(
    importlib.util.find_spec("agents") is None,
    reason="openai-agents is not installed (pip install 'codemode[openai-agents]')",
)
needs_langchain = pytest.mark.skipif(
    importlib.util.find_spec("langchain_core") is None,
    reason="langchain-core is not installed (pip install 'codemode[langchain]')",
)

pytestmark = pytest.mark.anyio

PROGRAM = 'w = await demo.weather(city="Oslo")\nf"{w[\'city\']}: {await demo.add(a=40, b=2)}"'
FINAL = "Oslo: 42"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def cm() -> AsyncIterator[CodeMode]:
    async with CodeMode(config=parse_config({"mcpServers": {"demo": stdio_entry()}})) as cm:
        assert cm.failures == {}
        yield cm


async def test_small_toolsets_get_every_stub_in_the_instructions_large_ones_an_index(cm: CodeMode) -> None:
    assert cm.inline_stubs() is not None  # the fixture server's stubs fit the default budget
    inline = instructions(cm)
    assert inline == cm.system_prompt()
    assert "async def weather(" in inline and "get_tool_stubs" not in inline
    index = instructions(cm, discovery=True)
    assert "async def weather(" not in index and "search_tools" in index and "- demo (" in index
    unbudgeted = CodeMode(stubs_budget=0)  # nothing inline: discovery by default, unless asked otherwise
    assert instructions(unbudgeted, discovery=False).count("```python") == 1


# --- pydantic-ai ----------------------------------------------------------------------------------


@needs_pydantic_ai
async def test_pydantic_ai_agent_runs_a_program_and_the_model_reads_its_value(cm: CodeMode) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from codemode.integrations.pydantic_ai import codemode_toolset

    seen: list[AgentInfo] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(info)
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if not returns:
            return ModelResponse(parts=[ToolCallPart("execute_code", {"code": PROGRAM})])
        return ModelResponse(parts=[TextPart(f"the model read: {returns[0].content}")])

    agent = Agent(FunctionModel(model), toolsets=[codemode_toolset(cm)])
    result = await agent.run("What is the weather in Oslo, and 40 + 2?")
    assert result.output == f"the model read: {FINAL}"
    assert [t.name for t in seen[0].function_tools] == ["execute_code"]
    assert seen[0].instructions is not None and "async def weather(" in seen[0].instructions


@needs_pydantic_ai
async def test_pydantic_ai_discovery_finds_reads_then_runs(cm: CodeMode) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from codemode.integrations.pydantic_ai import codemode_toolset

    steps = [
        ToolCallPart("search_tools", {"query": "weather in a city", "limit": 2}),
        ToolCallPart("get_tool_stubs", {"names": ["demo.weather", "demo.add"]}),
        ToolCallPart("execute_code", {"code": PROGRAM}),
    ]
    read: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        read.extend(str(p.content) for p in messages[-1].parts if isinstance(p, ToolReturnPart))
        if steps:
            return ModelResponse(parts=[steps.pop(0)])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(model), toolsets=[codemode_toolset(cm, discovery=True)])
    assert (await agent.run("go")).output == "done"
    found, stubs, value = read
    assert found.splitlines()[0].startswith("demo.weather(")
    assert "async def weather(" in stubs and "async def add(" in stubs
    assert value == FINAL


# --- OpenAI Agents SDK ----------------------------------------------------------------------------


def _openai_fake_model(code: str, seen: list[tuple[str | None, Any, list[Any]]]) -> Any:
    """The Agents SDK ships no offline model: this one calls `execute_code` with
    `code` once, then answers with the tool output it was sent."""
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

    class FakeModel(Model):
        async def get_response(
            self, system_instructions: str | None, input: Any, model_settings: Any, tools: list[Any], *a: Any, **k: Any
        ) -> ModelResponse:
            seen.append((system_instructions, input, tools))
            outputs = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
            if not outputs:
                call = ResponseFunctionToolCall(
                    type="function_call", call_id="call_1", name="execute_code", arguments=json.dumps({"code": code})
                )
                return ModelResponse(output=[call], usage=Usage(), response_id=None)
            text = ResponseOutputText(
                type="output_text", text=f"the model read: {outputs[-1]['output']}", annotations=[]
            )
            message = ResponseOutputMessage(
                id="msg_1", type="message", role="assistant", status="completed", content=[text]
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    return FakeModel()


@needs_openai_agents
async def test_openai_agents_runner_runs_a_program_and_the_model_reads_its_value(cm: CodeMode) -> None:
    from agents import Agent, RunConfig, Runner

    from codemode.integrations.openai_agents import codemode_instructions, codemode_tools

    seen: list[tuple[str | None, Any, list[Any]]] = []
    agent = Agent(
        name="assistant",
        instructions=codemode_instructions(cm),
        tools=codemode_tools(cm),  # type: ignore[arg-type]
        model=_openai_fake_model(PROGRAM, seen),
    )
    result = await Runner.run(
        agent, "What is the weather in Oslo, and 40 + 2?", run_config=RunConfig(tracing_disabled=True)
    )
    assert result.final_output == f"the model read: {FINAL}"
    system, _, tools = seen[0]
    assert [t.name for t in tools] == ["execute_code"]
    assert system is not None and "async def weather(" in system


@needs_openai_agents
async def test_openai_agents_tool_answers_bad_arguments_as_text(cm: CodeMode) -> None:
    from agents import RunContextWrapper
    from agents.tool_context import ToolContext

    from codemode.integrations.openai_agents import execute_code_tool

    tool = execute_code_tool(cm)
    ctx = ToolContext(context=None, tool_name="execute_code", tool_call_id="c", tool_arguments="{}")
    assert isinstance(ctx, RunContextWrapper)
    assert (
        await tool.on_invoke_tool(ctx, "{not json")
        == "Error [invalid_arguments]: the arguments of execute_code are not JSON"
    )
    assert (await tool.on_invoke_tool(ctx, '{"code": 5}')).startswith(
        "Error [invalid_arguments]: execute_code: 5 is not"
    )
    assert await tool.on_invoke_tool(ctx, json.dumps({"code": "await demo.add(a=1, b=2)"})) == "3"


# --- LangChain ------------------------------------------------------------------------------------


@needs_langchain
async def test_langchain_tool_call_loop_runs_a_program_and_the_model_reads_its_value(cm: CodeMode) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    from codemode.integrations.langchain import codemode_instructions, codemode_tools

    seen: list[list[BaseMessage]] = []

    class Model(GenericFakeChatModel):
        """LangChain's fake chat model, answering from what it was sent."""

        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
            seen.append(list(messages))
            if isinstance(messages[-1], ToolMessage):
                reply = AIMessage(content=f"the model read: {messages[-1].content}")
            else:
                reply = AIMessage(
                    content="", tool_calls=[{"name": "execute_code", "args": {"code": PROGRAM}, "id": "c1"}]
                )
            return ChatResult(generations=[ChatGeneration(message=reply)])

    model = Model(messages=iter(()))
    tools = {tool.name: tool for tool in codemode_tools(cm)}
    assert list(tools) == ["execute_code"]
    messages: list[BaseMessage] = [SystemMessage(codemode_instructions(cm)), HumanMessage("Oslo, and 40 + 2?")]
    # The loop LangGraph's ToolNode runs: each tool call goes to `tool.ainvoke`, its ToolMessage back to the model.
    while True:
        reply = await model.ainvoke(messages)
        messages.append(reply)
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            break
        for call in reply.tool_calls:
            messages.append(await tools[call["name"]].ainvoke({**call, "type": "tool_call"}))
    assert messages[-1].content == f"the model read: {FINAL}"
    assert isinstance(seen[-1][-1], ToolMessage) and seen[-1][-1].content == FINAL
    assert "async def weather(" in str(seen[0][0].content)


# --- missing extras -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("pydantic_ai", "pydantic_ai", "pydantic-ai"),
        ("openai_agents", "agents", "openai-agents"),
        ("langchain", "langchain_core", "langchain"),
    ],
)
def test_a_missing_framework_names_the_extra_that_installs_it(module: str, framework: str, extra: str) -> None:
    # The framework is made unimportable in a child interpreter (sys.modules[name] = None).
    script = f"import sys; sys.modules[{framework!r}] = None\nimport codemode.integrations.{module}"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"ImportError: codemode.integrations.{module} needs" in proc.stderr
    assert f"pip install 'codemode[{extra}]'" in proc.stderr


def _names(tools: Sequence[Any]) -> list[str]:
    return [t.name for t in tools]


def test_the_integrations_package_imports_no_framework() -> None:
    script = "import sys, codemode.integrations\nprint(sorted(m for m in ('pydantic_ai', 'agents', 'langchain_core') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


@needs_openai_agents
@needs_langchain
async def test_openai_agents_and_langchain_discovery_tools_answer_through_the_framework(cm: CodeMode) -> None:
    from agents.tool_context import ToolContext

    from codemode.integrations import langchain, openai_agents

    agents_tools = openai_agents.codemode_tools(cm, discovery=True)
    lc_tools = langchain.codemode_tools(cm, discovery=True)
    assert _names(agents_tools) == _names(lc_tools) == ["search_tools", "get_tool_stubs", "execute_code"]
    ctx = ToolContext(context=None, tool_name="search_tools", tool_call_id="c", tool_arguments="{}")
    search = {"query": "weather in a city", "limit": 1, "with_stubs": False}
    found = await agents_tools[0].on_invoke_tool(ctx, json.dumps(search))
    assert found.startswith("demo.weather(") and "\n" not in found
    with_stubs = await lc_tools[0].ainvoke({"query": "weather in a city", "limit": 1, "with_stubs": True})
    assert with_stubs.startswith("demo.weather(") and "async def weather(" in with_stubs
    stubs = await lc_tools[1].ainvoke({"names": ["demo.wether"]})
    assert stubs.startswith("Error [tool_not_found]:") and "demo.weather" in stubs
