"""The wasm backend: one fresh wasmtime instance of the CPython guest per run.

The engine, the compiled component and the linker are per process and loaded
once (building the guest on first use). Every run gets a new `Store` and
instance, so nothing a run does can be seen by the next. Runs execute on the
calling (worker) thread; wasmtime-py releases the GIL while wasm runs.

Wall-clock limits use epoch interruption: a daemon thread bumps the engine's
epoch every `TICK_S`, and each store traps when its deadline in ticks passes,
including inside C-level loops of the guest interpreter.

Tearing an instance down (unmapping its memory) needs nothing from the run,
so a housekeeping thread drops finished stores off the run's path. It waits (up
to `_IDLE_WAIT_S`) for no run to be executing first: unmapping memory while a
run faults in its pages slows that run down.

Tried and left out: keeping a spare instance, made ahead on that thread, for
the next run. On one thread it cut a run 5 ms after the last from 4.1 to
2.3 ms, but through `Sandbox.run` (the run on an anyio worker thread) the run
itself got slower by what instantiating had cost, and the total did not move
(5.2-5.6 against 5.3-5.4 ms, runs 10 ms apart).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass

import wasmtime
from wasmtime import Config, Engine, Store, WasiConfig
from wasmtime.component import Component, ExportIndex, Func, Linker

from . import _epoch, _guest, _hostcall
from ._errors import RunCancelled, RunTimeout, SandboxCrashed, SandboxUnavailable
from ._limits import Limits

__all__ = ["WasmBackend", "WasmTrap"]

logger = logging.getLogger("codemode")

TICK_S = 0.01
# Past this many stores waiting for housekeeping, runs drop their own (back-pressure).
_REAP_BACKLOG = 16
_IDLE_WAIT_S = 0.05


class WasmTrap(Exception):
    """The guest trapped; `error` is what the run should report."""

    def __init__(self, error: RunTimeout | RunCancelled | SandboxCrashed) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Loaded:
    engine: Engine
    component: Component
    linker: Linker
    run_export: ExportIndex | str


def _make_engine() -> Engine:
    config = Config()
    config.epoch_interruption = True
    return Engine(config)


class WasmBackend:
    """Runs requests in fresh wasm instances. Thread-safe; one per process is enough."""

    name = "wasm"

    def __init__(self, *, direct_host_call: bool = True) -> None:
        self._direct = direct_host_call
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._graveyard: queue.SimpleQueue[Store] = queue.SimpleQueue()
        self._running = 0
        self._running_lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def load(self, *, progress: _guest.Progress | None = None, force_build: bool = False) -> None:
        """Load the component (building and compiling it if the cache lacks it).

        Raises `SandboxUnavailable`."""
        with self._lock:
            if self._loaded is not None and not force_build:
                return
            engine = _make_engine()

            def compile_wasm(wasm: bytes) -> bytes:
                return bytes(Component(engine, wasm).serialize())

            artifacts = _guest.ensure_built(compile_wasm=compile_wasm, force=force_build, progress=progress)
            try:
                component = Component.deserialize_file(engine, str(artifacts.cwasm))
            except wasmtime.WasmtimeError as exc:
                # Verified bytes that wasmtime still refuses (another wasmtime build):
                # drop them and compile once more.
                artifacts.cwasm.unlink(missing_ok=True)
                artifacts = _guest.ensure_built(compile_wasm=compile_wasm, progress=progress)
                try:
                    component = Component.deserialize_file(engine, str(artifacts.cwasm))
                except wasmtime.WasmtimeError as exc2:
                    raise SandboxUnavailable(f"cannot load the sandbox guest: {exc2}") from exc
            linker = Linker(engine)
            linker.add_wasip2()
            _hostcall.register(linker, direct=self._direct)
            self._loaded = _Loaded(engine, component, linker, component.get_export_index("run") or "run")
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="codemode-epoch", daemon=True)
                self._ticker.start()
                threading.Thread(target=self._housekeep, name="codemode-reaper", daemon=True).start()

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            loaded = self._loaded
            if loaded is not None:
                loaded.engine.increment_epoch()

    def _housekeep(self) -> None:
        while True:
            store = self._graveyard.get()
            self._idle.wait(_IDLE_WAIT_S)
            del store  # dropping the last reference frees it

    def _bury(self, store: Store) -> None:
        if self._graveyard.qsize() < _REAP_BACKLOG:
            self._graveyard.put(store)

    def execute(self, request_json: str, host_call: _hostcall.Handler, limits: Limits,
                guard: _epoch.RunGuard) -> tuple[str, float]:
        """Run one request in a fresh instance on this thread; (response JSON,
        seconds spent instantiating). The guest traps when `guard`'s deadline
        passes or it is cancelled.

        Raises `WasmTrap` if the guest traps, `SandboxUnavailable` if it cannot load."""
        if self._loaded is None:
            self.load()
        loaded = self._loaded
        assert loaded is not None
        self._count_run(+1)
        try:
            return self._execute(loaded, request_json, host_call, limits, guard)
        finally:
            self._count_run(-1)

    def _count_run(self, delta: int) -> None:
        with self._running_lock:
            self._running += delta
            if self._running:
                self._idle.clear()
            else:
                self._idle.set()

    def _execute(self, loaded: _Loaded, request_json: str, host_call: _hostcall.Handler, limits: Limits,
                 guard: _epoch.RunGuard) -> tuple[str, float]:
        t0 = time.perf_counter()
        try:
            store, run = _instantiate(loaded, limits)
        except wasmtime.WasmtimeError as exc:
            raise WasmTrap(_classify_trap(exc, limits)) from exc
        startup = time.perf_counter() - t0
        _epoch.bind(guard)
        _hostcall.bind_handler(host_call)
        try:
            response = _hostcall.call_string_func(run, store, request_json)
        except wasmtime.WasmtimeError as exc:  # Trap is a subclass
            raise WasmTrap(_classify_trap(exc, limits)) from exc
        finally:
            _hostcall.bind_handler(None)
            _epoch.bind(None)
            self._bury(store)
            del store
        if not isinstance(response, str):
            raise WasmTrap(SandboxCrashed(f"the guest answered {type(response).__name__}, not a string"))
        return response, startup


def _instantiate(loaded: _Loaded, limits: Limits) -> tuple[Store, Func]:
    """A new store and instance of the guest, under `limits`; its `run` export."""
    store = Store(loaded.engine)
    store.set_wasi(WasiConfig())  # no preopened dirs, no env, no args, no sockets
    store.set_limits(memory_size=limits.memory)
    if not _epoch.install(store):
        store.set_epoch_deadline(max(1, math.ceil(limits.timeout / TICK_S)))
    instance = loaded.linker.instantiate(store, loaded.component)
    run = instance.get_func(store, loaded.run_export)
    if run is None:
        raise SandboxUnavailable("the sandbox guest has no `run` export")
    return store, run


def _classify_trap(exc: Exception, limits: Limits) -> RunTimeout | RunCancelled | SandboxCrashed:
    text = str(exc)
    if _epoch.CANCEL_TRAP in text:
        return RunCancelled("the run was cancelled")
    if _epoch.DEADLINE_TRAP in text:
        return RunTimeout(f"the run exceeded its {limits.timeout:g} s timeout")
    code = getattr(exc, "trap_code", None)
    if code == wasmtime.TrapCode.INTERRUPT or "interrupt" in text:
        return RunTimeout(f"the run exceeded its {limits.timeout:g} s timeout")
    if code == wasmtime.TrapCode.STACK_OVERFLOW or "call stack exhausted" in text:
        return SandboxCrashed("the guest's stack overflowed (too deep recursion?)")
    first = text.strip().splitlines()[0] if text.strip() else "unknown trap"
    logger.warning("sandbox guest trapped: %s", text[:2000])
    return SandboxCrashed(f"the guest trapped: {first[:300]}")
