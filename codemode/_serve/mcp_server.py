"""codemode as an MCP server: `search_tools`, `get_tool_stubs` and `execute_code`.

An MCP client (Claude Desktop, Cursor, an agent framework) connects to one
server, codemode, instead of to every upstream server. The model finds tools,
reads their typed stubs (or, for a small catalog, reads them all in
execute_code's description, and is offered no other tool), and sends one program; codemode runs it in the
sandbox, proxies each tool call to the upstream server, and returns only the
program's final value.

    codemode mcp --config mcp.json            # stdio: the client starts us
    codemode mcp --config mcp.json --http     # Streamable HTTP on 127.0.0.1:8765/mcp

The HTTP side (bind rules, bearer token, Origin allow-list) is in `mcp_transport.py`.

Long runs report one `notifications/progress` per finished tool call to a
client that sent a progress token.

A call the tool-call policy asks about (a server's `approve` patterns) is put
to the client's user by MCP elicitation: "Allow fs.write_file({...})?", and
made only if they accept and approve. On handshake-era sessions (2025-11-25
and earlier) the server asks mid-call; on 2026-07-28 sessions the call answers
an `InputRequiredResult` and the paused run waits for the client's retry
(`mcp_rounds.py`). A client that does not support elicitation cannot be asked,
so such calls are refused with a reason that says so (the program gets
`ToolError` `approval_denied`).

Over HTTP, execute_code is also offered as an MCP task (2025-11-25 sessions):
the program runs in the run store `codemode serve` uses, so its result can be
fetched later, from any replica sharing a Redis store (`mcp_tasks.py`).
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from mcp_types import InputRequiredResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field

from .._core import CodeMode
from .._errors import CodemodeError, ConfigError, SandboxUnavailable
from .._limits import Limits
from .._policy import Approval, ToolCall
from .._prompt import EXECUTE_DESCRIPTION, GET_STUBS_DESCRIPTION, SEARCH_DESCRIPTION, inline_contract
from .._result import RunResult
from .mcp_format import format_run
from .mcp_rounds import NO_ELICITATION, Rounds, approval_message
from .mcp_tasks import McpTasks
from .settings import McpSettings
from .store import STORE_URL_PROBLEM, is_store_url

__all__ = ["build_server", "cli_main", "format_run", "serve_stdio", "server_instructions"]

logger = logging.getLogger("codemode.mcp")

EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 2, 3

STDOUT_CAP = 8_000
"""Characters of `print` output returned: it rides along with the result into
the model's context, so it gets a tighter cap than the result itself."""
MAX_CONCURRENT_RUNS = 4
"""Runs executing at once; each holds a worker thread and a wasm instance."""
SEARCH_LIMIT_MAX = 50
_INDEX_TOOLS = 12

_WORKFLOW = (
    "codemode: do multi-step work with tools by writing one Python program instead of calling tools one by one. "
    "Find tools with search_tools, read the typed stubs of the few you need with get_tool_stubs, then run the "
    "program with execute_code; only its final value comes back."
)
_WORKFLOW_INLINE = "codemode: execute_code runs one Python program; its description has every tool's stubs."


def _inline(cm: CodeMode) -> str | None:
    """Every tool's stubs, when they fit the budget and every server is up:
    then execute_code carries them and the discovery tools are not offered.
    (A server still down may come up with tools the stubs lack: search finds them.)"""
    return cm.inline_stubs() if not cm.failures else None


def server_instructions(cm: CodeMode) -> str:
    """The server's `instructions`: the workflow, and a compact index of
    namespaces unless execute_code's description holds every stub.

    The code contract itself lives in execute_code's description, which every
    client shows the model; instructions are not always shown, so they stay short."""
    if _inline(cm) is not None:
        return _WORKFLOW_INLINE
    lines = [_WORKFLOW, "", "Namespaces (call as `await namespace.tool(...)`):"]
    servers = cm.list_servers()
    for server in servers:
        names = ", ".join(server.tools[:_INDEX_TOOLS]) + (", …" if len(server.tools) > _INDEX_TOOLS else "")
        lines.append(f"- {server.namespace} ({server.tool_count} tools): {names}")
    if not servers:
        lines.append("- (none: no tools are configured)")
    if cm.failures:
        lines.append("Unavailable right now: " + ", ".join(sorted(cm.failures)))
    return "\n".join(lines)


def build_server(
    cm: CodeMode,
    *,
    max_concurrent_runs: int = MAX_CONCURRENT_RUNS,
    limits: Limits | None = None,
    tasks: McpTasks | None = None,
) -> MCPServer:
    """An `MCPServer` whose tools work on `cm`, which must be open.

    When every tool's stubs fit `cm.stubs_budget` and no server is down,
    execute_code's description carries them with the contract for just those
    tools (as the catalog stood when the server was built), and it is the only
    tool: a model goes straight to it, and search_tools and get_tool_stubs
    would only repeat its description. With `tasks`, execute_code may also be
    called as an MCP task, run in `tasks`' run store.

    Raises `CodemodeError` (e.g. `ToolDefinitionChanged`) if the tool catalog
    cannot be read."""
    runs = anyio.CapacityLimiter(max_concurrent_runs)
    limits = limits or cm.sandbox.limits.replace(max_stdout=min(cm.sandbox.limits.max_stdout, STDOUT_CAP))
    rounds = Rounds(cm, limits, runs)  # approval on 2026-07-28 sessions: runs that outlive one call
    server: MCPServer = MCPServer(
        "codemode", instructions=server_instructions(cm), log_level="WARNING", lifespan=rounds.lifespan
    )

    inline = _inline(cm)
    if inline is None:
        _add_discovery_tools(server, cm)
    execute_description = inline_contract(inline) if inline is not None else EXECUTE_DESCRIPTION

    @server.tool(
        description=execute_description, annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True)
    )
    async def execute_code(
        code: Annotated[str, Field(description="Python source.")],  # the description says the rest
        ctx: Context,
        trace: Annotated[bool, Field(description="Also return the tool-call log (debugging only).")] = False,
    ) -> CallToolResult | InputRequiredResult:
        if cm.policy_enabled and rounds.available and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            try:
                outcome = await rounds.call(code, ctx)
            except LookupError as exc:  # a retry whose run is gone
                return _error_result(CodemodeError(str(exc)))
            except CodemodeError as exc:
                logger.exception("execute_code could not run")
                return _error_result(exc)
            return outcome if isinstance(outcome, InputRequiredResult) else format_run(outcome, trace=trace)
        async with runs:
            try:
                result = await _run_reporting_progress(cm, code, limits, ctx)
            except CodemodeError as exc:  # the sandbox or the catalog failed, not the code
                logger.exception("execute_code could not run")
                return _error_result(exc)
        return format_run(result, trace=trace)

    if tasks is not None:
        tasks.install(server, limits, approvals=cm.policy_enabled)
    return server


def _add_discovery_tools(server: MCPServer, cm: CodeMode) -> None:
    """search_tools and get_tool_stubs, for a catalog whose stubs are not all in execute_code's description."""

    # structured_output=False: plain text only, else the SDK would echo it as {"result": ...}.
    # `async def` although nothing awaits: the SDK runs sync tools in worker
    # threads, and CodeMode's catalog caches belong to the event loop.
    @server.tool(
        description=SEARCH_DESCRIPTION,
        structured_output=False,
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def search_tools(
        query: Annotated[str, Field(description="What the tool should do, in a few words, e.g. 'read a file'.")],
        limit: Annotated[int, Field(ge=1, le=SEARCH_LIMIT_MAX, description="At most this many tools.")] = 10,
        with_stubs: Annotated[
            bool, Field(description="Also return the typed stubs of the best hits, to skip get_tool_stubs.")
        ] = False,
    ) -> CallToolResult:
        try:
            hits = cm.search_tools(query, limit=limit, with_stubs=with_stubs)
        except CodemodeError as exc:
            return _error_result(exc)
        if not hits:
            return _text("No tool matches. Try other words; the server instructions list every namespace.")
        lines = "\n".join(hit.line for hit in hits)
        return _text(f"{lines}\n\n```python\n{hits.stubs.rstrip()}\n```" if hits.stubs else lines)

    @server.tool(
        description=GET_STUBS_DESCRIPTION,
        structured_output=False,
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def get_tool_stubs(
        names: Annotated[list[str], Field(min_length=1, description="Tool names as `namespace.tool`.")],
    ) -> CallToolResult:
        try:
            return _text(cm.stubs(names))
        except CodemodeError as exc:  # ToolNotFound: its message names close matches
            return _error_result(exc)


class _ApprovalForm(BaseModel):
    approve: bool = Field(default=False, description="Let the program make this call.")


def _elicit_approver(ctx: Context) -> Callable[[ToolCall], Awaitable[Approval]]:
    """An approver that asks the client's user, by elicitation."""

    async def approve(call: ToolCall) -> Approval:
        capabilities = ctx.client_capabilities
        if capabilities is None or capabilities.elicitation is None:
            return Approval(approved=False, by="mcp client", reason=NO_ELICITATION)
        try:
            answer = await ctx.elicit(approval_message(call), _ApprovalForm)
        except NoBackChannelError:  # a 2026-07-28 session outside `Rounds` (its lifespan is not running)
            return Approval(
                approved=False,
                by="mcp client",
                reason=f"it needs a person's approval, and codemode cannot ask mid-call over MCP {ctx.protocol_version}",
            )
        except MCPError as exc:
            return Approval(approved=False, by="mcp client", reason=f"the client could not ask: {exc}")
        if answer.action == "accept" and answer.data.approve:
            return Approval(approved=True, by="mcp user")
        return Approval(approved=False, by="mcp user", reason=f"the user answered {answer.action}")

    return approve


async def _run_reporting_progress(cm: CodeMode, code: str, limits: Limits, ctx: Context) -> RunResult:
    """Run `code`, sending one progress notification per finished tool call.

    `on_event` is called synchronously on the loop; a single consumer task keeps
    the notifications in order (progress must increase). Without a progress
    token the SDK's `report_progress` is a no-op."""
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](math.inf)

    async def report() -> None:
        done = 0
        async with receive:
            async for event in receive:
                if event.get("type") != "tool_call_finished":
                    continue
                done += 1
                status = "ok" if event.get("ok") else f"failed ({event.get('error_code')})"
                await ctx.report_progress(done, None, f"{event.get('namespace')}.{event.get('tool')} {status}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        with send:  # closing it ends `report` once the queued notifications are out
            result = await cm.execute(code, limits=limits, on_event=send.send_nowait, approver=_elicit_approver(ctx))
    return result


def _text(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)])


def _error_result(exc: CodemodeError) -> CallToolResult:
    """A failure that is not the code's (unknown tool names, changed pins, no sandbox)."""
    return CallToolResult(
        content=[TextContent(type="text", text=f"Error [{exc.code}]: {exc.message}")],
        structured_content={"ok": False, "value": None, "error": exc.to_dict()},
        is_error=True,
    )


# --- serving -------------------------------------------------------------------------------------


class _Shutdown:
    """What SIGINT/SIGTERM do: cancel the whole server, or, once a graceful stop
    is registered (uvicorn's), call that first; a second signal cancels outright."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        self.graceful: Callable[[], None] | None = None

    def __call__(self) -> None:
        graceful, self.graceful = self.graceful, None
        if graceful is not None:
            graceful()
        else:
            self._scope.cancel()


async def _watch_signals(shutdown: _Shutdown, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    # Our own handlers, so that shutdown runs our cleanup (closing upstream
    # sessions) instead of the default handlers ending the process.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            shutdown()


async def _serve(options: McpSettings, tokens: dict[str, str]) -> None:
    async with anyio.create_task_group() as tg:
        shutdown = _Shutdown(tg.cancel_scope)
        await tg.start(_watch_signals, shutdown)  # before startup: a signal then aborts it cleanly too
        limits = options.limits
        cm = (
            CodeMode.from_config(
                options.config,
                backend=options.backend,
                limits=limits,
                observe_shapes=options.observe_shapes,
                stubs_budget=options.stubs_budget,
            )
            if options.config
            else CodeMode(backend=options.backend, limits=limits, stubs_budget=options.stubs_budget)
        )
        async with cm:  # a server that failed to start is logged by the hub
            if options.http:
                await _serve_http(cm, options, tokens, shutdown)
            else:
                server = build_server(cm)
                logger.info("serving %d tools of %d namespaces", len(cm.tools()), len(cm.list_servers()))
                await serve_stdio(server)
        tg.cancel_scope.cancel()


async def _serve_http(cm: CodeMode, options: McpSettings, tokens: dict[str, str], shutdown: _Shutdown) -> None:
    """Serve Streamable HTTP, with execute_code tasks in the run store `options.store` names.

    Raises `StoreUnavailable` if that store cannot be reached, `ImportError` if
    Redis is asked for without its client."""
    from .app import HttpSettings, open_store
    from .mcp_transport import serve_http
    from .metrics import Metrics
    from .runs import Admission, Executor

    settings = HttpSettings(
        host=options.host,
        store=options.store,
        replica_id=options.replica_id,
        lease_s=options.lease,
        max_concurrency=MAX_CONCURRENT_RUNS,
    )
    admission = Admission(
        max_running=settings.max_concurrency, max_waiting=settings.queue, retry_after_s=settings.retry_after_s
    )
    metrics = Metrics(queue_depth=lambda: admission.waiting, in_flight=lambda: admission.running)
    runs = open_store(settings, Executor(cm, metrics), admission)
    tasks = McpTasks(runs, ttl_s=settings.run_ttl_s, cancel_wait_s=settings.cancel_wait_s)
    async with runs, tasks:
        await runs.ping()  # an unreachable store is a clear exit 3, before the port opens
        server = build_server(cm, tasks=tasks)
        logger.info("serving %d tools of %d namespaces", len(cm.tools()), len(cm.list_servers()))

        def on_listening(stop: Callable[[], None]) -> None:
            shutdown.graceful = stop

        await serve_http(
            server,
            host=options.host,
            port=options.port,
            token=options.token,
            tokens=tokens,
            allow_origins=list(options.allow_origin),
            on_listening=on_listening,
            max_sessions=options.max_sessions,
            session_idle_s=options.session_idle,
        )


async def serve_stdio(server: MCPServer) -> None:
    """Serve one client over stdin/stdout until it closes stdin (or we are cancelled)."""
    async with _stdin_lines() as lines:
        # stdin is ours (see `_stdin_lines`); the SDK still claims fd 1, so a
        # stray print from a handler or a child cannot corrupt the protocol.
        async with stdio_server(stdin=cast(Any, lines)) as (read_stream, write_stream):
            lowlevel = server._lowlevel_server
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


@asynccontextmanager
async def _stdin_lines() -> AsyncIterator[MemoryObjectReceiveStream[str]]:
    """Lines of stdin, read by a daemon thread.

    The SDK reads stdin in an anyio worker thread that cannot be abandoned, so a
    signal could not stop the server until the client wrote another line. A
    daemon thread blocked in `os.read` on a duplicate of fd 0 can be left
    behind at exit (a buffered reader could not: finalization would wait on
    its lock)."""
    send, receive = anyio.create_memory_object_stream[str](16)
    token = anyio.lowlevel.current_token()
    fd = os.dup(sys.stdin.fileno())

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            while chunk := os.read(fd, 65536):
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                for line in lines:
                    anyio.from_thread.run(send.send, line + "\n", token=token)
            if pending := pending + decoder.decode(b"", final=True):  # a last line without its newline
                anyio.from_thread.run(send.send, pending, token=token)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError, OSError):
            return  # we are shutting down: the receiver or the event loop is gone
        finally:
            os.close(fd)  # only this thread uses it; left open if it is still blocked at exit
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(send.close, token=token)

    threading.Thread(target=pump, name="codemode-stdin", daemon=True).start()
    with receive:
        yield receive


def _configure_logging() -> None:
    # stdout is the protocol in stdio mode: everything else goes to stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("codemode: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("codemode").setLevel(logging.INFO)


def cli_main(options: McpSettings) -> int:
    """`codemode mcp`: serve over stdio, or Streamable HTTP with `--http`.

    Returns 0 after a clean shutdown, 2 when asked to bind a non-loopback
    address without a token, 3 for a bad configuration or no sandbox."""
    from .guards import is_loopback, read_tokens_file

    tokens: dict[str, str] = {}
    if options.tokens_file is not None:
        try:
            tokens = read_tokens_file(str(options.tokens_file))
        except ValueError as exc:
            print(f"codemode: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if not is_store_url(options.store):
        print(f"codemode: {STORE_URL_PROBLEM}", file=sys.stderr)
        return EXIT_USAGE
    if options.http and not is_loopback(options.host) and not (options.token or tokens):
        print(
            f"codemode: refusing to serve on {options.host} without a token: anyone who can reach it could run "
            "code with your tools. Pass --token or set CODEMODE_TOKEN.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not options.http and (
        options.token or options.allow_origin or options.host != "127.0.0.1" or tokens or options.store
    ):
        print(
            "codemode: --host, --port, --token, --tokens-file, --allow-origin and --store apply to --http only",
            file=sys.stderr,
        )
    if not options.config:
        print("codemode: no --config given: serving without any tools", file=sys.stderr)
    _configure_logging()
    failed: list[str] = []
    # except*: the serving task group wraps what fails inside it in an ExceptionGroup.
    try:
        anyio.run(_serve, options, tokens)
    except* (ConfigError, SandboxUnavailable) as group:
        failed += [str(exc) for exc in group.exceptions]
    except* CodemodeError as group:  # e.g. tool definitions changed since they were pinned
        failed += [f"[{exc.code}] {exc}" for exc in group.exceptions if isinstance(exc, CodemodeError)]
    except* OSError as group:  # the address is taken or not ours
        failed += [str(exc) for exc in group.exceptions]
    except* ImportError as group:  # an optional extra, e.g. the Redis client for --store redis://
        failed += [str(exc) for exc in group.exceptions]
    for message in failed:
        print(f"codemode: {message}", file=sys.stderr)
    return EXIT_UNAVAILABLE if failed else EXIT_OK
