"""The upstream hub: one MCP client session per configured server.

`Hub` is where tool calls leave codemode. It owns one anyio task group; each
server gets a supervisor task in it that enters the SDK `Client` (which spawns
the stdio child or opens the HTTP session), lists the tools, watches for tool
list changes, and on shutdown leaves the client in the same task that entered
it, as anyio's cancel scopes require. Everything `mcp` stays in this module and
`results`: callers see `codemode.Tool`s, `ToolError`s and `ServerFailure`s.

Failure policy:
- a server that cannot start is recorded in `Hub.failures` and its tools are
  left out; the others work. A direct `Hub.call_tool` to it tries to start it again;
- a call whose connection dies fails (it is not retried: tools may not be
  idempotent), and the next call to that server starts it again;
- a call that exceeds the server's `timeout` fails with a `ToolError`;
- allow/deny lists are checked on the host for every call, not just listing.
Messages never carry configured secrets: they are redacted from every text
built from a lower-level error.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .._errors import ToolError
from .._tools import Tool
from .config import Config, HttpServer, ServerConfig, StdioServer
from .results import to_value

__all__ = ["Hub", "ServerFailure"]

logger = logging.getLogger("codemode")

# A listing that never ends must not hang a connect.
_MAX_PAGES = 1_000
# The SDK's stdio shutdown takes at most ~6 s (stdin close, SIGTERM, SIGKILL).
_STOP_TIMEOUT = 8.0

FailureCode = Literal["spawn_failed", "connect_timeout", "connect_failed"]


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


class _ConnectTimeout(Exception):
    pass


class Hub:
    """Client sessions to every configured server, as `codemode.Tool`s.

        async with Hub(load_config("mcp.json")) as hub:
            result = await Sandbox().run(code, tools=hub.tools())

    Entering connects to all servers concurrently and never raises for a server
    that fails: see `failures`. Leaving closes every session and stops every
    child process, within a bounded time, even when cancelled.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._secrets = sorted(set(config.secrets()), key=len, reverse=True)
        self._upstreams = {s.namespace: _Upstream(s, self) for s in config.servers.values()}
        self._failures: dict[str, ServerFailure] = {}
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

    async def open(self) -> None:
        """Connect to every server concurrently. Failures go to `failures`; this
        raises only `RuntimeError` if the hub was already opened."""
        if self._stack is not None:
            raise RuntimeError("a Hub can be opened once")
        self._stack = AsyncExitStack()
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        try:
            async with anyio.create_task_group() as starters:
                for upstream in self._upstreams.values():
                    starters.start_soon(self._start, upstream)
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
        # Whatever did not stop in time is cancelled; the SDK's stdio transport
        # still kills its child in a shielded, bounded finally. (The task group is
        # left outside the shield: cancel scopes must exit in the order entered,
        # and a task group always waits for its tasks anyway.)
        self._tg.cancel_scope.cancel()
        await self._stack.aclose()

    @property
    def failures(self) -> Mapping[str, ServerFailure]:
        """Servers that are not available, by namespace."""
        return dict(self._failures)

    @property
    def namespaces(self) -> list[str]:
        """Namespaces of the servers that are connected."""
        return [ns for ns, u in self._upstreams.items() if ns not in self._failures]

    def is_connected(self, namespace: str) -> bool:
        """Whether that server's session is open. False for a failed server, and
        for one whose process died, until the next call restarts it."""
        upstream = self._upstreams.get(namespace)
        client = upstream._client if upstream is not None else None
        return client is not None and not _known_closed(client)

    def tools(self) -> list[Tool]:
        """The tools of every connected server that its allow/deny lists permit,
        one namespace per server. The same `Tool` objects are returned until a
        server's tool list changes."""
        tools: list[Tool] = []
        for ns, upstream in self._upstreams.items():
            if ns not in self._failures:
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

        Raises `ToolError` if the server is unknown or unavailable, the tool is not
        permitted by the configuration, the call fails or times out, or the tool
        reports an error."""
        upstream = self._upstreams.get(namespace)
        if upstream is None:
            raise ToolError(f"there is no MCP server {namespace!r}")
        if not upstream.server.codemode.permits(name):
            raise ToolError(f"{namespace}.{name} is not allowed by the codemode configuration")
        if self._closed or self._tg is None:
            raise ToolError("the MCP hub is closed")
        return await upstream.call(name, dict(arguments or {}))

    def redact(self, text: str) -> str:
        """`text` with every configured secret replaced by `***`."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _tools_changed(self) -> None:
        self._generation += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _start(self, upstream: _Upstream) -> None:
        failure = await upstream.start()
        if failure is not None:
            self._failures[upstream.namespace] = failure
        else:
            self._failures.pop(upstream.namespace, None)


class _Upstream:
    """One server's connection and tool list; its supervisor task owns the `Client`."""

    def __init__(self, server: ServerConfig, hub: Hub) -> None:
        self.server = server
        self.hub = hub
        self.namespace = server.namespace
        self.tools: list[Tool] = []
        self._schemas: dict[str, Mapping[str, Any] | None] = {}
        self._unwrap: dict[str, bool] = {}
        self._signature: list[dict[str, Any]] | None = None
        self._client: Client | None = None
        # Set by the supervisor task while one runs.
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._reconnect_lock = anyio.Lock()
        self._refresh_send, self._refresh_receive = anyio.create_memory_object_stream[None](1)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> ServerFailure | None:
        """Start the supervisor task; the failure if the server could not connect."""
        assert self.hub._tg is not None
        try:
            await self.hub._tg.start(self._supervise)
        except Exception as exc:  # every way a connect can fail becomes a typed record
            failure = self._failure(exc)
            logger.warning("MCP server %r is unavailable: %s", self.server.name, failure.message)
            return failure
        return None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def wait_stopped(self) -> None:
        if self._stopped is not None:
            await self._stopped.wait()

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop, self._stopped = stop, stopped = anyio.Event(), anyio.Event()
        started = False
        # A supervisor that outlived its stop must not clear its successor's client.
        client_box: list[Client | None] = [None]
        try:
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + self.server.codemode.connect_timeout
                async with self._connect() as client:
                    await self._refresh(client)
                    scope.deadline = math.inf
                    self._client = client_box[0] = client
                    started = True
                    task_status.started()
                    async with anyio.create_task_group() as watchers:
                        watchers.start_soon(self._refresher, client)
                        if _is_modern(client) and _announces_tool_changes(client):
                            watchers.start_soon(self._listen, client)
                        await stop.wait()
                        watchers.cancel_scope.cancel()
            if not started:
                raise _ConnectTimeout()
        except Exception:
            if not started:
                raise
            # The session died under us (a crashed child, a dropped HTTP session):
            # the next call reconnects.
            logger.warning("MCP server %r: the session ended", self.server.name, exc_info=True)
        finally:
            if self._client is client_box[0]:
                self._client = None
            stopped.set()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[Client]:
        options = self.server.codemode
        async with Client(
            self._transport(), mode=options.protocol, cache=None, message_handler=self._on_message
        ) as client:
            yield client

    def _transport(self) -> Any:
        server = self.server
        if isinstance(server, StdioServer):
            params = StdioServerParameters(
                command=server.command,
                args=list(server.args),
                cwd=server.cwd,
                env={k: v.get_secret_value() for k, v in server.env.items()},
            )
            return stdio_client(params, errlog=sys.stderr)
        assert isinstance(server, HttpServer)
        return _http_transport(server.url, {k: v.get_secret_value() for k, v in server.headers.items()})

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
        self.tools = [self._tool(t) for t in listed if self.server.codemode.permits(t.name)]
        self.hub._tools_changed()

    def _tool(self, tool: types.Tool) -> Tool:
        namespace, name = self.namespace, tool.name
        hub = self.hub

        inner = _wrapped_result_schema(name, tool.output_schema)
        self._unwrap[name] = inner is not None

        async def call(**arguments: Any) -> Any:
            return await hub.call_tool(namespace, name, arguments)

        return Tool(
            name=name,
            namespace=namespace,
            fn=call,
            description=tool.description or "",
            input_schema=tool.input_schema,
            output_schema=inner if inner is not None else tool.output_schema,
        )

    # -- calls -------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        client = await self._connected()
        options = self.server.codemode
        where = f"{self.namespace}.{name}"
        try:
            with anyio.fail_after(options.timeout):
                result = await client.call_tool(name, arguments)
        except TimeoutError:
            raise ToolError(f"{where} timed out after {options.timeout:g} s") from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self._lost()
                raise ToolError(
                    f"{where} failed: the MCP server closed the connection; it is restarted on the next call"
                ) from None
            raise ToolError(f"{where} failed: {self.hub.redact(exc.message)}") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self._lost()
            raise ToolError(
                f"{where} failed: the connection to the MCP server was lost "
                f"({type(exc).__name__}); it is restarted on the next call"
            ) from None
        except RuntimeError as exc:  # the SDK's own output-schema check
            raise ToolError(f"{where} failed: {self.hub.redact(str(exc))}") from None
        try:
            value = to_value(result, output_schema=self._schemas.get(name))
            if self._unwrap.get(name) and isinstance(value, dict) and "result" in value:
                value = value["result"]
            return value
        except ToolError as exc:
            # A server may echo what it was configured with; the model must not see it.
            raise ToolError(self.hub.redact(exc.message)) from None

    async def _connected(self) -> Client:
        client = self._client
        if client is not None and not _known_closed(client):
            return client
        async with self._reconnect_lock:
            if self._client is not None and not _known_closed(self._client):
                return self._client
            if self.hub._closed:
                raise ToolError("the MCP hub is closed")
            # Bounded by the stop and connect timeouts; shielded so a caller's
            # cancellation cannot leave a half-started connection behind.
            with anyio.CancelScope(shield=True):
                self.stop()
                with anyio.move_on_after(_STOP_TIMEOUT):
                    await self.wait_stopped()
                await self.hub._start(self)
            failure = self.hub._failures.get(self.namespace)
            if failure is not None or self._client is None:
                message = failure.message if failure else "the server did not start"
                raise ToolError(f"MCP server {self.namespace!r} is unavailable: {message}")
            return self._client

    def _lost(self) -> None:
        self._client = None
        self.stop()

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
                message = "the server exited or closed the connection during startup (see its stderr)"
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


@asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    # The SDK's own client factory, so timeouts match its defaults; we own its lifetime.
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


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


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
