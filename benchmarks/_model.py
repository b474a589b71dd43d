"""Real-model mode: both agents driven by a real model, its real usage recorded.

    python -m benchmarks.tokens --model anthropic:MODEL [--task NAME ...]

The provider API is Anthropic's Messages API with streaming, spoken with httpx
(no SDK). The key comes from `ANTHROPIC_API_KEY`; `ANTHROPIC_BASE_URL`
(default https://api.anthropic.com) overrides the endpoint, which is how the
test points it at a local fake. Never run in CI against the real API.

Each agent gets the same tools and system prompt as its scripted twin in
`_agents` (direct: every tool of the task's servers, results as the text a
client forwards; code mode: codemode's own MCP server through the SDK's
in-memory client), and the model decides every call. Per turn we record what
the API reports (input, output, cache-read and cache-write tokens), the time
to the first streamed content event (time to first token), and the turn's
duration; per run, whether the answer matched ground truth, how many tool
calls came back as errors (each one a retry the model had to make or give up
on), and how many HTTP requests were retried (429, 5xx, overloaded).

Failure policy: a provider error that is not retryable, or retries exhausted,
raises `ModelError`; a run past `MAX_TURNS` ends unsuccessful. Every request
is bounded by `REQUEST_TIMEOUT_S`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from mcp import Client
from mcp.types import TextContent

from benchmarks._agents import SYSTEM_PROMPT, _RecordingCodeMode, direct_tool_definitions, forwarded_call
from benchmarks._workloads import Task, Workspace
from codemode import Hub, Sandbox, Tool, ToolError
from codemode import build_mcp_server as build_server
from codemode._serve.mcp_server import server_instructions

__all__ = ["ModelClient", "ModelError", "ModelRun", "parse_model", "run_code_mode_model", "run_direct_model"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
MAX_TURNS = 40
MAX_TOKENS = 4096
REQUEST_TIMEOUT_S = 180.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
MAX_ATTEMPTS = 4


class ModelError(Exception):
    """The provider refused a request, or kept failing past the retries."""


def parse_model(spec: str) -> tuple[str, str]:
    """`anthropic:MODEL` -> ("anthropic", MODEL). Raises `ModelError` for another provider."""
    provider, _, model = spec.partition(":")
    if provider != "anthropic" or not model:
        raise ModelError(f"--model must be anthropic:MODEL (the one provider API supported), not {spec!r}")
    return provider, model


@dataclass
class ModelTurn:
    content: list[dict[str, Any]]
    stop_reason: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    ttft_s: float | None = None
    duration_s: float = 0.0
    http_retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 4),
            "duration_s": round(self.duration_s, 4),
            "tool_calls": sum(1 for b in self.content if b.get("type") == "tool_use"),
            "http_retries": self.http_retries,
            "stop_reason": self.stop_reason,
        }


class ModelClient:
    """One streaming Messages API client. An async context manager; `aclose` is safe twice."""

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None) -> None:
        key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ModelError("real-model mode needs ANTHROPIC_API_KEY in the environment")
        self.model = model
        self.base_url = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0),
            headers={"x-api-key": key, "anthropic-version": API_VERSION, "content-type": "application/json"},
        )

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def create(self, system: str, tools: list[dict[str, Any]], messages: list[dict[str, Any]]) -> ModelTurn:
        """One model turn, streamed. Raises `ModelError`."""
        body = {
            "model": self.model,
            "max_tokens": MAX_TOKENS,
            # Cache the tools and the system prompt: they repeat every turn.
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            "tools": tools,
            "messages": messages,
            "stream": True,
        }
        retries = 0
        while True:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT_S):
                    turn = await self._stream(body)
            except _Retryable as exc:
                retries += 1
                if retries >= MAX_ATTEMPTS:
                    raise ModelError(f"the provider kept failing: {exc}") from exc
                await anyio.sleep(min(exc.wait_s if exc.wait_s is not None else 2.0**retries, 30.0))
                continue
            except TimeoutError as exc:
                raise ModelError(f"no complete answer within {REQUEST_TIMEOUT_S:g} s") from exc
            except httpx.HTTPError as exc:
                raise ModelError(f"request failed: {exc}") from exc
            turn.http_retries = retries
            return turn

    async def _stream(self, body: dict[str, Any]) -> ModelTurn:
        t0 = time.perf_counter()
        turn = ModelTurn(content=[], stop_reason=None)
        partial: dict[int, str] = {}
        async with self._http.stream("POST", f"{self.base_url}/v1/messages", json=body) as response:
            if response.status_code in RETRY_STATUSES:
                after = response.headers.get("retry-after")
                raise _Retryable(f"HTTP {response.status_code}", float(after) if after else None)
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:1000]
                raise ModelError(f"HTTP {response.status_code}: {text}")
            async for event in _events(response):
                kind = event.get("type")
                if kind in ("content_block_start", "content_block_delta") and turn.ttft_s is None:
                    turn.ttft_s = time.perf_counter() - t0
                if kind == "message_start":
                    usage = event["message"].get("usage", {})
                    turn.input_tokens = int(usage.get("input_tokens", 0))
                    turn.cache_read_input_tokens = int(usage.get("cache_read_input_tokens") or 0)
                    turn.cache_creation_input_tokens = int(usage.get("cache_creation_input_tokens") or 0)
                    turn.output_tokens = int(usage.get("output_tokens", 0))
                elif kind == "content_block_start":
                    turn.content.append(dict(event["content_block"]))
                    partial[event["index"]] = ""
                elif kind == "content_block_delta":
                    delta = event["delta"]
                    if delta.get("type") == "text_delta":
                        turn.content[event["index"]]["text"] += delta["text"]
                    elif delta.get("type") == "input_json_delta":
                        partial[event["index"]] += delta["partial_json"]
                elif kind == "content_block_stop":
                    block = turn.content[event["index"]]
                    if block.get("type") == "tool_use":
                        block["input"] = json.loads(partial[event["index"]] or "{}")
                elif kind == "message_delta":
                    turn.stop_reason = event["delta"].get("stop_reason")
                    turn.output_tokens = int(event.get("usage", {}).get("output_tokens", turn.output_tokens))
                elif kind == "error":
                    error = event.get("error", {})
                    if error.get("type") in ("overloaded_error", "rate_limit_error", "api_error"):
                        raise _Retryable(str(error.get("message")), None)
                    raise ModelError(f"{error.get('type')}: {error.get('message')}")
        turn.duration_s = time.perf_counter() - t0
        return turn


class _Retryable(Exception):
    def __init__(self, message: str, wait_s: float | None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


async def _events(response: httpx.Response) -> Any:
    """The JSON `data:` payloads of a server-sent event stream."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []
    if data:
        yield json.loads("\n".join(data))


@dataclass
class ModelRun:
    answer: Any
    success: bool
    turns: list[ModelTurn] = field(default_factory=list)
    tool_s: float = 0.0
    tool_errors: int = 0
    """Tool calls whose result was an error: each one a retry the model made (or gave up on)."""
    upstream_calls: int = 0
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        ttfts = [t.ttft_s for t in self.turns if t.ttft_s is not None]
        input_tokens = sum(
            t.input_tokens + t.cache_read_input_tokens + t.cache_creation_input_tokens for t in self.turns
        )
        output_tokens = sum(t.output_tokens for t in self.turns)
        return {
            "success": self.success,
            "answer": self.answer,
            "problem": self.problem,
            "model_turns": len(self.turns),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "cache_read_input_tokens": sum(t.cache_read_input_tokens for t in self.turns),
            "cache_creation_input_tokens": sum(t.cache_creation_input_tokens for t in self.turns),
            "ttft_s_median": round(statistics.median(ttfts), 4) if ttfts else None,
            "model_s": round(sum(t.duration_s for t in self.turns), 3),
            "tool_s": round(self.tool_s, 4),
            "upstream_calls": self.upstream_calls,
            "tool_errors": self.tool_errors,
            "http_retries": sum(t.http_retries for t in self.turns),
            "turns": [t.to_dict() for t in self.turns],
        }


def _answer(text: str) -> Any:
    """The JSON object in the model's final text (it may wrap it in prose or a code fence)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(text[start : end + 1])
    except ValueError:
        return None


async def _converse(
    client: ModelClient,
    system: str,
    tools: list[dict[str, Any]],
    prompt: str,
    call: Any,
) -> ModelRun:
    """The agent loop: `call(name, input) -> (text, is_error)` runs one tool call."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    run = ModelRun(answer=None, success=False)
    for _ in range(MAX_TURNS):
        turn = await client.create(system, tools, messages)
        run.turns.append(turn)
        messages.append({"role": "assistant", "content": turn.content})
        uses = [b for b in turn.content if b.get("type") == "tool_use"]
        if not uses:
            text = "".join(b.get("text", "") for b in turn.content if b.get("type") == "text")
            run.answer = _answer(text)
            return run
        results: list[dict[str, Any]] = [{} for _ in uses]

        async def one(block: dict[str, Any], result: dict[str, Any]) -> None:
            text, is_error = await call(block["name"], block["input"])
            result.update(type="tool_result", tool_use_id=block["id"], content=text)
            if is_error:
                result["is_error"] = True
                run.tool_errors += 1

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:  # independent calls of one turn run together
            for block, result in zip(uses, results, strict=True):
                tg.start_soon(one, block, result)
        run.tool_s += time.perf_counter() - t0
        messages.append({"role": "user", "content": results})
    run.problem = f"no answer after {MAX_TURNS} turns"
    return run


async def run_direct_model(task: Task, ws: Workspace, hub: Hub, tools: list[Tool], client: ModelClient) -> ModelRun:
    by_name = {f"{t.namespace}__{t.name}": (t.namespace, t.name) for t in tools}
    calls = 0

    async def call(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        nonlocal calls
        if name not in by_name:
            return f"there is no tool {name!r}", True
        calls += 1
        try:
            _, text = await forwarded_call(hub, *by_name[name], arguments)
        except ToolError as exc:
            return exc.message, True
        return text, False

    run = await _converse(client, SYSTEM_PROMPT, direct_tool_definitions(tools), task.render(task.prompt, ws), call)
    run.upstream_calls = calls
    return run


async def run_code_mode_model(
    task: Task, ws: Workspace, tools: list[Tool], sandbox: Sandbox, client: ModelClient
) -> ModelRun:
    cm = _RecordingCodeMode(tools=tools, sandbox=sandbox)
    cm.runs = []
    async with cm, Client(build_server(cm)) as mcp:
        definitions = [
            {"name": t.name, "description": t.description or "", "input_schema": t.input_schema}
            for t in (await mcp.list_tools()).tools
        ]
        system = SYSTEM_PROMPT + "\n\n" + server_instructions(cm)

        async def call(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
            result = await mcp.call_tool(name, arguments)
            text = "\n".join(b.text for b in result.content if isinstance(b, TextContent))
            return text, bool(result.is_error)

        run = await _converse(client, system, definitions, task.render(task.prompt, ws), call)
    run.upstream_calls = sum(len(r.tool_calls) for r in cm.runs)
    return run
