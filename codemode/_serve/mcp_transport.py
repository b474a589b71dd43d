"""The MCP server over Streamable HTTP, behind the HTTP service's own guard.

- Bind 127.0.0.1 by default; any other address needs a bearer token (checked
  by `cli_main` before anything starts).
- `guards.Guard` checks Host, Origin, the token and the body exactly as it
  does for `codemode serve`, and refuses in the same problem shape. The SDK's
  own DNS-rebinding check is off: it would answer the same request with a
  different status and body.
- uvicorn's own signal handlers are off: the caller handles SIGINT/SIGTERM,
  starts a graceful stop (open streams get a bounded grace period), and then
  closes its upstream sessions.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp

from .guards import Guard, GuardSettings

__all__ = ["http_app", "serve_http"]

logger = logging.getLogger("codemode.mcp")

MCP_PATH = "/mcp"
SHUTDOWN_GRACE_S = 5
"""Seconds open SSE streams get to finish on shutdown before they are cut."""


MAX_SESSIONS = 1_000
SESSION_IDLE_S = 600.0


def http_app(
    server: MCPServer,
    *,
    host: str,
    token: str | None,
    allow_origins: Sequence[str],
    tokens: Mapping[str, str] | None = None,
    max_sessions: int = MAX_SESSIONS,
    session_idle_s: float = SESSION_IDLE_S,
) -> ASGIApp:
    """The server's Streamable HTTP app at `/mcp`, behind the shared `Guard`.
    `tokens` maps more bearer tokens to their clients' names; `token` is client "default".

    Sessions are bounded: each holds about 38 kB until it ends (3,000 opened
    and left added 114 MB, kept for the SDK's 30 minutes, up to its 10,000), so
    at most `max_sessions` are open (then the SDK answers 503) and one without
    a request for `session_idle_s` is closed (then its id answers 404)."""
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=security,
        host=host,
        max_sessions=max_sessions,
        session_idle_timeout=session_idle_s,
    )
    accepted = dict(tokens or {})
    if token:
        accepted[token] = "default"
    settings = GuardSettings(host=host, tokens=accepted, allow_origins=tuple(allow_origins))
    return cast(ASGIApp, Guard(cast(Any, app), settings=settings))


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the caller's handles signals:
    uvicorn's re-raises the signal after shutdown, which for SIGTERM ends the
    process before the caller's cleanup runs), telling when it listens."""

    def __init__(self, config: uvicorn.Config, *, on_listening: Callable[[Callable[[], None]], None] | None) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._on_listening is not None and not self.should_exit:
            self._on_listening(self.stop)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                # Tests and scripts read this line to find the port (with --port 0).
                logger.info("MCP server listening on http://%s:%d%s", shown, port, MCP_PATH)


async def serve_http(
    server: MCPServer,
    *,
    host: str,
    port: int,
    token: str | None,
    allow_origins: Sequence[str],
    tokens: Mapping[str, str] | None = None,
    on_listening: Callable[[Callable[[], None]], None] | None = None,
    max_sessions: int = MAX_SESSIONS,
    session_idle_s: float = SESSION_IDLE_S,
) -> None:
    """Serve until stopped: `on_listening` is handed a function that starts a
    graceful stop (open streams get `SHUTDOWN_GRACE_S`); cancelling stops at once.

    Raises `OSError` if the address cannot be bound."""
    config = uvicorn.Config(
        http_app(
            server,
            host=host,
            token=token,
            allow_origins=allow_origins,
            tokens=tokens,
            max_sessions=max_sessions,
            session_idle_s=session_idle_s,
        ),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    uv = _Server(config, on_listening=on_listening)
    try:
        await uv.serve()
    except SystemExit:  # uvicorn's answer to a failed bind or startup
        raise OSError(f"cannot serve on {host}:{port} (see the error above)") from None
