"""Reading the guest's tool-call frames on the host.

A frame is what the guest hands the `call-tools` import: a JSON list of calls,
`[{"id": int, "call": {"ns": str, "tool": str, "args": {...}}}, ...]`. The guest
is untrusted (crafted bytecode can write any frame it likes), so everything
here runs before any tool does, on the bytes the host received:

1. Size: a frame over `Limits.max_batch_bytes` is refused before it is copied
   into Python, let alone decoded (`hostcall` checks the C-level length).
2. Memory: decoding and parsing JSON costs more than the frame (up to ~28x for
   `[],` repeated; up to 4x more text for one wide character), so the cost is
   bounded from counts that copy nothing (the frame's widest character, and its
   containers, separators and strings: first counted over the whole text, which
   overestimates; where that is over budget, counted again outside strings),
   and a frame whose text and parsed values would exceed `3 * max_batch_bytes`
   is refused before parsing. The per-item costs are upper bounds measured with
   `tracemalloc` on hostile shapes (lists, dicts, short strings, numbers, wide
   characters). The frame is decoded straight from wasmtime's buffer.
3. Shape: ids are distinct ints, names strings, arguments objects; nesting the
   JSON parser refuses counts as malformed. A frame that fails any check runs
   nothing: the run ends with `BatchLimitExceeded` (size) or
   `MalformedToolCalls` (shape).

Bad frames are logged one line each, at most one line a second per process
(the lines skipped are counted in the next), so a guest cannot flood the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .._errors import BatchLimitExceeded, MalformedToolCalls

__all__ = ["Call", "FrameRefused", "check_size", "log_refusal", "parse"]

logger = logging.getLogger("codemode")

# Host memory a frame may cost while it is read, in multiples of the size cap.
BUDGET_FACTOR = 3
# Below this many characters the parse cannot cost much (28x of 4 KiB):
# small frames, the common case, skip the structural count.
_SMALL = 4096
# Upper bounds, in bytes, of what one parsed item costs (CPython 3.11, 64-bit):
# a container with its GC header and spare room (a small dict is ~232), an
# element or key slot, a string object's header; its characters cost their width.
_PER_CONTAINER = 240
_PER_SEPARATOR = 50
_PER_STRING = 56
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{,:]', re.DOTALL)
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_WIDE4 = re.compile(rb"[\xf0-\xf4]")
_WIDE2 = re.compile(rb"[\xc4-\xef]")
Buffer = bytes | memoryview


class FrameRefused(Exception):
    """The frame may not run; `error` ends the run."""

    def __init__(self, error: BatchLimitExceeded | MalformedToolCalls) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class Call:
    """One validated call of a frame."""

    id: int
    ns: str
    tool: str
    args: dict[str, Any]


def _too_large(what: str, size: int, cap: int) -> FrameRefused:
    return FrameRefused(BatchLimitExceeded(f"the tool calls of one batch take {size} bytes {what}; the limit is {cap}"))


def check_size(size: int, cap: int) -> None:
    """Refuse a frame of `size` UTF-8 bytes before copying it. Raises `FrameRefused`."""
    if size > cap:
        raise _too_large("as JSON", size, cap)


def _width(raw: Buffer) -> int:
    """Bytes per character of the `str` that decoding `raw` makes (CPython keeps
    1, 2 or 4 per character, by the widest)."""
    if _NON_ASCII.search(raw) is None:
        return 1
    if _WIDE4.search(raw):
        return 4
    return 2 if _WIDE2.search(raw) else 1


def check_decode(raw: Buffer, cap: int) -> None:
    """Refuse raw bytes whose decoded text would not fit the budget beside
    them. Raises `FrameRefused`."""
    size = len(raw)
    check_size(size, cap)
    if (1 + _width(raw)) * size > BUDGET_FACTOR * cap:
        raise _too_large("as text", _width(raw) * size, cap)


def _text_width(text: str) -> int:
    if text.isascii():  # O(1): CPython knows
        return 1
    # CPython's compact strings: about 80 bytes of header, then `width` per character.
    return max(1, round((sys.getsizeof(text) - 80) / (len(text) + 1)))


def _parse_cost(text: str, width: int, budget: int) -> int:
    """An upper bound of the bytes `json.loads(text)` allocates: quick counts
    over the whole text, and only if those exceed `budget`, counts outside the
    strings (a Python loop over the frame's tokens, no copies)."""
    containers = text.count("[") + text.count("{")
    separators = text.count(",") + text.count(":") + 1
    quotes = text.count('"')
    quick = (
        _PER_CONTAINER * containers + _PER_SEPARATOR * separators + _PER_STRING * (quotes // 2 + 1) + width * len(text)
    )
    if quick <= budget or quotes == 0:
        return quick
    containers = separators = strings = chars = 0
    for match in _TOKEN.finditer(text):
        start, end = match.span()
        first = text[start]
        if first == '"':
            strings += 1
            chars += end - start
        elif first in "[{":
            containers += 1
        else:
            separators += 1
    return _PER_CONTAINER * containers + _PER_SEPARATOR * (separators + 1) + _PER_STRING * strings + width * chars


def parse(text: str, cap: int) -> list[Call]:
    """The calls of a frame, validated. Raises `FrameRefused`."""
    if len(text) > cap:  # the wasm backend checked the bytes already; the restricted one did not
        raise _too_large("as JSON", len(text), cap)
    if len(text) > _SMALL:
        width = _text_width(text)
        room = BUDGET_FACTOR * cap - width * len(text)
        cost = _parse_cost(text, width, room)
        if cost > room:
            raise _too_large("once parsed (too many values)", width * len(text) + cost, cap)
    try:
        batch = json.loads(text)
    except RecursionError as exc:
        raise _malformed("it is nested too deeply") from exc
    except ValueError as exc:
        raise _malformed(f"it is not JSON ({exc})") from exc
    if not isinstance(batch, list) or not batch:
        raise _malformed("it is not a non-empty list of calls")
    calls: list[Call] = []
    seen: set[int] = set()
    for i, item in enumerate(batch):
        if not isinstance(item, dict) or set(item) != {"id", "call"}:
            raise _malformed(f"call {i} is not an object with `id` and `call`")
        call_id, call = item["id"], item["call"]
        if type(call_id) is not int or call_id in seen:
            raise _malformed(f"call {i} has {'a repeated' if call_id in seen else 'no whole-number'} id")
        seen.add(call_id)
        if not isinstance(call, dict) or set(call) - {"ns", "tool", "args"}:
            raise _malformed(f"call {i} is not an object of `ns`, `tool` and `args`")
        ns, tool, args = call.get("ns"), call.get("tool"), call.get("args", {})
        if not isinstance(ns, str) or not isinstance(tool, str):
            raise _malformed(f"call {i} names its tool with something other than strings")
        if not isinstance(args, dict):
            raise _malformed(f"call {i} has arguments that are not an object")
        calls.append(Call(call_id, ns, tool, args))
    return calls


def _malformed(why: str) -> FrameRefused:
    return FrameRefused(MalformedToolCalls(f"the sandbox sent malformed tool calls: {why}"))


class _RateLimit:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._skipped = 0

    def admit(self) -> int | None:
        """The lines skipped since the last one, or None to skip this one."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._skipped += 1
                return None
            self._next = now + self.interval_s
            skipped, self._skipped = self._skipped, 0
            return skipped


_bad_frames = _RateLimit(1.0)


def log_refusal(refused: FrameRefused) -> None:
    """One warning line for a refused frame, at most one a second per process."""
    skipped = _bad_frames.admit()
    if skipped is None:
        return
    more = f" ({skipped} more since the last line)" if skipped else ""
    logger.warning("refused a sandbox frame: %s%s", refused.error.message[:300], more)
