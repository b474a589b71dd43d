"""The MCP server over Streamable HTTP, with the HTTP service's network rules.

- Bind 127.0.0.1 by default; any other address needs a bearer token (checked
  by `cli_main` before anything starts).
- With a token, every request needs `Authorization: Bearer <token>`.
- A request with an `Origin` header must come from an allowed origin: loopback
  pages, plus each `--allow-origin`. Browsers always send Origin on
  cross-origin requests, so a web page cannot drive the server (DNS
  rebinding, CSRF). On loopback binds the SDK's own DNS-rebinding protection
  (`TransportSecuritySettings`) also checks the Host header; on other binds
  the Host cannot be known in advance (0.0.0.0 answers to any name), and the
  token is what keeps strangers out.
- uvicorn's own signal handlers are off: the caller handles SIGINT/SIGTERM,
  starts a graceful stop (open streams get a bounded grace period), and then
  closes its upstream sessions.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Iterator, Sequence

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OriginAndTokenGuard", "http_app", "is_loopback", "serve_http"]

logger = logging.getLogger("codemode.mcp")

MCP_PATH = "/mcp"
SHUTDOWN_GRACE_S = 5
"""Seconds open SSE streams get to finish on shutdown before they are cut."""

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
LOOPBACK_ORIGINS = tuple(
    f"{scheme}://{name}{port}" for scheme in ("http", "https") for name in _LOOPBACK_NAMES for port in ("", ":*")
)
"""Origins allowed without configuration: pages served from this machine."""


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    # The SDK's pattern language: an exact origin, or `base:*` for any port.
    origin = origin.rstrip("/").lower()
    for pattern in allowed:
        pattern = pattern.rstrip("/").lower()
        if origin == pattern:
            return True
        if pattern.endswith(":*") and origin.startswith(pattern[:-1]) and origin[len(pattern) - 1 :].isdigit():
            return True
    return False


class OriginAndTokenGuard:
    """ASGI middleware in front of every route: refuses disallowed Origins (403)
    and, when a token is set, requests without it (401)."""

    def __init__(self, app: ASGIApp, *, token: str | None, allow_origins: Sequence[str]) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self._origins = (*LOOPBACK_ORIGINS, *allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not _origin_allowed(origin, self._origins):
            logger.warning("refused a request from Origin %r (allow it with --allow-origin)", origin)
            await _refuse(send, 403, "origin_not_allowed", "this Origin may not call the server")
            return
        if self._token is not None:
            scheme, _, credential = headers.get("authorization", "").partition(" ")
            # compare_digest: the time taken must not reveal how much of a guess was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), self._token):
                await _refuse(
                    send,
                    401,
                    "unauthorized",
                    "a valid `Authorization: Bearer <token>` is required",
                    extra=[(b"www-authenticate", b'Bearer realm="codemode"')],
                )
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, code: str, message: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


def http_app(server: MCPServer, *, host: str, token: str | None, allow_origins: Sequence[str]) -> ASGIApp:
    """The server's Streamable HTTP app at `/mcp`, behind the Origin and token guard."""
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if is_loopback(host):
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"{name}{port}" for name in _LOOPBACK_NAMES for port in ("", ":*")],
            allowed_origins=[*LOOPBACK_ORIGINS, *allow_origins],
        )
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, transport_security=security, host=host)
    return OriginAndTokenGuard(app, token=token, allow_origins=allow_origins)


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
    on_listening: Callable[[Callable[[], None]], None] | None = None,
) -> None:
    """Serve until stopped: `on_listening` is handed a function that starts a
    graceful stop (open streams get `SHUTDOWN_GRACE_S`); cancelling stops at once.

    Raises `OSError` if the address cannot be bound."""
    config = uvicorn.Config(
        http_app(server, host=host, token=token, allow_origins=allow_origins),
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
