"""The stdio transport: a server's child process, newline-delimited JSON-RPC, a byte cap per message.

We own this transport instead of using the SDK's `mcp.client.stdio` for two reasons.
1. Size. The SDK's reader joins and splits its text buffer on every chunk
   (`(buffer + chunk).split("\\n")`), quadratic in a message's size and with no
   cap: a 50 MB answer held the event loop for tens of seconds and hundreds of MB.
   Here bytes are framed as they arrive: a message's bytes are kept only up to
   `max_message_bytes`; past it the rest of the line is discarded as it streams
   in, and the request is answered at once with a JSON-RPC error the hub turns
   into `tool_result_too_large`. Memory per message stays under the cap plus one
   chunk (64 KiB), time linear in the bytes.
2. Malformed answers. The SDK drops a line it cannot validate (a `null` result,
   nesting deeper than its parser allows), so the caller waited out its whole
   timeout. Here a line that is not a valid JSON-RPC message but carries the id of
   a response is answered for that id with an error saying what was wrong.

Synthesized errors carry `data={"codemode": MALFORMED | TOO_LARGE}` so the hub
can tell them from the server's own (a server can forge them, but only for its
own calls). An id is read from the start or the end of an oversized or
unparsable line (`{"jsonrpc":"2.0","id":7,...` or `...,"id":7}`), never from
inside it; a line with neither is dropped and logged, like the SDK does.

What goes to the server, the child's environment and its shutdown follow the
SDK's transport: messages written by one task; on exit, stdin closed, then the
whole process group terminated (SIGTERM, then SIGKILL), also when the server
itself exited but left children behind in its group (a wrapper script's
server, a helper it spawned). POSIX only: on Windows the hub uses the SDK's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import IO

import anyio
import anyio.abc
import anyio.lowlevel
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import get_default_environment
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

__all__ = ["MALFORMED", "TOO_LARGE", "Framer", "StdioParams", "stdio_transport"]

logger = logging.getLogger("codemode")

MALFORMED = "malformed_answer"
TOO_LARGE = "answer_too_large"
# JSON-RPC's range for implementation-defined server errors.
_SYNTHESIZED_CODE = -32099

# Grace for the server to exit on its own after its stdin closes, then for SIGTERM.
_EXIT_GRACE = 2.0
_WRITER_FLUSH = 0.5
# Kept from the start and the end of a line that is not parsed, to find its id.
_EDGE = 4096
_CHUNK = 65536

_ID = rb'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")'
_ID_FIRST = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?' + _ID + rb"\s*,")
_ID_LAST = re.compile(rb",\s*" + _ID + rb"\s*\}\s*$")
_METHOD_FIRST = re.compile(rb'^\s*\{\s*(?:"(?:jsonrpc|id)"\s*:\s*(?:"[^"]*"|-?\d+)\s*,\s*){0,2}"method"\s*:')


@dataclass(frozen=True, kw_only=True)
class StdioParams:
    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass
class Line:
    """One complete line, or the edges of one that was over the cap."""

    data: bytes
    size: int
    oversized: bool = False
    tail: bytes = b""


class Framer:
    """Newline-delimited framing with a byte cap per line, fed chunk by chunk.

    `feed` returns the complete lines of a chunk; an oversized line is reported
    once when it crosses the cap (`crossed`, its first bytes) and once when it
    ends (a `Line` with `oversized=True`, its first and last bytes and size)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skipping = False
        self._head = b""
        self._tail = b""
        self._skipped = 0

    def feed(self, chunk: bytes) -> tuple[list[Line], bytes | None]:
        lines: list[Line] = []
        crossed: bytes | None = None
        view = memoryview(chunk)
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = view[start:] if nl < 0 else view[start:nl]
            if self._skipping:
                self._skipped += len(piece)
                self._tail = (self._tail + bytes(piece[-_EDGE:]))[-_EDGE:]
            elif len(self._buf) + len(piece) > self.max_bytes:
                self._skipping = True
                self._head = (bytes(self._buf[:_EDGE]) + bytes(piece[:_EDGE]))[:_EDGE]
                self._tail = bytes(piece[-_EDGE:])
                self._skipped = len(self._buf) + len(piece)
                self._buf = bytearray()
                crossed = self._head
            else:
                self._buf += piece
            if nl < 0:
                return lines, crossed
            if self._skipping:
                lines.append(Line(data=self._head, tail=self._tail, size=self._skipped, oversized=True))
                self._skipping, self._head, self._tail, self._skipped = False, b"", b"", 0
            elif self._buf.strip():
                lines.append(Line(data=bytes(self._buf), size=len(self._buf)))
                self._buf = bytearray()
            else:
                self._buf = bytearray()
            start = nl + 1


def response_id(head: bytes, tail: bytes = b"") -> types.RequestId | None:
    """The id of the response a line starts or ends with, if it is one (not a request)."""
    if _METHOD_FIRST.match(head):
        return None
    match = _ID_FIRST.match(head) or _ID_LAST.search(tail or head)
    if match is None:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return None
    return value if isinstance(value, (int, str)) else None


def _synthesized(request_id: types.RequestId, kind: str, message: str) -> SessionMessage:
    error = types.ErrorData(code=_SYNTHESIZED_CODE, message=message, data={"codemode": kind})
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


def _why_malformed(line: bytes, exc: ValueError) -> str:
    try:
        data = json.loads(line)
    except RecursionError:
        return "it is nested too deeply to read"
    except ValueError:
        if "recursion limit" in str(exc):
            return "it is nested too deeply to read"
        return "it is not valid JSON"
    if isinstance(data, dict) and "result" in data and not isinstance(data["result"], dict):
        kind = "null" if data["result"] is None else type(data["result"]).__name__
        return f"its result is {kind}, not an object"
    return "it is not a valid JSON-RPC response"


def parse_line(line: Line, max_bytes: int) -> SessionMessage | Exception | None:
    """What the session receives for one line: a message, a synthesized error
    for the request it answers, or (unattributable) an exception, as the SDK does."""
    if line.oversized:
        request_id = response_id(line.data, line.tail)
        if request_id is None:
            logger.warning("MCP server sent a %d-byte message over the %d-byte limit; dropped", line.size, max_bytes)
            return None
        return _synthesized(
            request_id, TOO_LARGE, f"the server's answer is over the {max_bytes}-byte limit ({line.size} bytes)"
        )
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line.data, by_name=False))
    except ValueError as exc:
        request_id = response_id(line.data[:_EDGE], line.data[-_EDGE:])
        if request_id is None:
            logger.warning("MCP server sent a line that is not a JSON-RPC message; dropped")
            return exc
        return _synthesized(
            request_id, MALFORMED, f"the server's answer is malformed: {_why_malformed(line.data, exc)}"
        )


@asynccontextmanager
async def stdio_transport(
    params: StdioParams, *, max_message_bytes: int, errlog: IO[str] | None = None
) -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """Start the server and yield the session's (read, write) streams.

    Raises `OSError` if the process cannot be started. Leaving stops the whole
    process group within about 5 s, shielded from cancellation."""
    process = await anyio.open_process(
        [params.command, *params.args],
        env=get_default_environment() | params.env,
        stderr=errlog,
        cwd=params.cwd,
        start_new_session=True,
    )
    # No awaits between the spawn and the task group, or a cancellation would leak the process.
    read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done = anyio.Event()

    async def reader() -> None:
        assert process.stdout is not None
        framer = Framer(max_message_bytes)
        answered: types.RequestId | None = None
        try:
            async with read_send:
                async for chunk in process.stdout:
                    lines, crossed = framer.feed(chunk)
                    if crossed is not None:
                        # Answer the caller now; the rest of the line is only skipped.
                        answered = response_id(crossed)
                        if answered is not None:
                            await read_send.send(
                                _synthesized(
                                    answered,
                                    TOO_LARGE,
                                    f"the server's answer is over the {max_message_bytes}-byte limit",
                                )
                            )
                    for line in lines:
                        if line.oversized and answered is not None:
                            answered = None
                            continue
                        item = parse_line(line, max_message_bytes)
                        if item is not None:
                            await read_send.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass  # shutdown closed a stream under us, or the pipe broke: the session sees EOF

    async def writer() -> None:
        assert process.stdin is not None
        try:
            async with write_receive:
                async for message in write_receive:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode("utf-8"))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_send.aclose()  # the server stopped reading: let the session see the end
        finally:
            writer_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_receive, write_send
        finally:
            with anyio.CancelScope(shield=True):
                write_send.close()
                with anyio.move_on_after(_WRITER_FLUSH):
                    await writer_done.wait()
                await stop_process(process)
                read_receive.close()
            tg.cancel_scope.cancel()


async def stop_process(process: anyio.abc.Process) -> None:
    """Close stdin, give the server `_EXIT_GRACE` to exit, then terminate its
    process group (SIGTERM, SIGKILL after `_EXIT_GRACE`); the group is
    terminated even when the server exited by itself, so nothing it started
    outlives it. Bounded (about 4 s plus a reap)."""
    for pipe in (process.stdin,):
        if pipe is not None:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await pipe.aclose()
    with anyio.move_on_after(_EXIT_GRACE):
        while process.returncode is None:
            await anyio.sleep(0.01)
    await terminate_posix_process_tree(process, _EXIT_GRACE)
    with anyio.move_on_after(_EXIT_GRACE):
        while process.returncode is None:
            await anyio.sleep(0.01)
    if process.stdout is not None:
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdout.aclose()
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with suppress(PermissionError):
            close()
    if process.returncode is None:
        logger.warning("MCP server process %d is still alive after SIGKILL; abandoning it", process.pid)
    await anyio.lowlevel.checkpoint()
