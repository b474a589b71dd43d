"""The guest's WASI, served by the host: a minimal WASI 0.2 in Python host
functions, linked instead of wasmtime's `add_wasip2()`.

Why: wasmtime-wasi waits *inside the host* for `poll` and `pollable.block`, the
calls behind every sleep or select the guest can reach (`select.select`,
`select.poll`, `selectors`, `time.sleep`, `asyncio.sleep`, the runtime's saved
`time.sleep`). Epoch interruption cannot cut such a wait, so a guest blocked in
one kept its worker thread and pool slot past its deadline and its
cancellation. Here every wait is `_wait`: it sleeps on the run guard's cancel
event for at most the time left before the run's deadline, and traps the guest
(with `epoch`'s trap messages) the moment either passes.

Trust boundary: everything the guest passes in (sizes, handles, durations) is
untrusted, since the guest can write its own memory and call any import. What
the guest can reach, and how it is served:

    wasi:io/poll              pollables are host resources; poll and block wait as above
    wasi:clocks/*             the host's monotonic and wall clocks
    wasi:random/random        os.urandom, at most `MAX_RANDOM` bytes a call
    wasi:io/streams           stdin is closed; stdout and stderr writes are
                              discarded (as with wasmtime's default `WasiConfig`),
                              at most `MAX_WRITE` bytes a call
    wasi:cli/*                empty environment and arguments, no terminals; exit traps
    wasi:filesystem/preopens  no directories, so no descriptor can ever exist
    wasi:sockets/*            a network handle that cannot be used: creating a
                              socket is refused, resolving a name fails

Every other import of the component (a method of a descriptor, a socket, a
resolver stream: handles the guest can never get) is defined as a trap by
`finish`; `check_imports` refuses a component that imports anything else, or
another WASI version than `VERSION`.

Failure policy: a bad argument, a call outside a run, too many live handles
or any failure of a host function traps the guest (the run ends as
`SandboxCrashed`); a deadline or cancellation traps as `epoch` does (the run
ends as `RunTimeout` or `RunCancelled`). No Python exception ever leaves a host
function: wasmtime-py would park it in a process-global (`_enter.LAST_EXCEPTION`)
that the next call into wasm, on any thread, re-raises.

Residual: wasmtime lifts a call's arguments before the host function runs. A
crafted call with a huge list argument is copied (up to wasmtime's copy budget,
then refused with a trap) before we can check its size: about 0.1 s of the
worker thread, measured with a 100 MB write.

Per-run state is bound to the worker thread (`bind`), like `epoch` and
`hostcall` do: host functions run on the thread that called into the guest.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from wasmtime import Engine, WasmtimeError
from wasmtime.component import (
    Component,
    ComponentInstanceType,
    FuncType,
    Linker,
    LinkerInstance,
    Record,
    ResourceAny,
    ResourceHost,
    ResourceType,
    Variant,
)

from .epoch import CANCEL_TRAP, DEADLINE_TRAP, RunGuard

__all__ = ["VERSION", "bind", "check_imports", "define", "finish"]

VERSION = "0.2.9"
"""The WASI the guest imports (componentize-py 0.25.1). Another version is
refused at load by `check_imports`: review this module before changing it."""

NO_RUN_TRAP = "codemode: a WASI call outside of a run"
EXIT_TRAP = "codemode: the guest called exit"

MAX_RANDOM = 1 << 16
"""Bytes per get-random-bytes (wasi-libc asks for at most 256)."""
MAX_WRITE = 1 << 16
"""Bytes per write: what check-write grants."""
MAX_POLL = 1024
"""Pollables in one poll (CPython polls one clock at a time)."""
MAX_HANDLES = 4096
"""Handles the guest may hold at once (each costs host memory in the store)."""

# Resource type ids (the `ty` of ResourceType.host and ResourceHost.own).
_POLLABLE, _INPUT, _OUTPUT, _ERROR, _NETWORK, _TERM_IN, _TERM_OUT, _RESOLVE = range(1, 9)
_STDIN, _STDOUT, _STDERR = 0, 1, 2
_READY = -1  # the deadline of a pollable that is always ready (a stream's)

# Resources whose handles the host never hands out: every method of theirs is
# unreachable, so `finish` may leave it to a trap.
_NEVER_HANDED_OUT = frozenset(
    {
        "descriptor",
        "directory-entry-stream",
        "tcp-socket",
        "udp-socket",
        "incoming-datagram-stream",
        "outgoing-datagram-stream",
        "resolve-address-stream",
        "error",
        "terminal-input",
        "terminal-output",
    }
)


class _Run:
    """What the WASI host functions need for one run."""

    def __init__(self, guard: RunGuard) -> None:
        self.guard = guard
        self.pollables: dict[int, int] = {}  # rep -> monotonic ns when ready (_READY: now)
        self.handles = 0  # handles handed out and not yet dropped
        self._reps = itertools.count(1)

    def hand_out(self) -> None:
        if self.handles >= MAX_HANDLES:
            raise WasmtimeError(f"codemode: the guest holds more than {MAX_HANDLES} WASI handles")
        self.handles += 1

    def add_pollable(self, ready_ns: int) -> int:
        self.hand_out()
        rep = next(self._reps) & 0xFFFFFFFF
        self.pollables[rep] = ready_ns
        return rep

    def new_pollable(self, ready_ns: int) -> ResourceHost:
        return ResourceHost.own(self.add_pollable(ready_ns), _POLLABLE)

    def dropped(self, rep: int, ty: int) -> None:
        self.handles -= 1
        if ty == _POLLABLE:
            self.pollables.pop(rep, None)


_local = threading.local()


def bind(guard: RunGuard | None) -> None:
    """Serve this thread's WASI calls for the run `guard` guards (None: unbind)."""
    _local.run = _Run(guard) if guard is not None else None


def _run() -> _Run:
    run: _Run | None = getattr(_local, "run", None)
    if run is None:
        raise WasmtimeError(NO_RUN_TRAP)
    return run


def _check(run: _Run) -> None:
    if run.guard.cancelled.is_set():
        raise WasmtimeError(CANCEL_TRAP)
    if time.monotonic() >= run.guard.deadline:
        raise WasmtimeError(DEADLINE_TRAP)


def _wait(run: _Run, until_ns: int) -> None:
    """Sleep until monotonic `until_ns`, but never past the run's deadline nor
    its cancellation: those trap the guest at once."""
    guard = run.guard
    while True:
        _check(run)
        now = time.monotonic_ns()
        if now >= until_ns:
            return
        guard.cancelled.wait(min(guard.deadline - now / 1e9, (until_ns - now) / 1e9))


def _ready(run: _Run, reps: list[int]) -> list[int]:
    """poll: the indices of the ready pollables, once at least one is."""
    if not 0 < len(reps) <= MAX_POLL:
        raise WasmtimeError(f"poll: {len(reps)} pollables (1 to {MAX_POLL} allowed)")
    when = [run.pollables.get(rep, _READY) for rep in reps]
    while True:
        now = time.monotonic_ns()
        ready = [i for i, ns in enumerate(when) if ns <= now]
        if ready:
            _check(run)  # a guest spinning on ready pollables still ends on time
            return ready
        _wait(run, min(when))


def _rep(store: Any, handle: ResourceAny) -> int:
    # Every borrow lent to the host must be lifted before the call returns, or
    # wasmtime traps ("borrow handles still remain"); lifting also ends it, so
    # it is not dropped afterwards (that would trap: "unknown handle index").
    rep: int = handle.to_host(store).rep
    return rep


# ------------------------------------------------------- generic host functions
# Called through wasmtime-py's `add_func`, which converts arguments and results.


def _poll(store: Any, pollables: list[ResourceAny]) -> list[int]:
    run = _run()
    return _ready(run, [_rep(store, p) for p in pollables])


def _block(store: Any, pollable: ResourceAny) -> None:
    run = _run()
    _ready(run, [_rep(store, pollable)])


def _mono_now(store: Any) -> int:
    _run()
    return time.monotonic_ns()


def _subscribe_instant(store: Any, when: int) -> ResourceHost:
    return _run().new_pollable(when)


def _subscribe_duration(store: Any, duration: int) -> ResourceHost:
    return _run().new_pollable(time.monotonic_ns() + duration)


def _datetime(ns: int) -> Record:
    record = Record()
    seconds, nanoseconds = divmod(ns, 1_000_000_000)
    setattr(record, "seconds", seconds)  # noqa: B010 - Record declares no fields
    setattr(record, "nanoseconds", nanoseconds)  # noqa: B010
    return record


def _wall_now(store: Any) -> Record:
    _run()
    return _datetime(time.time_ns())


def _random_bytes(store: Any, n: int) -> bytes:
    _run()
    if n > MAX_RANDOM:
        raise WasmtimeError(f"get-random-bytes: {n} bytes asked, at most {MAX_RANDOM}")
    return os.urandom(n)


def _write(store: Any, stream: ResourceAny, contents: bytes) -> Variant:
    _run()
    _rep(store, stream)
    if len(contents) > MAX_WRITE:
        raise WasmtimeError(f"output-stream.write: {len(contents)} bytes, more than check-write granted")
    return Variant("ok")  # result<_, stream-error> is a tagged Variant in wasmtime-py


def _flush(store: Any, stream: ResourceAny) -> Variant:
    _run()
    _rep(store, stream)
    return Variant("ok")


def _check_write(store: Any, stream: ResourceAny) -> int:
    _run()
    _rep(store, stream)
    return MAX_WRITE  # result<u64, stream-error> is bare: an int is `ok`


def _read(store: Any, stream: ResourceAny, n: int) -> None:
    _run()
    _rep(store, stream)
    return None  # result<list<u8>, stream-error> is bare: None is err(closed)


def _stream_subscribe(store: Any, stream: ResourceAny) -> ResourceHost:
    run = _run()
    _rep(store, stream)
    return run.new_pollable(_READY)


def _stream(rep: int, ty: int) -> Callable[[Any], ResourceHost]:
    def get(store: Any) -> ResourceHost:
        _run().hand_out()
        return ResourceHost.own(rep, ty)

    return get


def _resolve(store: Any, network: ResourceAny, name: str) -> str:
    _run()
    _rep(store, network)
    return "permanent-resolver-failure"  # result<own<...>, error-code> is bare: a str is `err`


def _refuse_socket(store: Any, family: str) -> str:
    _run()
    return "access-denied"


def _exit(store: Any, status: object) -> None:
    raise WasmtimeError(EXIT_TRAP)


def _dropper(ty: int) -> Callable[[int], None]:
    """The destructor of resource type `ty`: the guest dropped a handle."""

    def dropped(rep: int) -> None:
        # Also called when a store is dropped after its run (no run bound then).
        run: _Run | None = getattr(_local, "run", None)
        if run is not None:
            run.dropped(rep, ty)

    return dropped


def _constant(value: object) -> Callable[..., object]:
    def get(store: Any, *_args: object) -> object:
        _run()
        return value

    return get


def _store_first(fn: Callable[[int], None]) -> Callable[[Any, int], None]:
    return lambda _store, rep: fn(rep)


def _safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, with any exception turned into a trap (see the module docstring)."""

    def wrapper(store: Any, *args: Any) -> Any:
        try:
            return fn(store, *args)
        except WasmtimeError:
            raise
        except Exception as exc:
            raise WasmtimeError(f"codemode: WASI host function failed: {exc!r}") from None

    return wrapper


# ---------------------------------------------------------------- raw functions
# wasmtime-py's `add_func` rebuilds the function's type on every call and
# converts list<u8> one element at a time: the ~2.5 KB of randomness CPython
# asks for at the start of every run (10 calls) cost ~1.4 ms that way. The hot
# functions below read arguments and write results as `wasmtime_component_val_t`
# directly, like `hostcall` does. They leave their arguments alone: wasmtime's
# C API owns and drops them after the call.

_RawFn = Callable[[Any, Any, Any], None]
_KEEP: list[object] = []  # the C callbacks must live as long as any linker

try:
    from wasmtime import _ffi as ffi

    _VAL_SIZE = ctypes.sizeof(ffi.wasmtime_component_val_t)
    _VAL_OF = ffi.wasmtime_component_val_t.of.offset
    _K_U8 = ffi.WASMTIME_COMPONENT_U8.value
    _K_U32 = ffi.WASMTIME_COMPONENT_U32.value
    _K_U64 = ffi.WASMTIME_COMPONENT_U64.value
    _K_LIST = ffi.WASMTIME_COMPONENT_LIST.value
    _K_RECORD = ffi.WASMTIME_COMPONENT_RECORD.value
    _K_RESULT = ffi.WASMTIME_COMPONENT_RESULT.value

    def _err_ptr(message: str) -> int:
        return ctypes.cast(ffi.wasmtime_error_new(message.encode()), ctypes.c_void_p).value or 0

    def _callback(fn: _RawFn) -> object:
        def call(_data: Any, context: Any, _ty: Any, args: Any, _nargs: int, results: Any, _nresults: int) -> int:
            try:
                fn(context, args, results)
                return 0
            except WasmtimeError as exc:
                return _err_ptr(str(exc))
            except BaseException as exc:  # must not unwind through C; becomes a trap
                return _err_ptr(f"codemode: WASI host function failed: {exc!r}")

        cb: object = ffi.wasmtime_component_func_callback_t(call)
        return cb

    def _no_finalize(_data: Any) -> None:
        return None

    _FINALIZE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_no_finalize)

    def _add_raw(instance: LinkerInstance, name: str, fn: _RawFn) -> None:
        cb = _callback(fn)
        _KEEP.append(cb)
        raw = name.encode()
        err = ffi.wasmtime_component_linker_instance_add_func(
            instance.ptr(), ctypes.create_string_buffer(raw), len(raw), cb, None, _FINALIZE
        )
        if err:
            raise WasmtimeError._from_ptr(err)

    def _host_rep(context: Any, resource: Any) -> int:
        """The rep of a borrowed host resource; lifting it ends the borrow."""
        host = ctypes.POINTER(ffi.wasmtime_component_resource_host_t)()
        err = ffi.wasmtime_component_resource_any_to_host(context, resource, ctypes.byref(host))
        if err:
            raise WasmtimeError._from_ptr(err)
        try:
            rep: int = ffi.wasmtime_component_resource_host_rep(host)
            return rep
        finally:
            ffi.wasmtime_component_resource_host_delete(host)

    def _raw_poll(context: Any, args: Any, results: Any) -> None:
        run = _run()
        items = args[0].of.list
        if not 0 < items.size <= MAX_POLL:
            raise WasmtimeError(f"poll: {items.size} pollables (1 to {MAX_POLL} allowed)")
        ready = _ready(run, [_host_rep(context, items.data[i].of.resource) for i in range(items.size)])
        out = results[0]
        out.kind = _K_LIST
        ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(out.of.list), len(ready))
        for j, i in enumerate(ready):
            out.of.list.data[j].kind = _K_U32
            out.of.list.data[j].of.u32 = i

    def _raw_mono_now(context: Any, args: Any, results: Any) -> None:
        _run()
        results[0].kind = _K_U64
        results[0].of.u64 = time.monotonic_ns()

    def _raw_wall_now(context: Any, args: Any, results: Any) -> None:
        _run()
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        out = results[0]
        out.kind = _K_RECORD
        ffi.wasmtime_component_valrecord_new_uninit(ctypes.byref(out.of.record), 2)
        fields = out.of.record.data
        fields[0].name = ffi.str_to_capi("seconds")
        fields[0].val.kind = _K_U64
        fields[0].val.of.u64 = seconds
        fields[1].name = ffi.str_to_capi("nanoseconds")
        fields[1].val.kind = _K_U32
        fields[1].val.of.u32 = nanos

    _U8_VALS = bytes(b"".join(bytes((_K_U8,)) + bytes(_VAL_SIZE - 1) for _ in range(256)))

    def _raw_random(context: Any, args: Any, results: Any) -> None:
        _run()
        n = args[0].of.u64
        if n > MAX_RANDOM:
            raise WasmtimeError(f"get-random-bytes: {n} bytes asked, at most {MAX_RANDOM}")
        out = results[0]
        out.kind = _K_LIST
        ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(out.of.list), n)
        if n:
            # n u8 values, written as the C structs in one copy.
            vals = bytearray(_U8_VALS[: n * _VAL_SIZE]) if n <= 256 else bytearray(n * _VAL_SIZE)
            if n > 256:
                vals[0::_VAL_SIZE] = bytes((_K_U8,)) * n
            vals[_VAL_OF::_VAL_SIZE] = os.urandom(n)
            ctypes.memmove(out.of.list.data, (ctypes.c_char * len(vals)).from_buffer(vals), len(vals))

    def _raw_write(context: Any, args: Any, results: Any) -> None:
        _run()
        _host_rep(context, args[0].of.resource)
        if args[1].of.list.size > MAX_WRITE:
            raise WasmtimeError(f"output-stream.write: {args[1].of.list.size} bytes, more than check-write granted")
        _ok_unit(results)  # the bytes are discarded

    def _ok_unit(results: Any) -> None:
        out = results[0]
        out.kind = _K_RESULT
        out.of.result.is_ok = True
        out.of.result.val = None

    def _own(context: Any, results: Any, rep: int, ty: int) -> None:
        host = ffi.wasmtime_component_resource_host_new(True, rep, ty)
        try:
            handle = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)()
            err = ffi.wasmtime_component_resource_host_to_any(context, host, ctypes.byref(handle))
            if err:
                raise WasmtimeError._from_ptr(err)
        finally:
            ffi.wasmtime_component_resource_host_delete(host)
        results[0].kind = _K_RESOURCE
        results[0].of.resource = handle

    def _raw_subscribe_duration(context: Any, args: Any, results: Any) -> None:
        run = _run()
        _own(context, results, run.add_pollable(time.monotonic_ns() + args[0].of.u64), _POLLABLE)

    def _raw_subscribe_instant(context: Any, args: Any, results: Any) -> None:
        run = _run()
        _own(context, results, run.add_pollable(args[0].of.u64), _POLLABLE)

    def _raw_block(context: Any, args: Any, results: Any) -> None:
        run = _run()
        _ready(run, [_host_rep(context, args[0].of.resource)])

    def _raw_check_write(context: Any, args: Any, results: Any) -> None:
        _run()
        _host_rep(context, args[0].of.resource)
        permit = ffi.wasmtime_component_val_t()
        permit.kind = _K_U64
        permit.of.u64 = MAX_WRITE
        out = results[0]
        out.kind = _K_RESULT
        out.of.result.is_ok = True
        out.of.result.val = ffi.wasmtime_component_val_new(ctypes.byref(permit))

    def _raw_flush(context: Any, args: Any, results: Any) -> None:
        _run()
        _host_rep(context, args[0].of.resource)
        _ok_unit(results)

    def _raw_empty_list(context: Any, args: Any, results: Any) -> None:
        _run()
        results[0].kind = _K_LIST
        ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(results[0].of.list), 0)

    def _drop_callback(fn: Callable[[int], None]) -> object:
        def call(_data: Any, _context: Any, rep: int) -> int:
            try:
                fn(rep)
                return 0
            except BaseException as exc:  # must not unwind through C; becomes a trap
                return _err_ptr(f"codemode: WASI host function failed: {exc!r}")

        cb: object = ffi.wasmtime_component_resource_destructor_t(call)
        return cb

    def _add_raw_resource(instance: LinkerInstance, name: str, ty: int, fn: Callable[[int], None]) -> None:
        cb = _drop_callback(fn)
        resource = ResourceType.host(ty)
        _KEEP.extend((cb, resource))
        raw = name.encode()
        err = ffi.wasmtime_component_linker_instance_add_resource(
            instance.ptr(), ctypes.create_string_buffer(raw), len(raw), resource.ptr(), cb, None, _FINALIZE
        )
        if err:
            raise WasmtimeError._from_ptr(err)

    _K_RESOURCE = ffi.WASMTIME_COMPONENT_RESOURCE.value
    _RAW: dict[str, _RawFn] = {
        "poll": _raw_poll,
        "block": _raw_block,
        "monotonic-clock#now": _raw_mono_now,
        "subscribe-duration": _raw_subscribe_duration,
        "subscribe-instant": _raw_subscribe_instant,
        "wall-clock#now": _raw_wall_now,
        "get-random-bytes": _raw_random,
        "check-write": _raw_check_write,
        "write": _raw_write,
        "flush": _raw_flush,
        "empty-list": _raw_empty_list,
    }
    _RAW_DROP = True
except (ImportError, AttributeError):  # pragma: no cover - other wasmtime-py versions
    _RAW = {}
    _RAW_DROP = False


# ------------------------------------------------------------------ the linker

_Fn = Callable[..., Any]
# interface -> {function: (generic implementation, key of its raw one or "")}
_FUNCS: dict[str, dict[str, tuple[_Fn, str]]] = {
    "wasi:io/poll": {"poll": (_poll, "poll"), "[method]pollable.block": (_block, "block")},
    "wasi:clocks/monotonic-clock": {
        "now": (_mono_now, "monotonic-clock#now"),
        "resolution": (_constant(1), ""),
        "subscribe-instant": (_subscribe_instant, "subscribe-instant"),
        "subscribe-duration": (_subscribe_duration, "subscribe-duration"),
    },
    "wasi:clocks/wall-clock": {
        "now": (_wall_now, "wall-clock#now"),
        "resolution": (_constant(_datetime(1000)), ""),
    },
    "wasi:random/random": {"get-random-bytes": (_random_bytes, "get-random-bytes")},
    "wasi:io/streams": {
        "[method]input-stream.read": (_read, ""),
        "[method]input-stream.subscribe": (_stream_subscribe, ""),
        "[method]output-stream.check-write": (_check_write, "check-write"),
        "[method]output-stream.write": (_write, "write"),
        "[method]output-stream.blocking-write-and-flush": (_write, "write"),
        "[method]output-stream.blocking-flush": (_flush, "flush"),
        "[method]output-stream.subscribe": (_stream_subscribe, ""),
    },
    "wasi:cli/stdout": {"get-stdout": (_stream(_STDOUT, _OUTPUT), "")},
    "wasi:cli/stderr": {"get-stderr": (_stream(_STDERR, _OUTPUT), "")},
    "wasi:cli/stdin": {"get-stdin": (_stream(_STDIN, _INPUT), "")},
    "wasi:cli/environment": {
        "get-environment": (_constant([]), "empty-list"),
        "get-arguments": (_constant([]), "empty-list"),
    },
    "wasi:cli/exit": {"exit": (_exit, "")},
    "wasi:cli/terminal-stdin": {"get-terminal-stdin": (_constant(None), "")},
    "wasi:cli/terminal-stdout": {"get-terminal-stdout": (_constant(None), "")},
    "wasi:cli/terminal-stderr": {"get-terminal-stderr": (_constant(None), "")},
    "wasi:filesystem/preopens": {"get-directories": (_constant([]), "")},
    "wasi:sockets/instance-network": {"instance-network": (_stream(0, _NETWORK), "")},
    "wasi:sockets/tcp-create-socket": {"create-tcp-socket": (_refuse_socket, "")},
    "wasi:sockets/udp-create-socket": {"create-udp-socket": (_refuse_socket, "")},
    "wasi:sockets/ip-name-lookup": {"resolve-addresses": (_resolve, "")},
}
# interface -> {resource: (type id, destructor)}; the guest can only drop what it got from us.
_RESOURCES: dict[str, dict[str, int]] = {
    "wasi:io/poll": {"pollable": _POLLABLE},
    "wasi:io/error": {"error": _ERROR},
    "wasi:io/streams": {"input-stream": _INPUT, "output-stream": _OUTPUT},
    "wasi:cli/terminal-input": {"terminal-input": _TERM_IN},
    "wasi:cli/terminal-output": {"terminal-output": _TERM_OUT},
    "wasi:sockets/network": {"network": _NETWORK},
    "wasi:sockets/ip-name-lookup": {"resolve-address-stream": _RESOLVE},
}


def define(linker: Linker, *, raw: bool = True) -> None:
    """Define our WASI in `linker`, instead of `add_wasip2()`; call `finish` once
    every other import is defined. `raw`: the hot functions as direct C
    callbacks when wasmtime-py's bindings allow (the generic path otherwise)."""
    with linker.root() as root:
        for interface in sorted(_FUNCS.keys() | _RESOURCES.keys()):
            with root.add_instance(f"{interface}@{VERSION}") as instance:
                for name, ty in _RESOURCES.get(interface, {}).items():
                    dropped = _dropper(ty)
                    if raw and _RAW_DROP:
                        _add_raw_resource(instance, name, ty, dropped)
                    else:
                        instance.add_resource(name, ResourceType.host(ty), _safe(_store_first(dropped)))
                for name, (fn, key) in _FUNCS.get(interface, {}).items():
                    if raw and key in _RAW:
                        _add_raw(instance, name, _RAW[key])
                    else:
                        instance.add_func(name, _safe(fn))


def finish(linker: Linker, component: Component) -> None:
    """Define every import of `component` still undefined as a trap. Call it
    last: a later definition of the same name fails."""
    linker.define_unknown_imports_as_traps(component)


def check_imports(component: Component, engine: Engine, *, host_functions: frozenset[str]) -> list[str]:
    """The imports of `component` that `define` does not serve and that a guest
    could reach (empty when the component fits this host). `host_functions`
    are the other root functions the host defines (`call-tools`)."""
    problems = []
    for name, item in component.type.imports(engine).items():
        if not isinstance(item.ty, ComponentInstanceType):
            if name not in host_functions:
                problems.append(name)
            continue
        interface, _, version = name.partition("@")
        if interface.startswith("wasi:") and version != VERSION:
            problems.append(f"{name} (this host serves WASI {VERSION})")
            continue
        ours = _FUNCS.get(interface, {})
        for fname, export in item.ty.exports(engine).items():
            if not isinstance(export.ty, FuncType) or fname in ours:
                continue
            resource = fname.removeprefix("[method]").partition(".")[0]
            if not (fname.startswith("[method]") and resource in _NEVER_HANDED_OUT):
                problems.append(f"{name}#{fname}")
    return problems
