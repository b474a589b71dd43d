"""What both network surfaces check before a request reaches `CodeMode`, and their one error shape.

Both `codemode serve` and `codemode mcp --http` put `Guard` outermost. In order:

1. **Host.** A request must carry a Host header (HTTP/1.1 requires one; a
   request without it is refused, 400). On a loopback bind the Host must be a
   loopback name, so a page whose name was rebound to 127.0.0.1 is refused
   (403 `forbidden_host`). Off loopback the Host cannot be known in advance
   (0.0.0.0 answers to any name): the token is what keeps strangers out.
2. **Origin.** A request with an Origin must come from a loopback page or an
   `--allow-origin` (exact, `scheme://host:*` for any port, or `*`). Browsers
   always send Origin on cross-origin requests, so a web page cannot drive the
   server (DNS rebinding, CSRF): 403 `forbidden_origin`.
3. **Token.** With tokens configured, every path but `/healthz` needs
   `Authorization: Bearer <token>` (401 `unauthorized`), compared in constant
   time against every token. The token's client name is put in
   `scope["state"]["client"]` (Starlette's `request.state.client`); without
   tokens every caller is `anonymous`. CORS preflights carry no token and pass
   to the app's CORS handler.
4. **Body.** The body is read before the app sees it, counting bytes as they
   come (a chunked upload or a lying Content-Length is cut off, 413
   `body_too_large`), and within `body_timeout_s` (a client that stops sending
   half way gets 408 `request_timeout` and loses its connection, instead of
   holding it forever).

Every refusal, here and in the surfaces' handlers, is one problem shape
(`application/problem+json`): `{code, title, detail, status, ...extra}` with a
stable `code`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

__all__ = [
    "ANONYMOUS",
    "PROBLEM_TYPE",
    "Guard",
    "GuardSettings",
    "hostname",
    "is_loopback",
    "origin_allowed",
    "problem_body",
    "read_tokens_file",
    "send_problem",
]

logger = logging.getLogger("codemode.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ANONYMOUS = "anonymous"
"""The client name of every caller when no tokens are configured."""
PROBLEM_TYPE = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    499: "Client closed request",
    500: "Internal server error",
    503: "Service unavailable",
}
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hostname(host_header: str) -> str:
    """The name in a Host header, without its port."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    """Whether a browser page at `origin` may call: a loopback page, or one `allowed`
    names exactly, as `scheme://host:*` (any port), or `*` (any page)."""
    origin = origin.rstrip("/").lower()
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and is_loopback(parts.hostname or ""):
        return True
    for pattern in allowed:
        pattern = pattern.rstrip("/").lower()
        if pattern == "*" or origin == pattern:
            return True
        if pattern.endswith(":*") and origin.startswith(pattern[:-1]) and origin[len(pattern) - 1 :].isdigit():
            return True
    return False


def problem_body(status: int, code: str, detail: str, *, title: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one error shape: `{code, title, detail, status, ...extra}`."""
    return {"code": code, "title": title or TITLES.get(status, "Error"), "detail": detail, "status": status, **extra}


async def send_problem(
    send: Send, status: int, code: str, detail: str, *, headers: Sequence[tuple[bytes, bytes]] = (), **extra: Any
) -> None:
    """Answer a raw ASGI request with a problem (for middleware, which has no framework)."""
    body = json.dumps(problem_body(status, code, detail, **extra)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def read_tokens_file(path: str) -> dict[str, str]:
    """Tokens from a file, one a line: `TOKEN` or `TOKEN NAME` (`#` starts a comment).

    Returns token -> client name (a token without a name is named `client-N`, its line number).
    Raises `ValueError` for an unreadable file, an empty one, or a token given twice."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the tokens file {path!r}: {exc.strerror or exc}") from exc
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        token, name = words[0], (words[1] if len(words) > 1 else f"client-{number}")
        if token in tokens:
            raise ValueError(f"{path}:{number}: this token is already given on another line")
        tokens[token] = name
    if not tokens:
        raise ValueError(f"the tokens file {path!r} holds no token")
    return tokens


@dataclass(frozen=True, kw_only=True)
class GuardSettings:
    """What `Guard` lets in. `tokens` maps each accepted bearer token to its client's name."""

    host: str
    tokens: Mapping[str, str] = field(default_factory=dict)
    allow_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 30.0
    public_paths: frozenset[str] = frozenset({"/healthz"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class Guard:
    """ASGI middleware, outermost on both surfaces: Host, Origin, token, body (see the module docstring).

    Pure ASGI: it never buffers a response, so SSE streams through it. `on_reject`
    is told the `code` of each refusal (for metrics)."""

    def __init__(
        self, app: ASGIApp, *, settings: GuardSettings, on_reject: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        self.check_host = is_loopback(settings.host)
        self.tokens = [(token.encode(), name) for token, name in settings.tokens.items()]
        self.on_reject = on_reject

    async def refuse(
        self,
        scope: Scope,
        send: Send,
        status: int,
        code: str,
        detail: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        if self.on_reject is not None:
            self.on_reject(code)
        origin = _header(scope, b"origin")
        if origin is not None and origin_allowed(origin, self.settings.allow_origins):
            # So a page that may call sees why it was refused (CORS sits inside the guard).
            headers = [*headers, (b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        await send_problem(send, status, code, detail, headers=headers)

    def client_for(self, authorization: str | None) -> str | None:
        """The client a header authenticates, or None. Every token is compared, in
        constant time, so neither the time taken nor which comparison stopped
        tells how much of a guess was right."""
        scheme, _, credential = (authorization or "").partition(" ")
        given = credential.strip().encode("latin-1")
        client = None
        for token, name in self.tokens:
            if hmac.compare_digest(given, token) and scheme.lower() == "bearer":
                client = name
        return client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if host is None:
            await self.refuse(scope, send, 400, "missing_host", "the request has no Host header")
            return
        if self.check_host and not is_loopback(hostname(host)):
            await self.refuse(
                scope,
                send,
                403,
                "forbidden_host",
                "this server is bound to loopback and only answers to a loopback Host (localhost, 127.0.0.1, [::1])",
            )
            return
        origin = _header(scope, b"origin")
        if origin is not None and not origin_allowed(origin, self.settings.allow_origins):
            logger.warning("refused a request from Origin %r (allow it with --allow-origin)", origin)
            await self.refuse(
                scope,
                send,
                403,
                "forbidden_origin",
                f"requests from origin {origin[:200]!r} are not allowed; start the server with --allow-origin to allow it",
            )
            return
        client = ANONYMOUS
        preflight = scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None
        if self.tokens and scope["path"] not in self.settings.public_paths and not preflight:
            found = self.client_for(_header(scope, b"authorization"))
            if found is None:
                await self.refuse(
                    scope,
                    send,
                    401,
                    "unauthorized",
                    "a valid 'Authorization: Bearer <token>' header is required",
                    headers=[(b"www-authenticate", b'Bearer realm="codemode"')],
                )
                return
            client = found
        scope.setdefault("state", {})["client"] = client
        await self._with_body(scope, receive, send)

    async def _with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self.refuse(scope, send, 413, "body_too_large", f"the request body exceeds {limit} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.settings.body_timeout_s) as timer:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away before sending its body
                chunk = bytes(message.get("body", b""))
                size += len(chunk)
                if size > limit:
                    await self.refuse(scope, send, 413, "body_too_large", f"the request body exceeds {limit} bytes")
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if timer.cancelled_caught:
            await self.refuse(
                scope,
                send,
                408,
                "request_timeout",
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
                headers=[(b"connection", b"close")],
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)
