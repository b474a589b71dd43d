"""The Streamable HTTP transport to an upstream server, with a byte cap per answer.

The SDK's client caps one SSE event (1 MiB by default) but reads a JSON answer
(`application/json`) whole before parsing it: a server could make the host
allocate whatever it sends. Here every answer is held to the hub's
`max_message_bytes`, the cap a stdio server's messages have:
- an SSE event, through the SDK's own `max_sse_event_size` (its error names
  the limit: `SSE_TOO_LARGE`);
- a JSON body, by a transport that counts its bytes as they arrive and stops
  reading past the cap (its error carries `TOO_LARGE`); a `Content-Length`
  over the cap is refused before a byte of the body is read;
- a compressed answer, whose few bytes could inflate to gigabytes past any
  count of what arrives: the client asks for `identity`, and an answer with
  another `Content-Encoding` is refused unread (a clear error for its call).
The SDK turns either into a JSON-RPC error for the request, which the hub
reports as `tool_result_too_large`; the session goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

__all__ = ["SSE_TOO_LARGE", "TOO_LARGE", "http_transport"]

TOO_LARGE = "codemode: answer_too_large"
SSE_TOO_LARGE = "Server-sent event exceeded the"  # httpx2's words for an SSE event over its cap


class _AnswerTooLarge(httpx2.StreamError):
    def __init__(self, cap: int) -> None:
        super().__init__(f"{TOO_LARGE}: the server's answer is larger than {cap} bytes")


class _Compressed(httpx2.StreamError):
    def __init__(self, encoding: str) -> None:
        super().__init__(f"codemode: the server's answer is compressed ({encoding[:40]}), which was not asked for")


class _Refused(httpx2.AsyncByteStream):
    """A body not read at all: iterating it raises `error`."""

    def __init__(self, inner: httpx2.AsyncByteStream, error: httpx2.StreamError) -> None:
        self._inner, self._error = inner, error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise self._error
        yield b""  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedBody(httpx2.AsyncByteStream):
    """A body read as it arrives, refused once past `cap` bytes (at once if its
    declared length is). Raised while the SDK reads it, which turns it into an
    error for that request; raised from the transport, it would end the session."""

    def __init__(self, inner: httpx2.AsyncByteStream, cap: int, *, declared: int | None) -> None:
        self._inner, self._cap, self._declared = inner, cap, declared

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._declared is not None and self._declared > self._cap:
            raise _AnswerTooLarge(self._cap)
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._cap:
                raise _AnswerTooLarge(self._cap)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedTransport(httpx2.AsyncBaseTransport):
    """Holds each JSON answer's body to `cap` bytes (SSE is capped per event by the SDK)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, cap: int) -> None:
        self._inner, self._cap = inner, cap

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            response.stream = _Refused(response.stream, _Compressed(encoding))
            return response
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        length = response.headers.get("content-length", "")
        declared = int(length) if length.isdigit() else None
        response.stream = _CappedBody(response.stream, self._cap, declared=declared)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def http_transport(url: str, headers: dict[str, str], *, max_message_bytes: int) -> AsyncIterator[Any]:
    """The SDK's Streamable HTTP client streams for `url`, every answer capped at `max_message_bytes`."""
    # The SDK's own timeouts (`create_mcp_http_client`); we own the client's lifetime.
    client = httpx2.AsyncClient(
        # Not compressed: a compressed answer's size is not known until it is inflated.
        headers={**headers, "Accept-Encoding": "identity"},
        timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
        transport=_CappedTransport(httpx2.AsyncHTTPTransport(), max_message_bytes),
    )
    async with client, streamable_http_client(url, http_client=client, max_sse_event_size=max_message_bytes) as streams:
        yield streams
