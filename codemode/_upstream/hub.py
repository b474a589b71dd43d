"""The upstream hub: one MCP client session per configured server.

`Hub` is where tool calls leave codemode. It owns one anyio task group; each
server gets a supervisor task in it that connects (the SDK `Client` over our
own stdio transport, `stdio`, or the SDK's Streamable HTTP), lists the tools,
watches for tool list changes, and on shutdown leaves the client in the same
task that entered it, as anyio's cancel scopes require. Everything `mcp` stays
in this module, `stdio` and `results`: callers see `codemode.Tool`s,
`ToolError`s, `ServerStatus`es and `ServerFailure`s.

Each server is in one of three states, shown by `Hub.status()`:
connecting -> ready, or -> unavailable (with the last error).

Failure policy:
- a server that cannot start, or whose session ends, is retried by its
  supervisor in the background: at once after a session that ends, then with
  backoff (1, 2, 4 ... 30 s) while it keeps failing. A call to an unavailable
  server raises `ServerUnavailable` (code `server_unavailable`) naming it, and
  wakes the retry if the last attempt is more than a second old;
- its tools stay listed meanwhile (the last successful listing), so model code
  that names them gets that error, not a `NameError`;
- a call to a server that is still connecting waits for it, up to its
  `connectTimeout`;
- a call whose connection dies fails (it is not retried: tools may not be
  idempotent); the supervisor reconnects;
- a JSON-RPC error from the server is the server's error: a `ToolError` with
  its message (code -32000 included, which the SDK also uses for a closed
  connection: only a session that did close counts as lost);
- an answer over `max_message_bytes` is refused as it arrives (stdio:
  `UpstreamResultTooLarge`), and a malformed one (a null result, nesting too
  deep, an unknown content block) fails its call at once with a `ToolError`;
- a call that exceeds the server's `timeout` fails with a `ToolError`;
- a tool that requires a task (`execution.taskSupport: "required"`) is
  called as one and polled to its end (see `tasks`), the whole exchange
  within the server's `timeout` and the run's deadline; a task given up
  before it ended is sent `tasks/cancel` in the background (bounded);
- allow/deny lists are checked on the host for every call, not just listing.
Messages never carry configured secrets: they are redacted from every text
built from a lower-level error.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TextIO, TypeVar

import anyio
import anyio.abc
import mcp_types as types
import pydantic
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .._errors import ServerUnavailable, ToolError, UpstreamResultTooLarge
from .._redact import Redactor
from .._tools import Tool
from . import http, stdio
from .config import Config, HttpServer, ServerConfig, StdioServer
from .logs import open_server_log, server_log_path
from .resources import READ_RESOURCE, contents_value, read_resource_tool
from .results import to_value
from .tasks import call_as_task, cancel_task, requires_task, serves_tool_tasks

__all__ = ["Hub", "ServerFailure", "ServerStatus"]

logger = logging.getLogger("codemode")
_T = TypeVar("_T")

# A listing that never ends must not hang a connect.
_MAX_PAGES = 1_000
# Our stdio shutdown takes at most ~6 s (stdin close, SIGTERM, SIGKILL).
_STOP_TIMEOUT = 8.0
# Retry delays for a server that keeps failing; a call may retry sooner, not more often than this.
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 30.0
# A session that ended sooner than this after connecting is retried with backoff, not at once.
_SHORT_SESSION = 5.0
# How often a ready session is checked for a transport that ended under it.
_WATCH_INTERVAL = 0.25
# A `tasks/cancel` for an abandoned task is sent in the background, and given up after this.
_CANCEL_TIMEOUT = 5.0
# Default cap on one message from a server (see `Hub`).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1_000_000 + 65_536

FailureCode = Literal["spawn_failed", "connect_timeout", "connect_failed"]
State = Literal["connecting", "ready", "unavailable"]


@dataclass(frozen=True, kw_only=True)
class ServerFailure:
    """Why a server is not available. `message` never contains configured secrets."""

    server: str
    """The server's key in the configuration."""
    namespace: str
    code: FailureCode
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"server": self.server, "namespace": self.namespace, "code": self.code, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class ServerStatus:
    """Where one server's connection stands."""

    server: str
    namespace: str
    state: State
    tools: int
    """Tools listed (for an unavailable server: at its last successful listing)."""
    last_error: ServerFailure | None
    """Why the last attempt to connect failed; kept while it reconnects."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "namespace": self.namespace,
            "state": self.state,
            "tools": self.tools,
            "last_error": self.last_error.to_dict() if self.last_error else None,
        }


class _ConnectTimeout(Exception):
    pass


class Hub:
    """Client sessions to every configured server, as `codemode.Tool`s.

        async with Hub(load_config("mcp.json")) as hub:
            result = await Sandbox().run(code, tools=hub.tools())

    Entering starts every server's supervisor and, unless `open(wait=False)`,
    waits until each is ready or has failed once (bounded by its
    `connectTimeout`); it never raises for a server that fails: see `failures`
    and `status()`. Leaving closes every session and stops every child process
    and its process group, within a bounded time, even when cancelled.

    `max_message_bytes` caps one message from a stdio server: a larger answer
    is refused as it arrives, without being held in memory.
    """

    def __init__(self, config: Config, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.config = config
        self.max_message_bytes = max_message_bytes
        self._redactor = Redactor(config.secrets())
        self._upstreams = {s.namespace: _Upstream(s, self) for s in config.servers.values()}
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._generation = 0
        self._changed: anyio.Event | None = None

    async def __aenter__(self) -> Hub:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self, *, wait: bool = True) -> None:
        """Start connecting to every server, in the background. With `wait`,
        return once each is ready or has failed once. Failures go to `failures`;
        this raises only `RuntimeError` if the hub was already opened."""
        if self._stack is not None:
            raise RuntimeError("a Hub can be opened once")
        self._stack = AsyncExitStack()
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        for upstream in self._upstreams.values():
            self._tg.start_soon(upstream.supervise)
        if not wait:
            return
        try:
            async with anyio.create_task_group() as waiters:
                for upstream in self._upstreams.values():
                    waiters.start_soon(upstream.wait_settled)
        except BaseException:
            # Cancelled while connecting: `__aexit__` will not run, so leave now.
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close every session and stop every child process. Safe to call twice."""
        if self._closed or self._stack is None or self._tg is None:
            self._closed = True
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            for upstream in self._upstreams.values():
                upstream.stop()
            with anyio.move_on_after(_STOP_TIMEOUT):
                for upstream in self._upstreams.values():
                    await upstream.wait_stopped()
        # Whatever did not stop in time is cancelled; the stdio transport still
        # stops its child in a shielded, bounded finally. (The task group is
        # left outside the shield: cancel scopes must exit in the order entered,
        # and a task group always waits for its tasks anyway.)
        self._tg.cancel_scope.cancel()
        await self._stack.aclose()

    @property
    def failures(self) -> Mapping[str, ServerFailure]:
        """Servers that are unavailable now, by namespace, with their last error."""
        return {
            ns: u.failure for ns, u in self._upstreams.items() if u.state == "unavailable" and u.failure is not None
        }

    def status(self) -> list[ServerStatus]:
        """Every configured server's state, in configuration order."""
        return [u.status() for u in self._upstreams.values()]

    def state(self, namespace: str) -> State | None:
        """The state of the server with `namespace`; None for an unknown one."""
        upstream = self._upstreams.get(namespace)
        return upstream.state if upstream is not None else None

    @property
    def namespaces(self) -> list[str]:
        """Namespaces of the servers that are connected."""
        return [ns for ns, u in self._upstreams.items() if u.state == "ready"]

    def is_connected(self, namespace: str) -> bool:
        """Whether that server's session is open. False for a failed server, and
        for one whose process died, until its supervisor has reconnected."""
        upstream = self._upstreams.get(namespace)
        client = upstream._client if upstream is not None else None
        return client is not None and not _known_closed(client)

    async def wait_settled(self, namespace: str) -> None:
        """Wait while the server with `namespace` is connecting, up to its
        `connectTimeout`. Returns at once for an unknown, ready or unavailable one."""
        upstream = self._upstreams.get(namespace)
        if upstream is not None:
            await upstream.wait_settled()

    def tools(self) -> list[Tool]:
        """The tools of every server that its allow/deny lists permit, one
        namespace per server; for a server that is not connected now, those of
        its last successful listing (calls to them raise `ServerUnavailable`).
        The same `Tool` objects are returned until a server's tool list changes."""
        tools: list[Tool] = []
        for upstream in self._upstreams.values():
            tools.extend(upstream.tools)
        return tools

    @property
    def generation(self) -> int:
        """Counts tool list changes across all servers."""
        return self._generation

    async def wait_for_change(self, after: int) -> int:
        """Wait until `generation` exceeds `after`; returns the new generation.
        Bound it with `anyio.fail_after`."""
        while self._generation <= after:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._generation

    async def call_tool(self, namespace: str, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Call tool `name` of the server with `namespace`; its value per `results`.

        Raises `ServerUnavailable` if the server is not connected (after waiting
        while it connects), `UpstreamResultTooLarge` for an answer over the cap,
        and `ToolError` if the server is unknown, the tool is not permitted by the
        configuration, the call fails or times out, or the tool reports an error."""
        upstream = self._upstreams.get(namespace)
        if upstream is None:
            raise ToolError(f"there is no MCP server {namespace!r}")
        if not upstream.server.codemode.permits(name):
            raise ToolError(f"{namespace}.{name} is not allowed by the codemode configuration")
        if self._closed or self._tg is None:
            raise ToolError("the MCP hub is closed")
        return await upstream.call(name, dict(arguments or {}))

    def resource_tools(self) -> list[Tool]:
        """A `read_resource` tool for each server that serves resources (see
        `resources`; decided each time it connects), where its allow/deny lists
        permit that name and it has no tool of its own by that name. Like
        `tools()`, kept while the server reconnects; the same `Tool` objects
        every time."""
        tools: list[Tool] = []
        for upstream in self._upstreams.values():
            tool = upstream.resource_tool
            if tool is None or not upstream.server.codemode.permits(READ_RESOURCE):
                continue
            if not any(t.name == READ_RESOURCE for t in upstream.tools):
                tools.append(tool)
        return tools

    async def read_resource(self, namespace: str, uri: str) -> list[dict[str, Any]]:
        """Read resource `uri` from the server with `namespace`: its contents, as
        `resources.contents_value` gives them.

        Raises `ServerUnavailable` if the server is not connected (after waiting
        while it connects), and `ToolError` if the server is unknown, its allow/deny
        lists do not permit a tool named `read_resource`, or the read fails or
        times out."""
        upstream = self._upstreams.get(namespace)
        if upstream is None:
            raise ToolError(f"there is no MCP server {namespace!r}")
        if not upstream.server.codemode.permits(READ_RESOURCE):
            raise ToolError(f"{namespace}.{READ_RESOURCE} is not allowed by the codemode configuration")
        if self._closed or self._tg is None:
            raise ToolError("the MCP hub is closed")
        return await upstream.read_resource(uri)

    def redact(self, text: str) -> str:
        """`text` with every configured secret, in every form `Redactor` knows, replaced by `***`."""
        return self._redactor.text(text)

    def _tools_changed(self) -> None:
        self._generation += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class _Upstream:
    """One server's connection and tool list; its supervisor task owns the `Client`."""

    def __init__(self, server: ServerConfig, hub: Hub) -> None:
        self.server = server
        self.hub = hub
        self.namespace = server.namespace
        self.tools: list[Tool] = []
        self.resource_tool: Tool | None = None
        """Its `read_resource`, if it serves resources (see `_probe_resources`)."""
        self.state: State = "connecting"
        self.failure: ServerFailure | None = None
        self._schemas: dict[str, Mapping[str, Any] | None] = {}
        self._unwrap: dict[str, bool] = {}
        self._as_task: set[str] = set()
        """Tools whose listing requires a task (see `tasks`)."""
        self._signature: list[dict[str, Any]] | None = None
        self._client: Client | None = None
        self._settled = anyio.Event()  # set while not connecting
        self._stop = anyio.Event()  # ends the current session
        self._wake = anyio.Event()  # ends the current backoff
        self._stopped = anyio.Event()
        self._supervising = False
        self._last_attempt = -math.inf
        self._refresh_send, self._refresh_receive = anyio.create_memory_object_stream[None](1)

    def status(self) -> ServerStatus:
        return ServerStatus(
            server=self.server.name,
            namespace=self.namespace,
            state=self.state,
            tools=len(self.tools),
            last_error=self.failure,
        )

    # -- lifecycle ---------------------------------------------------------

    async def supervise(self) -> None:
        """Connect, serve, reconnect, until the hub closes."""
        self._supervising = True
        delay = _BACKOFF_FIRST
        try:
            while not self.hub._closed:
                self._last_attempt = time.monotonic()
                lasted = await self._session()
                if self.hub._closed:
                    break
                if lasted is not None and lasted >= _SHORT_SESSION:
                    delay = _BACKOFF_FIRST
                    self._set_connecting()
                    continue  # a session that served a while: reconnect at once
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                self._wake = anyio.Event()
                delay = min(delay * 2, _BACKOFF_MAX)
                if not self.hub._closed:
                    self._set_connecting()
        finally:
            self._client = None
            self._settled.set()
            self._stopped.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def wait_stopped(self) -> None:
        if self._supervising:
            await self._stopped.wait()

    async def wait_settled(self) -> None:
        """Wait while connecting, up to `connectTimeout` (plus a margin for the stop)."""
        with anyio.move_on_after(self.server.codemode.connect_timeout + 1.0):
            await self._settled.wait()

    def _set_connecting(self) -> None:
        if self.state != "connecting":
            self.state = "connecting"
            self._settled = anyio.Event()

    def _set_settled(self, state: State, failure: ServerFailure | None = None) -> None:
        self.state = state
        if failure is not None:
            self.failure = failure
        self._settled.set()

    async def _session(self) -> float | None:
        """One connection, until it ends or the hub stops it. Returns how long it
        was ready, or None if it never was (the state is then `unavailable`)."""
        self._stop = stop = anyio.Event()
        if self.hub._closed:
            return None
        ready_at: float | None = None
        deadline = anyio.current_time() + self.server.codemode.connect_timeout
        try:
            marker = anyio.CancelScope()
            scope = anyio.CancelScope(deadline=deadline)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._guard_connect, deadline, marker, scope, stop)
                with scope:
                    async with self._connect() as client:
                        await self._refresh(client)
                        await self._probe_resources(client)
                        scope.deadline = math.inf
                        marker.cancel()
                        self._client = client
                        ready_at = time.monotonic()
                        self.failure = None
                        self._set_settled("ready")
                        async with anyio.create_task_group() as watchers:
                            watchers.start_soon(self._refresher, client)
                            watchers.start_soon(self._watch, client, stop)
                            if _is_modern(client) and _announces_tool_changes(client):
                                watchers.start_soon(self._listen, client)
                            await stop.wait()
                            watchers.cancel_scope.cancel()
                        self._client = None
                marker.cancel()
            if ready_at is None:
                raise _ConnectTimeout()
        except Exception as exc:  # every way a connect can fail becomes a typed record
            self._client = None
            if ready_at is None:
                failure = self._failure(exc)
                # Each retry that fails the same way is not news: shown once, then at info.
                repeated = self.failure is not None and self.failure.message == failure.message
                level = logging.INFO if repeated else logging.WARNING
                logger.log(level, "MCP server %r is unavailable: %s", self.server.name, failure.message)
                self._set_settled("unavailable", failure)
                return None
            # The session died under us (a crashed child, a dropped HTTP session).
            logger.warning("MCP server %r: the session ended (%s)", self.server.name, type(exc).__name__)
        finally:
            self._client = None
        if ready_at is None:
            return None
        if not self.hub._closed:
            self._set_connecting()
        return time.monotonic() - ready_at

    async def _guard_connect(
        self, deadline: float, marker: anyio.CancelScope, connect: anyio.CancelScope, stop: anyio.Event
    ) -> None:
        """While connecting: a stop ends the attempt at once, and callers learn
        of a timeout at the deadline, not after the child has been stopped."""
        with marker:
            with anyio.move_on_after(deadline - anyio.current_time()):
                await stop.wait()
                connect.cancel()
                return
        if not marker.cancel_called and self.state == "connecting":
            self._set_settled("unavailable", self._failure(_ConnectTimeout()))

    async def _watch(self, client: Client, stop: anyio.Event) -> None:
        # The SDK's client stays entered after its transport ends; notice it here.
        while not _known_closed(client):
            await anyio.sleep(_WATCH_INTERVAL)
        stop.set()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[Client]:
        options = self.server.codemode
        async with AsyncExitStack() as stack:
            errlog = (
                stack.enter_context(open_server_log(self.server.name)) if isinstance(self.server, StdioServer) else None
            )
            async with Client(
                self._transport(errlog), mode=options.protocol, cache=None, message_handler=self._on_message
            ) as client:
                yield client

    def _transport(self, errlog: TextIO | None) -> Any:
        server = self.server
        if isinstance(server, StdioServer):
            env = {k: v.get_secret_value() for k, v in server.env.items()}
            if sys.platform == "win32":  # pragma: no cover - our transport is POSIX only
                params = StdioServerParameters(command=server.command, args=list(server.args), cwd=server.cwd, env=env)
                return stdio_client(params, errlog=errlog or sys.stderr)
            # The child's stderr (tracebacks that may quote its env) goes to its own log file.
            return stdio.stdio_transport(
                stdio.StdioParams(command=server.command, args=list(server.args), env=env, cwd=server.cwd),
                max_message_bytes=self.hub.max_message_bytes,
                errlog=errlog or sys.stderr,
            )
        assert isinstance(server, HttpServer)
        return http.http_transport(
            server.url,
            {k: v.get_secret_value() for k, v in server.headers.items()},
            max_message_bytes=self.hub.max_message_bytes,
        )

    # -- tool lists --------------------------------------------------------

    async def _on_message(self, message: Any) -> None:
        # Handshake-era servers announce changes with a plain notification.
        if isinstance(message, types.ToolListChangedNotification):
            self._request_refresh()

    async def _listen(self, client: Client) -> None:
        # 2026-era servers announce changes only on a `subscriptions/listen` stream.
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    self._request_refresh()
        except Exception:  # the server may not serve listen; changes then go unnoticed
            logger.info("MCP server %r: no tool change subscription", self.server.name, exc_info=True)

    def _request_refresh(self) -> None:
        try:
            self._refresh_send.send_nowait(None)
        except anyio.WouldBlock:
            pass  # a refresh is already pending; it will see this change too

    async def _refresher(self, client: Client) -> None:
        async for _ in self._refresh_receive:
            try:
                with anyio.fail_after(self.server.codemode.connect_timeout):
                    await self._refresh(client)
            except Exception:  # a failed refresh keeps the old list; the next change retries
                logger.warning("MCP server %r: refreshing the tool list failed", self.server.name, exc_info=True)

    async def _refresh(self, client: Client) -> None:
        listed: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        signature = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed]
        if signature == self._signature:
            return  # keep the same Tool objects, so stub caches keyed on them still hit
        self._signature = signature
        self._schemas = {t.name: t.output_schema for t in listed}
        self._as_task = {t.name for t in listed if requires_task(t)}
        self.tools = [self._tool(t) for t in listed if self.server.codemode.permits(t.name) and self._nameable(t)]
        self.hub._tools_changed()

    def _nameable(self, tool: types.Tool) -> bool:
        """Whether `tool`'s name is free of configured secrets. A name cannot be
        redacted (calls need it as it is), so a tool named with a secret is left
        out, with one warning that does not quote it."""
        if self.hub.redact(tool.name) == tool.name:
            return True
        logger.warning("MCP server %r: a tool whose name holds a configured secret was left out", self.server.name)
        return False

    def _tool(self, tool: types.Tool) -> Tool:
        namespace, name = self.namespace, tool.name
        hub = self.hub

        inner = _wrapped_result_schema(name, tool.output_schema)
        self._unwrap[name] = inner is not None

        async def call(**arguments: Any) -> Any:
            return await hub.call_tool(namespace, name, arguments)

        # A server may write a configured secret into its own definitions; they
        # reach stubs, search and prompts, so they are redacted like results.
        redact = hub._redactor.value
        description = hub.redact(tool.description or "")
        if requires_task(tool):
            description = (f"{description}\n\n" if description else "") + "Runs as an MCP task."
        return Tool(
            name=name,
            namespace=namespace,
            fn=call,
            description=description,
            input_schema=redact(tool.input_schema),
            output_schema=redact(inner if inner is not None else tool.output_schema),
        )

    async def _probe_resources(self, client: Client) -> None:
        """Decide whether the server serves resources: it declares the capability
        and lists at least one resource or resource template. (The official
        Python SDK declares the capability for every server, so the capability
        alone would give servers without a single resource a `read_resource`.)
        Bounded by half the connect timeout; a probe that fails or runs out
        leaves the server without the tool, and connected."""
        serves = False
        if client.server_capabilities.resources:
            with anyio.move_on_after(self.server.codemode.connect_timeout / 2):
                try:
                    serves = bool((await client.list_resources()).resources)
                    if not serves:
                        serves = bool((await client.list_resource_templates()).resource_templates)
                except Exception:  # an optional probe of an untrusted server must not fail its connection
                    logger.info("MCP server %r: listing its resources failed", self.server.name, exc_info=True)
        if serves != (self.resource_tool is not None):
            self.resource_tool = read_resource_tool(self.namespace, self.hub.read_resource) if serves else None
            self.hub._tools_changed()

    # -- calls -------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        client = await self._ready_client()
        where = f"{self.namespace}.{name}"
        if name in self._as_task:
            result = await self._request(where, client, lambda: self._call_as_task(client, where, name, arguments))
        else:
            result = await self._request(where, client, lambda: client.call_tool(name, arguments))
        try:
            value = to_value(result, output_schema=self._schemas.get(name), redact=self.hub.redact)
            if self._unwrap.get(name) and isinstance(value, dict) and "result" in value:
                value = value["result"]
            # A server may echo what it was configured with: code never gets it.
            return self.hub._redactor.value(value)
        except ToolError as exc:
            # A server may echo what it was configured with; the model must not see it.
            raise ToolError(self.hub.redact(exc.message)) from None

    async def read_resource(self, uri: str) -> list[dict[str, Any]]:
        client = await self._ready_client()
        where = f"{self.namespace}.{READ_RESOURCE}({uri[:200]!r})"
        result = await self._request(where, client, lambda: client.read_resource(uri))
        # As for tool results: code must never hold a secret the server echoes.
        contents: list[dict[str, Any]] = self.hub._redactor.value(contents_value(result))
        return contents

    async def _call_as_task(self, client: Client, where: str, name: str, arguments: dict[str, Any]) -> Any:
        if _is_modern(client) or not serves_tool_tasks(client):
            raise ToolError(
                f"{where} failed: the tool must run as a task, and its server does not declare "
                "task-augmented tool calls for this connection"
            )

        def abandon(task_id: str) -> None:
            tg = self.hub._tg
            if tg is not None and not self.hub._closed:
                tg.start_soon(self._cancel_task, client, where, task_id)

        # Every server text its errors quote goes through `redact` before it is capped.
        return await call_as_task(
            client,
            name,
            arguments,
            where=where,
            bound=self.server.codemode.timeout,
            on_abandon=abandon,
            redact=self.hub.redact,
        )

    async def _cancel_task(self, client: Client, where: str, task_id: str) -> None:
        """Best effort: the task may have ended meanwhile, or the server may be gone."""
        with anyio.move_on_after(_CANCEL_TIMEOUT):
            try:
                await cancel_task(client, task_id)
            except Exception:  # an answer to a courtesy cancel changes nothing for the run
                logger.info("%s: tasks/cancel for an abandoned task failed", where, exc_info=True)

    async def _request(self, where: str, client: Client, request: Callable[[], Awaitable[_T]]) -> _T:
        """One request to the server, within its timeout; every way it can fail becomes a `ToolError`."""
        timeout = self.server.codemode.timeout
        try:
            with anyio.fail_after(timeout):
                return await request()
        except TimeoutError:
            raise ToolError(f"{where} timed out after {timeout:g} s") from None
        except MCPError as exc:
            raise self._call_error(where, client, exc) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self._lost()
            raise ToolError(
                f"{where} failed: the connection to the MCP server was lost "
                f"({type(exc).__name__}); it is reconnected in the background"
            ) from None
        except pydantic.ValidationError as exc:  # the SDK's model of the result refused it
            raise ToolError(f"{where} failed: the server's answer is malformed: {_describe(exc)}") from None
        except RuntimeError as exc:  # the SDK's own output-schema check
            raise ToolError(f"{where} failed: {self.hub.redact(str(exc))}") from None

    def _call_error(self, where: str, client: Client, exc: MCPError) -> ToolError:
        marker = exc.data.get("codemode") if isinstance(exc.data, dict) else None
        if marker == stdio.TOO_LARGE or http.TOO_LARGE in exc.message or http.SSE_TOO_LARGE in exc.message:
            return UpstreamResultTooLarge(f"{where} failed: {exc.message}")
        if marker == stdio.MALFORMED:
            return ToolError(f"{where} failed: {exc.message}")
        # The SDK reports a closed connection with -32000, which servers use for
        # their own errors too: only a session that did close is lost.
        if exc.code == types.CONNECTION_CLOSED and _known_closed(client):
            self._lost()
            return ToolError(
                f"{where} failed: the MCP server closed the connection; it is reconnected in the background"
            )
        return ToolError(f"{where} failed: {self.hub.redact(exc.message)}")

    async def _ready_client(self) -> Client:
        """The open session; waits while the server connects (up to its connectTimeout).

        Raises `ServerUnavailable`."""
        client = self._client
        if client is not None and _known_closed(client):
            self._lost()  # the child died between calls: the supervisor reconnects
        if self.state == "connecting":
            await self.wait_settled()
        client = self._client
        if self.state == "ready" and client is not None:
            return client
        if self.state == "unavailable" and time.monotonic() - self._last_attempt > _BACKOFF_FIRST:
            self._wake.set()  # retry now rather than at the end of the backoff
        if self.hub._closed:
            raise ToolError("the MCP hub is closed")
        why = self.failure.message if self.failure is not None else "it is still connecting"
        raise ServerUnavailable(
            f"MCP server {self.namespace!r} is unavailable ({why}); it is retried in the background"
        )

    def _lost(self) -> None:
        self._client = None
        self._set_connecting()
        self._stop.set()

    def _failure(self, exc: BaseException) -> ServerFailure:
        leaf = _first_leaf(exc)
        code: FailureCode
        if isinstance(leaf, (_ConnectTimeout, TimeoutError)):
            code = "connect_timeout"
            message = f"no answer within {self.server.codemode.connect_timeout:g} s"
        elif isinstance(leaf, OSError) and isinstance(self.server, StdioServer):
            code = "spawn_failed"
            message = f"cannot start {self.server.command!r}: {leaf.strerror or type(leaf).__name__}"
        elif isinstance(leaf, MCPError):
            code = "connect_failed"
            if leaf.code == types.CONNECTION_CLOSED:
                message = (
                    "the server exited or closed the connection during startup "
                    f"(see its stderr in {server_log_path(self.server.name)})"
                    if isinstance(self.server, StdioServer)
                    else "the server closed the connection during startup"
                )
            else:
                message = f"the server refused the connection: {leaf.message}"
        else:
            code = "connect_failed"
            message = f"{type(leaf).__name__}: {leaf}"
            if isinstance(self.server, HttpServer):
                # HTTP errors quote the URL, and some services put a key in its path.
                message = message.replace(self.server.url, "<url>")
        return ServerFailure(
            server=self.server.name, namespace=self.namespace, code=code, message=self.hub.redact(message)
        )


def _known_closed(client: Client) -> bool:
    """Whether the session already saw its transport end (a child that died
    between calls). Then a call would fail without being sent, so it is safe
    to reconnect first. The SDK keeps this private; if it moves, the first call
    after such a crash fails instead and the next one reconnects."""
    dispatcher = getattr(client.session, "_dispatcher", None)
    return getattr(dispatcher, "_closed", False) is True


def _wrapped_result_schema(name: str, schema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The schema of the real return type, if `schema` is the wrapper the MCP
    Python SDK makes for a tool that returns a non-object (`list[str]`, `int`):
    an object titled `<tool>Output` whose one property, required, is `result`.
    The stub then says `-> list[str]` and the call returns the list, instead of
    `{"result": [...]}`, which no reader of the tool's docstring would expect."""
    if not isinstance(schema, Mapping) or schema.get("type") != "object" or schema.get("title") != f"{name}Output":
        return None
    props = schema.get("properties")
    if not isinstance(props, Mapping) or list(props) != ["result"] or schema.get("required") != ["result"]:
        return None
    inner = props["result"]
    if not isinstance(inner, Mapping):
        return None
    unwrapped = dict(inner)
    for key in ("$defs", "definitions"):  # refs inside `result` point at the wrapper's definitions
        if key in schema and key not in unwrapped:
            unwrapped[key] = schema[key]
    return unwrapped


def _is_modern(client: Client) -> bool:
    return client.protocol_version in MODERN_PROTOCOL_VERSIONS


def _announces_tool_changes(client: Client) -> bool:
    tools = client.server_capabilities.tools
    return bool(tools and tools.list_changed)


def _describe(exc: pydantic.ValidationError) -> str:
    """Where a result failed the SDK's model, without echoing its data."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "it does not match MCP's result shape"
    loc = [p for p in errors[0]["loc"]]
    if len(loc) >= 2 and loc[0] == "content" and isinstance(loc[1], int):
        return (
            f"content block {loc[1]} is not a content block MCP defines (text, image, audio, resource, resource_link)"
        )
    path = ".".join(str(p) for p in loc[:4]) or "the result"
    return f"{path}: {errors[0]['msg']}"


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
