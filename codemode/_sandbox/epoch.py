"""Interrupting a guest that is running: the epoch-deadline callback.

A store's epoch deadline is set one tick ahead; each time it passes, wasmtime
calls `_on_epoch` on the thread running the guest. The callback checks the run's
absolute deadline and its cancel flag, and either extends the deadline by one
tick or traps the guest. That gives a wall-clock timeout to the tick, and lets
`Sandbox.run` be cancelled (an HTTP DELETE, a client hanging up) even while the
guest spins in a loop that makes no tool calls. It costs one short Python call
per tick (`TICK_S`).

wasmtime-py has no wrapper for this C API; if the binding is missing (another
wasmtime-py than the pinned one), `install` returns False and the caller falls
back to a plain deadline in ticks, without cancellation.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

from wasmtime import Store

__all__ = ["AVAILABLE", "CANCEL_TRAP", "DEADLINE_TRAP", "RunGuard", "bind", "install"]

DEADLINE_TRAP = "codemode: the run's deadline passed"
CANCEL_TRAP = "codemode: the run was cancelled"
_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE

_local = threading.local()


@dataclass
class RunGuard:
    """What the callback checks for the run on this thread."""

    deadline: float
    """`time.monotonic()` after which the guest traps."""
    cancelled: threading.Event = field(default_factory=threading.Event)


def bind(guard: RunGuard | None) -> None:
    _local.guard = guard


try:
    from wasmtime import _ffi as ffi

    def _trap(message: str) -> int:
        return ctypes.cast(ffi.wasmtime_error_new(message.encode()), ctypes.c_void_p).value or 0

    @ctypes.CFUNCTYPE(
        ctypes.c_size_t,
        ctypes.POINTER(ffi.wasmtime_context_t),
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
    )
    def _on_epoch(_context, _data, delta, kind):  # type: ignore[no-untyped-def]
        guard = getattr(_local, "guard", None)
        if guard is not None:
            if guard.cancelled.is_set():
                return _trap(CANCEL_TRAP)
            if time.monotonic() >= guard.deadline:
                return _trap(DEADLINE_TRAP)
        delta[0] = 1
        kind[0] = _CONTINUE
        return 0

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def _finalize(_data):  # type: ignore[no-untyped-def]
        return None

    AVAILABLE = hasattr(ffi, "wasmtime_store_epoch_deadline_callback")
except (ImportError, AttributeError):  # pragma: no cover - other wasmtime-py versions
    AVAILABLE = False


def install(store: Store) -> bool:
    """Route `store`'s epoch deadlines through the run guard of the running
    thread, and set the first deadline one tick ahead. False if unavailable."""
    if not AVAILABLE:
        return False
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch, None, _finalize)
    store.set_epoch_deadline(1)
    return True
