"""The wasm backend: one fresh wasmtime instance of the CPython guest per run.

The engine, the compiled component and the linker are per process and loaded
once (building the guest on first use). Every run gets a new `Store` and
instance, so nothing a run does can be seen by the next. Runs execute on the
calling (worker) thread; wasmtime-py releases the GIL while wasm runs.

Wall-clock limits use epoch interruption: a daemon thread bumps the engine's
epoch every `TICK_S`, and each store traps when its deadline in ticks passes,
including inside C-level loops of the guest interpreter.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import wasmtime
from wasmtime import Config, Engine, Store, WasiConfig
from wasmtime.component import Component, Linker

from . import _epoch, _guest, _hostcall
from ._errors import RunCancelled, RunTimeout, SandboxCrashed, SandboxUnavailable
from ._limits import Limits

__all__ = ["WasmBackend", "WasmTrap"]

logger = logging.getLogger("codemode")

TICK_S = 0.01


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
            self._loaded = _Loaded(engine, component, linker)
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="codemode-epoch", daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            loaded = self._loaded
            if loaded is not None:
                loaded.engine.increment_epoch()

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
        t0 = time.perf_counter()
        store = Store(loaded.engine)
        store.set_wasi(WasiConfig())  # no preopened dirs, no env, no args, no sockets
        store.set_limits(memory_size=limits.memory)
        if not _epoch.install(store):
            store.set_epoch_deadline(max(1, math.ceil(limits.timeout / TICK_S)))
        _epoch.bind(guard)
        _hostcall.bind_handler(host_call)
        try:
            instance = loaded.linker.instantiate(store, loaded.component)
            run = instance.get_func(store, "run")
            if run is None:
                raise SandboxUnavailable("the sandbox guest has no `run` export")
            startup = time.perf_counter() - t0
            response = run(store, request_json)
            run.post_return(store)
        except wasmtime.WasmtimeError as exc:  # Trap is a subclass
            raise WasmTrap(_classify_trap(exc, limits)) from exc
        finally:
            _hostcall.bind_handler(None)
            _epoch.bind(None)
        if not isinstance(response, str):
            raise WasmTrap(SandboxCrashed(f"the guest answered {type(response).__name__}, not a string"))
        return response, startup


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
