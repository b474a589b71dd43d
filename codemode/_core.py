"""`CodeMode`: the one core behind every interface (Python API, HTTP, MCP server).

It owns the upstream hub (MCP servers from a config), any in-process tools, the
pin store, the discovery index and the sandbox, and offers the three things a
model does: find tools, read their stubs, run code.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._discovery import ServerSummary, ToolHits, ToolIndex
from ._errors import ConfigError, ToolServerUnavailable, UncaughtException
from ._limits import Limits
from ._observed import OBSERVED_FILE_NAME, ShapeRecorder, observed_note
from ._pinning import LOCK_FILE_NAME, PinPolicy, PinStore, filter_pinned, with_python_names
from ._policy import Approver, Gate, Policy, PolicyFn, RunGate
from ._prompt import (
    CODE_CONTRACT,
    DEFAULT_STUBS_BUDGET,
    EXECUTE_DESCRIPTION,
    EXECUTE_SUMMARY,
    SEARCH_STUB_HITS,
    approx_tokens,
    inline_contract,
)
from ._redact import Redactor, install_log_redaction
from ._result import RunResult
from ._sandbox.runner import Backend, Sandbox
from ._tools import Tool

if TYPE_CHECKING:  # the MCP SDK takes most of a second to import: only when servers are configured
    from ._upstream.config import Config
    from ._upstream.hub import Hub, ServerFailure, ServerStatus

__all__ = ["CodeMode"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CodeMode:
    """Code mode over a set of tools: MCP servers from a config, Python tools, or both.

        async with CodeMode.from_config("mcp.json") as cm:
            hits = cm.search_tools("read a file")
            stubs = cm.stubs([h.qualified_name for h in hits[:2]])
            result = await cm.execute(code)

    Tool definitions are pinned in a lock file beside the config (trust on first
    use); a definition that later changes is refused until re-approved.

    `observe_shapes` (opt-in; True, or a file path) records the shape of the
    results each tool returns, and gives tools that declare no output schema an
    inferred return type in their stubs, labelled as observed, not declared.
    The shapes are kept in `codemode.observed.json` beside the lock file.

    `stubs_budget`: when every tool's stubs fit this many (estimated) tokens,
    `system_prompt()` and `tool_definition()` carry them, so a model can call
    execute_code at once; otherwise they carry a compact index, and the model
    searches (`search_tools(..., with_stubs=True)` returns the best hits'
    stubs with them) or asks `stubs()`. 0 always gives the index; None takes
    `$CODEMODE_STUBS_BUDGET`, else `DEFAULT_STUBS_BUDGET` (4,000).

    `policy` (a `Policy`, or any function of a `ToolCall` answering "allow",
    "deny" or "ask") and each server's `"codemode": {"approve": [...]}` decide
    every call before it is made; "ask" waits for `approver` (or the one given
    to `execute`) at most `approval_timeout` seconds, which count against the
    run's timeout. See `codemode._policy` for the whole contract.
    """

    def __init__(
        self,
        *,
        config: Config | None = None,
        tools: Sequence[Tool] = (),
        sandbox: Sandbox | None = None,
        backend: Literal["wasm", "restricted"] | Backend = "wasm",
        limits: Limits | None = None,
        lock_file: str | Path | None = None,
        pin_policy: PinPolicy | None = None,
        observe_shapes: bool | str | Path = False,
        stubs_budget: int | None = None,
        policy: Policy | PolicyFn | None = None,
        approver: Approver | None = None,
        approval_timeout: float = 60.0,
    ) -> None:
        self.stubs_budget = _stubs_budget(stubs_budget)
        self.config = config
        self.sandbox = sandbox or Sandbox(backend=backend, limits=limits)
        self._static = list(tools)
        self._hub: Hub | None = None
        if config is not None and config.servers:
            from ._upstream.hub import Hub

            # An answer carries a value twice (structured and as text), escaped.
            self._hub = Hub(config, max_message_bytes=4 * self.sandbox.limits.max_tool_result_bytes + 65_536)
        # Configured secrets never leave a run: see `codemode._redact`.
        self._redactor = Redactor(config.secrets() if config is not None else ())
        self._pins = PinStore.load(lock_file) if lock_file is not None else None
        self._shapes = _shape_recorder(observe_shapes, lock_file)
        self._policy = pin_policy or PinPolicy()
        self._shape_keys: set[tuple[str, str]] = set()
        self._stack: AsyncExitStack | None = None
        self._cache_key: tuple[int, int, frozenset[tuple[str, str]]] | None = None
        self._tools: list[Tool] = []
        self._index: ToolIndex | None = None
        self._gate = _gate(config, policy, approver, approval_timeout)

    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> CodeMode:
        """CodeMode over the MCP servers of an `mcpServers` config file; the lock
        file defaults to `codemode.lock.json` beside it.

        Raises `ConfigError` for an unreadable or invalid file or lock file."""
        path = Path(path)
        kwargs.setdefault("lock_file", path.parent / LOCK_FILE_NAME)
        from ._upstream.config import load_config

        return cls(config=load_config(path), **kwargs)

    async def __aenter__(self) -> CodeMode:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self, *, wait_for_servers: bool = True) -> None:
        """Connect to every server (failures go to `failures`) and load the sandbox.
        Without `wait_for_servers`, servers connect in the background (see
        `server_status`); a run that names one still connecting waits for it.

        Raises `SandboxUnavailable`."""
        self._stack = AsyncExitStack()
        self._stack.callback(install_log_redaction(self._redactor))
        if self._hub is not None:
            hub = self._hub
            await hub.open(wait=wait_for_servers)
            self._stack.push_async_callback(hub.aclose)
        await self.sandbox.load()

    async def aclose(self) -> None:
        """Close every upstream session (and save observed shapes). Safe to call twice."""
        if self._shapes is not None and self._shapes.dirty and self._shapes.path is not None:
            self._shapes.save()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @property
    def policy_enabled(self) -> bool:
        """Whether calls pass a tool-call policy (`policy=`, or a server's `approve`)."""
        return self._gate is not None

    @property
    def failures(self) -> dict[str, ServerFailure]:
        """Servers that could not be reached, by namespace."""
        return dict(self._hub.failures) if self._hub is not None else {}

    def server_status(self) -> list[ServerStatus]:
        """Each configured server's state: connecting, ready or unavailable (with its last error)."""
        return self._hub.status() if self._hub is not None else []

    def tools(self) -> list[Tool]:
        """Every tool the model may call now: in-process tools, then each
        server's, less those whose definitions changed since they were pinned."""
        generation = self._hub.generation if self._hub is not None else 0
        key = (generation, len(self.failures), self._shapes_seen)
        if key != self._cache_key:
            tools = self._static + (self._hub.tools() if self._hub is not None else [])
            if self._pins is not None:
                tools = with_python_names(filter_pinned(tools, self._pins, self._policy), self._pins)
            # After pinning: what was observed never changes a pinned definition.
            tools = [self._with_observed_output(t) for t in tools]
            # codemode's own read_resource definitions: nothing a server could change, so not pinned.
            tools += self._hub.resource_tools() if self._hub is not None else []
            if self._gate is not None:  # last: every call the sandbox makes passes the policy
                tools = [self._gate.wrap(t) for t in tools]
            self._tools, self._index, self._cache_key = tools, None, key
        return self._tools

    @property
    def _shapes_seen(self) -> frozenset[tuple[str, str]]:
        """Which tools have an observed shape (a new one means new stubs)."""
        return frozenset(self._shape_keys) if self._shapes is not None else frozenset()

    def _with_observed_output(self, tool: Tool) -> Tool:
        if self._shapes is None or tool.output_schema is not None:
            return tool
        schema = self._shapes.inferred_output_schema(tool.namespace, tool.name)
        if schema is None:
            return tool
        note = observed_note(schema) or ""
        return dataclasses.replace(tool, output_schema=schema, description=f"{tool.description}\n\n{note}".strip())

    def _observe(self, tool: Tool, value: Any) -> None:
        assert self._shapes is not None
        self._shapes.observe(tool.namespace, tool.name, value)
        self._shape_keys.add((tool.namespace, tool.name))

    @property
    def index(self) -> ToolIndex:
        """The discovery index over `tools()`, rebuilt when they change."""
        tools = self.tools()  # resets the index when the tools changed
        if self._index is None:
            self._index = ToolIndex(tools, stubs=self.sandbox.stubs(tools))
        return self._index

    def list_servers(self) -> list[ServerSummary]:
        return self.index.servers()

    def search_tools(self, query: str, limit: int = 10, *, with_stubs: bool = False) -> ToolHits:
        """Tools ranked by how well their names and descriptions match `query`;
        with `with_stubs`, also the stubs of the best few (`ToolHits.stubs`),
        which saves the model a round trip.

        Raises `ValueError` if `limit` is negative."""
        hits = ToolHits(self.index.search(query, limit=limit))
        if with_stubs and hits:
            hits.stubs = self.index.get_stubs([h.qualified_name for h in hits[:SEARCH_STUB_HITS]])
        return hits

    def inline_stubs(self) -> str | None:
        """Every tool's stubs if they fit `stubs_budget` (estimated tokens), else None."""
        if self.stubs_budget == 0:
            return None
        source = self.stubs()
        return source if approx_tokens(source) <= self.stubs_budget else None

    def stubs(self, names: Sequence[str] | None = None) -> str:
        """Stubs for the named tools (`namespace.tool`), or for every tool.

        Raises `ToolNotFound` (with suggestions) for unknown names."""
        if names is None:
            return self.sandbox.stubs(self.tools()).source
        return self.index.get_stubs(names)

    async def execute(
        self,
        code: str | bytes,
        *,
        limits: Limits | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        approver: Approver | None = None,
    ) -> RunResult:
        """Run `code` against the tools; see `Sandbox.run`. Servers the code names
        that are still connecting are waited for, each up to its `connectTimeout`.
        Configured secrets are redacted from the result and from every event
        (`codemode._redact`). With a policy, `approver` decides this run's
        "ask" calls (instead of the CodeMode's), `on_event` also gets
        `approval_requested` and `approval_decided`, and each call record
        carries its decision."""
        if self._hub is not None:
            await self._wait_for_named_servers(code)
        tools = self.tools()
        redact = self._redactor
        if on_event is not None and redact:
            consumer = on_event

            def on_event(event: dict[str, Any]) -> None:
                consumer(redact.value(event))

        run_tools = _referenced(code, tools, self.sandbox)
        observe = self._observe if self._shapes is not None else None
        if self._gate is None:
            result = await self.sandbox.run(code, tools=run_tools, limits=limits, on_event=on_event, observe=observe)
        else:
            timeout = (limits or self.sandbox.limits).timeout
            run = RunGate(approver=approver, on_event=on_event, deadline=time.monotonic() + timeout)
            token = self._gate.run(run)
            try:
                result = await self.sandbox.run(
                    code, tools=run_tools, limits=limits, on_event=on_event, observe=observe
                )
            finally:
                self._gate.release(token)
            names = {(b.tool.namespace, b.tool.name): key for key, b in self.sandbox.stubs(run_tools).bindings.items()}
            result = dataclasses.replace(result, tool_calls=run.annotate(result.tool_calls, names))
        return redact.result(self._explain_unlisted(result, tools))

    def _explain_unlisted(self, result: RunResult, tools: list[Tool]) -> RunResult:
        """A NameError for the namespace of a server that is down and was never
        listed (so it has no stubs) says so, with code `server_unavailable`."""
        error = result.error
        if self._hub is None or not isinstance(error, UncaughtException) or error.exc_type != "NameError":
            return result
        match = re.fullmatch(r"name '([A-Za-z_][A-Za-z0-9_]*)' is not defined", error.message)
        failure = self.failures.get(match.group(1)) if match else None
        if failure is None or any(t.namespace == failure.namespace for t in tools):
            return result
        explained = ToolServerUnavailable(
            f"MCP server {failure.namespace!r} is unavailable ({failure.message}); its tools are not known yet "
            "and it is retried in the background",
            tool=None,
            traceback=error.traceback,
        )
        return dataclasses.replace(result, error=explained)

    async def _wait_for_named_servers(self, code: str | bytes) -> None:
        assert self._hub is not None
        hub = self._hub
        if isinstance(code, (bytes, bytearray)):
            code = bytes(code).decode("utf-8", "replace")
        names = set(_IDENT.findall(code)) if isinstance(code, str) else set()
        connecting = [ns for ns in names if hub.state(ns) == "connecting"]
        if connecting:
            async with anyio.create_task_group() as tg:
                for ns in connecting:
                    tg.start_soon(hub.wait_settled, ns)

    def system_prompt(self) -> str:
        """Instructions for a model plus every tool's stubs when they fit
        `stubs_budget`, else a compact index of the servers and tools."""
        stubs = self.inline_stubs()
        if stubs is not None:
            unavailable = f"Unavailable: {', '.join(sorted(self.failures))}\n" if self.failures else ""
            return inline_contract(stubs) + unavailable
        lines = [CODE_CONTRACT, "Available namespaces (use search_tools / get_tool_stubs for details):"]
        for server in self.list_servers():
            names = ", ".join(server.tools[:12]) + (", …" if len(server.tools) > 12 else "")
            lines.append(f"- {server.namespace} ({server.tool_count} tools): {names}")
        if self.failures:
            lines.append("Unavailable: " + ", ".join(sorted(self.failures)))
        return "\n".join(lines)

    def tool_definition(
        self, format: Literal["openai", "anthropic"] = "openai", *, contract: bool = True
    ) -> dict[str, Any]:
        """A ready definition of an `execute_code` tool for a model API. Its
        description teaches the code contract, and carries every tool's stubs
        when they fit `stubs_budget`; pass `contract=False` when the model also
        gets `system_prompt()`, which carries the same text.

        Raises `ValueError` for an unknown format."""
        schema = {
            "type": "object",
            "properties": {
                "code": {
                    "type": "string",
                    "description": "Python source; the value of its last expression is returned.",
                }
            },
            "required": ["code"],
            "additionalProperties": False,
        }
        description = EXECUTE_DESCRIPTION if contract else EXECUTE_SUMMARY
        stubs = self.inline_stubs() if contract else None
        if stubs is not None:  # the contract for just these tools, and the tools
            description = inline_contract(stubs)
        if format == "openai":
            return {
                "type": "function",
                "function": {"name": "execute_code", "description": description, "parameters": schema},
            }
        if format == "anthropic":
            return {"name": "execute_code", "description": description, "input_schema": schema}
        raise ValueError(f"unknown tool definition format {format!r}: use 'openai' or 'anthropic'")


def _stubs_budget(value: int | None) -> int:
    """The budget given, else `$CODEMODE_STUBS_BUDGET`, else the default.

    Raises `ConfigError` for a negative or non-integer budget."""
    source = "stubs_budget"
    if value is None:
        text = os.environ.get("CODEMODE_STUBS_BUDGET", "").strip()
        if not text:
            return DEFAULT_STUBS_BUDGET
        source = "CODEMODE_STUBS_BUDGET"
        try:
            value = int(text)
        except ValueError:
            value = -1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source} must be a whole number of tokens >= 0")
    return value


def _gate(
    config: Config | None, policy: Policy | PolicyFn | None, approver: Approver | None, timeout: float
) -> Gate | None:
    """The gate every call passes, or None when nothing asks for one."""
    policies: list[PolicyFn] = [policy] if policy is not None else []
    servers = config.servers.values() if config is not None else ()
    patterns = [f"{s.namespace}.{pattern}" for s in servers for pattern in s.codemode.approve]
    if patterns:
        policies.append(Policy(approve=patterns))
    return Gate(policies, approver, timeout) if policies else None


def _shape_recorder(observe: bool | str | Path, lock_file: str | Path | None) -> ShapeRecorder | None:
    if observe is False:
        return None
    if observe is True:
        if lock_file is None:
            return ShapeRecorder()  # in memory only
        return ShapeRecorder.load(Path(lock_file).parent / OBSERVED_FILE_NAME)
    return ShapeRecorder.load(observe)


def _referenced(code: str | bytes, tools: list[Tool], sandbox: Sandbox) -> list[Tool]:
    """Only the namespaces the code names get stubs in the run: with many
    servers, rendering and executing every stub would dominate a short run."""
    if isinstance(code, (bytes, bytearray)):
        try:
            code = bytes(code).decode("utf-8")
        except UnicodeDecodeError:
            return tools
    bindings = sandbox.stubs(tools).bindings
    names = set(_IDENT.findall(code))
    wanted = {b.tool.namespace for (ns, _), b in bindings.items() if ns in names}
    subset = [t for t in tools if t.namespace in wanted]
    # Names that collided may be assigned differently in a subset; then the
    # stubs the model read would not be the ones that run. Keep them all.
    same = all(
        bindings.get(key) is not None and bindings[key].tool is b.tool
        for key, b in sandbox.stubs(subset).bindings.items()
    )
    return subset if same else tools
