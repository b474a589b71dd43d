"""The two scripted agents, both executed for real against the MCP servers.

- `run_direct`: the classic loop. The request carries the system prompt, every
  connected tool's definition (`namespace__tool`, description, input schema:
  what a multi-server MCP client hands a model API) and the task; each turn
  the model emits the tool calls it can make now (all independent ones at
  once, as the APIs allow), the hub's session runs them against the real
  server, and the result texts are appended as a client forwards them (the
  text of the content blocks, as the server sent it). The whole history is sent again next turn. With
  `naive`, the task's naive script runs with one call per turn.
- `run_code_mode`: the model sees only codemode's tools, as codemode's
  own MCP server (`build_server`) lists them, reached through the SDK's
  in-memory client. When every stub fits the budget, execute_code's
  description holds them, it is the only tool, and the model calls it at
  once (2 round trips: execute, answer); otherwise it calls search_tools with `with_stubs`,
  get_tool_stubs only for a tool the search did not bring, then execute_code.
  Where a stub says `Content` (no output schema), a probe program runs first,
  so the program that parses the tool's text is written after seeing it.

No model is called: the scripts in `_workloads` are what a competent model
would emit, and every argument and answer is derived from real results.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import Client
from mcp.types import TextContent

from benchmarks._tokens import Conversation
from benchmarks._workloads import Task, Workspace
from codemode import CodeMode, Hub, RunResult, Sandbox, Tool, ToolError
from codemode import build_mcp_server as build_server
from codemode._serve.mcp_server import server_instructions
from codemode._upstream.results import to_value

__all__ = ["SYSTEM_PROMPT", "AgentRun", "BenchmarkError", "run_code_mode", "run_direct"]

SYSTEM_PROMPT = (
    "You are an agent that completes the user's task with the tools provided. Call tools as needed; "
    "when done, reply with the final answer only, as the JSON the task asks for."
)


class BenchmarkError(Exception):
    """A run that cannot count: a tool failed, or a script did what a model could not."""


@dataclass
class AgentRun:
    answer: Any
    conversation: Conversation
    upstream_calls: int
    """MCP tool calls that reached the upstream servers."""
    call_durations_s: list[float] = field(default_factory=list)
    """Measured duration of every upstream tool call."""
    sandbox: dict[str, Any] | None = None
    """Code mode only: the sandbox run's own timings."""
    codemode_calls: int = 0
    """Code mode only: calls of codemode's own tools (search, stubs, execute)."""
    tools_offered: int = 0
    """Code mode only: how many tools codemode's MCP server listed."""

    @property
    def measured_s(self) -> float:
        return sum(turn.tool_s for turn in self.conversation.turns)


async def forwarded_call(hub: Hub, namespace: str, tool: str, arguments: dict[str, Any]) -> tuple[Any, str]:
    """Call a tool over the hub's open session; return its value (as code
    mode's `results` maps it, for the script) and the text an MCP client
    forwards to the model: the text of its content blocks, as the server sent
    them (structured content is not forwarded where text says the same).

    Raises `ToolError` if the call fails or the tool reports an error."""
    upstream = hub._upstreams[namespace]  # the benchmark reads the raw result, which the hub does not expose
    client = await upstream._ready_client()
    result = await upstream._request(f"{namespace}.{tool}", client, lambda: client.call_tool(tool, arguments))
    value = to_value(result)
    if upstream._unwrap.get(tool) and isinstance(value, dict) and "result" in value:
        value = value["result"]  # as the hub unwraps a non-object result
    text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
    if not text and value is not None:
        text = json.dumps(value, ensure_ascii=False)
    return value, text


class _DirectCalls:
    def __init__(self, hub: Hub, conversation: Conversation, *, sequential: bool = False) -> None:
        self.hub, self.conversation, self.sequential = hub, conversation, sequential
        self.durations: list[float] = []

    async def call(self, namespace: str, tool: str, arguments: dict[str, Any]) -> Any:
        return (await self._turn([(namespace, tool, arguments)]))[0]

    async def parallel(self, calls: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        if self.sequential:  # one call per turn
            return [(await self._turn([c]))[0] for c in calls]
        return await self._turn(calls)

    async def _turn(self, calls: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        blocks: list[dict[str, Any]] = [
            {"type": "tool_use", "id": self.conversation.tool_use_id(), "name": f"{ns}__{tool}", "input": args}
            for ns, tool, args in calls
        ]
        self.conversation.model_turn(blocks)
        values: list[Any] = [None] * len(calls)
        texts: list[str] = [""] * len(calls)
        failures: list[str] = []

        async def one(i: int, ns: str, tool: str, args: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            try:
                values[i], texts[i] = await forwarded_call(self.hub, ns, tool, args)
            except ToolError as exc:
                failures.append(f"{ns}.{tool}: {exc.message}")
            self.durations.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i, (ns, tool, args) in enumerate(calls):
                tg.start_soon(one, i, ns, tool, args)
        elapsed = time.perf_counter() - t0
        if failures:
            raise BenchmarkError("direct: " + "; ".join(failures))
        self.conversation.tool_results([(b["id"], text, False) for b, text in zip(blocks, texts, strict=True)], elapsed)
        return values


def direct_tool_definitions(tools: list[Tool]) -> list[dict[str, Any]]:
    return [
        {"name": f"{t.namespace}__{t.name}", "description": t.description, "input_schema": dict(t.input_schema)}
        for t in tools
    ]


async def run_direct(task: Task, ws: Workspace, hub: Hub, tools: list[Tool], *, naive: bool = False) -> AgentRun:
    conversation = Conversation(system=SYSTEM_PROMPT, tools=direct_tool_definitions(tools))
    conversation.user(task.render(task.prompt, ws))
    calls = _DirectCalls(hub, conversation, sequential=naive)
    script = (task.naive or task.direct) if naive else task.direct
    answer = await script(calls, ws)
    conversation.model_turn([{"type": "text", "text": json.dumps(answer, ensure_ascii=False)}])
    return AgentRun(
        answer=answer, conversation=conversation, upstream_calls=len(calls.durations), call_durations_s=calls.durations
    )


class _RecordingCodeMode(CodeMode):
    """Keeps every `RunResult` (a probe, then the program), for the sandbox's own timings and call log."""

    runs: list[RunResult]

    async def execute(self, code: str | bytes, **kwargs: Any) -> RunResult:
        result = await super().execute(code, **kwargs)
        self.runs.append(result)
        return result


async def run_code_mode(task: Task, ws: Workspace, tools: list[Tool], sandbox: Sandbox) -> AgentRun:
    cm = _RecordingCodeMode(tools=tools, sandbox=sandbox)
    cm.runs = []
    async with cm, Client(build_server(cm)) as client:
        listed = (await client.list_tools()).tools
        definitions = [
            {"name": t.name, "description": t.description or "", "input_schema": t.input_schema} for t in listed
        ]
        # An MCP client puts the server's instructions in the system prompt.
        system = SYSTEM_PROMPT + "\n\n" + server_instructions(cm)
        conversation = Conversation(system=system, tools=definitions)
        conversation.user(task.render(task.prompt, ws))
        execute = ("execute_code", {"code": task.render(task.program, ws)})
        inline = cm.inline_stubs() is not None
        steps: list[tuple[str, dict[str, Any]]] = (
            [execute] if inline else [("search_tools", {"query": task.search, "with_stubs": True}), execute]
        )
        if task.probe is not None:  # a stub says `Content`: look at what the tool returns before parsing it
            steps.insert(-1, ("execute_code", {"code": task.render(task.probe, ws)}))
        texts: dict[str, str] = {}
        while steps:
            name, arguments = steps.pop(0)
            tool_use_id = conversation.tool_use_id()
            conversation.model_turn([{"type": "tool_use", "id": tool_use_id, "name": name, "input": arguments}])
            t0 = time.perf_counter()
            result = await client.call_tool(name, arguments)
            elapsed = time.perf_counter() - t0
            text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
            if result.is_error:
                raise BenchmarkError(f"{task.name}: code mode {name} failed: {text[:2000]}")
            conversation.tool_results([(tool_use_id, text, False)], elapsed)
            texts[name] = text
            if name == "search_tools":
                visible = texts["search_tools"] + "\n" + system
                unseen = [s for s in task.stubs if s.split(".", 1)[1] not in visible]
                if unseen:
                    raise BenchmarkError(
                        f"{task.name}: the script uses {unseen}, which neither the "
                        "search results nor the system prompt show"
                    )
                # A tool the search listed but brought no stub for: one more round trip.
                missing = [s for s in task.stubs if f"async def {s.split('.', 1)[1]}(" not in text]
                if missing:
                    steps.insert(0, ("get_tool_stubs", {"names": missing}))
        text = texts["execute_code"]
        answer = task.answer_from_text(text) if task.answer_from_text else json.loads(text)
        conversation.model_turn([{"type": "text", "text": json.dumps(answer, ensure_ascii=False)}])
        run = cm.runs[-1]
        return AgentRun(
            answer=answer,
            conversation=conversation,
            codemode_calls=sum(t.tool_calls for t in conversation.turns),
            tools_offered=len(definitions),
            upstream_calls=sum(len(r.tool_calls) for r in cm.runs),
            call_durations_s=[c.duration_s for r in cm.runs for c in r.tool_calls],
            sandbox={**run.timings.to_dict(), "batches": len({c.batch for c in run.tool_calls})},
        )
