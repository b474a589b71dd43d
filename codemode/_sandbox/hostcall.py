"""Both crossings between host and guest, each `func(string) -> string`: the
sandbox's one host function, `call-tools`, and the guest's `run` export.

wasmtime-py's generic `LinkerInstance.add_func` rebuilds the function's type
and every value type through ctypes on each call; for this one fixed signature
that costs more than the rest of a tool-call crossing together. So we register
a callback that reads one string and writes one string through wasmtime's C
API directly (measured per crossing: see benchmarks/sandbox.py). Calling `run`
the same way saves its generic type walk too (about 50 us a run). If the
private bindings this needs are not there (a wasmtime-py other than the pinned
one), both fall back to the public API.

The callback serves every store of the process; the handler for the current
run is looked up per worker thread, since each run executes on its own thread.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import ctypes
import logging
import threading
from typing import Protocol

from wasmtime import Store
from wasmtime.component import Func, Linker

from .epoch import CANCEL_TRAP
from .frames import FrameRefused, check_decode, check_size

__all__ = ["Handler", "bind_handler", "call_string_func", "register"]

logger = logging.getLogger("codemode")

_local = threading.local()
_NO_RUN = '{"abort": "no run is bound to this thread"}'


class Handler(Protocol):
    """A run's side of `call-tools`: the frame's size cap, what to answer a
    refused frame, and the answer to a frame that passed the size checks."""

    max_frame_bytes: int

    def __call__(self, frame: str) -> str: ...

    def refuse(self, refused: FrameRefused) -> str: ...


def bind_handler(handler: Handler | None) -> None:
    """Route this thread's host calls to `handler` (None: unbind)."""
    _local.handler = handler


def _is_cancellation(exc: BaseException) -> bool:
    """Whether `exc` is the event loop cancelling the run's tool calls (asyncio's or trio's)."""
    return isinstance(exc, asyncio.CancelledError | concurrent.futures.CancelledError) or (
        type(exc).__name__ == "Cancelled" and type(exc).__module__.startswith("trio")
    )


def _handle(batch: str) -> str:
    handler: Handler | None = getattr(_local, "handler", None)
    if handler is None:
        return _NO_RUN
    try:
        check_size(len(batch), handler.max_frame_bytes)
    except FrameRefused as refused:
        return handler.refuse(refused)
    return handler(batch)


def _decode(vec: ctypes.Structure, cap: int) -> str:
    """The vector's text, decoded in place (no bytes copy). Raises `FrameRefused`."""
    address = ctypes.cast(vec.data, ctypes.c_void_p).value
    with memoryview((ctypes.c_char * vec.size).from_address(address or 0)) as raw:
        check_decode(raw, cap)
        text: str = codecs.utf_8_decode(raw, "strict", True)[0]  # wasmtime checked it is UTF-8
    return text


def _handle_vec(vec: ctypes.Structure) -> str:
    """The answer to a frame still in wasmtime's buffer (`wasm_byte_vec_t`): its
    size is checked before it is copied, its width before it is decoded, which
    it is straight from the buffer, freed before the text is parsed."""
    handler: Handler | None = getattr(_local, "handler", None)
    owned = True
    try:
        if handler is None:
            return _NO_RUN
        try:
            check_size(vec.size, handler.max_frame_bytes)
            text = _decode(vec, handler.max_frame_bytes) if vec.size else ""
            ffi.wasm_byte_vec_delete(ctypes.byref(vec))
            owned = False
        except FrameRefused as refused:
            return handler.refuse(refused)
        return handler(text)
    finally:
        if owned:
            ffi.wasm_byte_vec_delete(ctypes.byref(vec))


def _register_public(linker: Linker, name: str) -> None:
    with linker.root() as root:
        root.add_func(name, lambda _store, batch: _handle(batch))


try:
    from wasmtime import WasmtimeError
    from wasmtime import _ffi as ffi

    @ffi.wasmtime_component_func_callback_t
    def _callback(_data, _context, _ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
        try:
            if nargs != 1 or nresults != 1 or args[0].kind != ffi.WASMTIME_COMPONENT_STRING.value:
                raise TypeError("call-tools takes one string")
            out = _handle_vec(args[0].of.string)
            results[0].kind = ffi.WASMTIME_COMPONENT_STRING
            results[0].of.string = ffi.str_to_capi(out)
            return 0
        except BaseException as exc:  # must not unwind through C; becomes a trap
            if _is_cancellation(exc):
                # The run was cancelled while its calls were in flight: expected, not
                # worth a traceback (each cancel used to log ~50 lines). The trap
                # text makes the backend report it as a cancellation.
                err = ffi.wasmtime_error_new(CANCEL_TRAP.encode())
            else:
                logger.exception("call-tools host function failed")
                err = ffi.wasmtime_error_new(f"host function failed: {exc}".encode())
            return ctypes.cast(err, ctypes.c_void_p).value or 0

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def _finalize(_data):  # type: ignore[no-untyped-def]
        return None

    def _register_direct(linker: Linker, name: str) -> None:
        with linker.root() as root:
            raw = name.encode()
            err = ffi.wasmtime_component_linker_instance_add_func(
                root.ptr(), ctypes.create_string_buffer(raw), len(raw), _callback, None, _finalize
            )
            if err:
                raise WasmtimeError._from_ptr(err)

    def _call_direct(func: Func, store: Store, text: str) -> object:
        args = (ffi.wasmtime_component_val_t * 1)()
        args[0].kind = ffi.WASMTIME_COMPONENT_STRING
        args[0].of.string = ffi.str_to_capi(text)
        result = ffi.wasmtime_component_val_t()
        try:
            err = ffi.wasmtime_component_func_call(
                ctypes.byref(func._func), store._context(), args, 1, ctypes.byref(result), 1
            )
        finally:
            ffi.wasmtime_component_val_delete(ctypes.byref(args[0]))
        if err:
            raise WasmtimeError._from_ptr(err)
        try:
            if result.kind != ffi.WASMTIME_COMPONENT_STRING.value:
                return None
            return ffi.to_str(result.of.string)
        finally:
            ffi.wasmtime_component_val_delete(ctypes.byref(result))

    DIRECT = True
except (ImportError, AttributeError):  # pragma: no cover - other wasmtime-py versions
    DIRECT = False


def call_string_func(func: Func, store: Store, text: str) -> object:
    """Call the guest export `func(string) -> string` and finish it (post-return).
    Returns what it answered (a str, unless the guest is broken).

    Raises `wasmtime.WasmtimeError` (a `Trap` among them) if the guest traps."""
    answer = _call_direct(func, store, text) if DIRECT else func(store, text)
    func.post_return(store)
    return answer


def register(linker: Linker, name: str = "call-tools", *, direct: bool = True) -> None:
    """Define the host function `name` in `linker`'s root."""
    if direct and DIRECT:
        _register_direct(linker, name)
    else:
        _register_public(linker, name)
