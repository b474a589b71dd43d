"""The wasm backend: one fresh wasmtime instance of the CPython guest per run.

The engine, the compiled component and the linker are per process and loaded
once (building the guest on first use). Every run gets a new `Store` and
instance, so nothing a run does can be seen by the next. Runs execute on the
calling (worker) thread; wasmtime-py releases the GIL while wasm runs.

Wall-clock limits use epoch interruption: a daemon thread bumps the engine's
epoch every `TICK_S`, and each store traps when its deadline in ticks passes,
including inside C-level loops of the guest interpreter.

Instances live in the pooling allocator's slots (`pooling`), which stay
resident between instances: a run starts with no page faults. Resetting a slot
(copying the snapshot back) needs nothing from the run, so a housekeeping
thread drops finished stores off the run's path. When it has nothing left to
drop, it instantiates the next run's instance ahead (a spare, never run), so a
run that comes after a pause skips instantiating too.

The spare only pays with pooled slots. With on-demand instances it did not
(runs 10 ms apart: 5.2-5.6 against 5.3-5.4 ms), and perf showed why: a write
fault on a snapshot page the run had read first (most of its ~360 faults)
flushes the TLB of every CPU running another thread of this process, an IPI
that costs microseconds in a VM (half the run's kernel time went to sending
them), so any work on a second thread during a run slowed the run by more than
the work saved.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass

import wasmtime
from wasmtime import Config, Engine, Store
from wasmtime.component import Component, ExportIndex, Func, Linker

from .._errors import RunCancelled, RunTimeout, SandboxCrashed, SandboxUnavailable
from .._limits import Limits
from . import epoch, guest, hostcall, pooling, wasi

__all__ = ["WasmBackend", "WasmTrap"]

logger = logging.getLogger("codemode")

TICK_S = 0.01
# Past this many stores waiting for housekeeping, runs drop their own
# (back-pressure; each waiting store keeps its slot resident).
_REAP_BACKLOG = 2
# Slots made resident while loading (about 15 ms each): enough for back-to-back
# runs, one running while the last one's slot is reset, with one to spare.
_WARM_SLOTS_AT_LOAD = 3
# While every slot is taken, a run looks for a freed one (or a spare) this often.
_SLOT_POLL_S = 0.05


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
    pooled: bool


class _NoPool(Exception):
    """The pooling allocator cannot be used here."""


def _make_engine(*, pooled: bool) -> Engine:
    config = Config()
    config.epoch_interruption = True
    if pooled and not pooling.configure(config):
        raise _NoPool("this wasmtime-py cannot configure it, or the address space is capped")
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
        # Stores alive at once, each holding a slot of the pool until dropped:
        # past that many, a run waits for a slot (within its deadline).
        self._slots = threading.BoundedSemaphore(pooling.INSTANCES)
        # An instance made ahead by the housekeeper while it had nothing to drop,
        # never run: the next run takes it instead of instantiating.
        self._spare: tuple[Store, Func] | None = None
        self._spare_lock = threading.Lock()

    def load(self, *, progress: guest.Progress | None = None, force_build: bool = False) -> None:
        """Load the component (building and compiling it if the cache lacks it).

        Raises `SandboxUnavailable`."""
        with self._lock:
            if self._loaded is not None and not force_build:
                return
            try:
                self._loaded = self._load(pooled=True, progress=progress, force_build=force_build)
            except _NoPool as exc:
                # On-demand instances work the same, only start slower.
                logger.warning("sandbox instances fall back to on-demand allocation: %s", exc)
                self._loaded = self._load(pooled=False, progress=progress, force_build=False)
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="codemode-epoch", daemon=True)
                self._ticker.start()
                threading.Thread(target=self._housekeep, name="codemode-reaper", daemon=True).start()

    def _load(self, *, pooled: bool, progress: guest.Progress | None, force_build: bool) -> _Loaded:
        engine = _make_engine(pooled=pooled)

        def compile_wasm(wasm: bytes) -> bytes:
            return bytes(Component(engine, wasm).serialize())

        artifacts = guest.ensure_built(compile_wasm=compile_wasm, force=force_build, progress=progress)
        try:
            component = Component.deserialize_file(engine, str(artifacts.cwasm))
        except wasmtime.WasmtimeError as exc:
            # Verified bytes that wasmtime still refuses (another wasmtime build):
            # drop them and compile once more.
            artifacts.cwasm.unlink(missing_ok=True)
            artifacts = guest.ensure_built(compile_wasm=compile_wasm, progress=progress)
            try:
                component = Component.deserialize_file(engine, str(artifacts.cwasm))
            except wasmtime.WasmtimeError as exc2:
                raise SandboxUnavailable(f"cannot load the sandbox guest: {exc2}") from exc
        linker = Linker(engine)
        wasi.define(linker)  # our WASI, whose waits end at the run's deadline (see `wasi`)
        hostcall.register(linker, direct=self._direct)
        unserved = wasi.check_imports(component, engine, host_functions=frozenset({"call-tools"}))
        if unserved:
            raise SandboxUnavailable(
                f"the sandbox guest imports what this host does not serve (WASI {wasi.VERSION}): "
                + ", ".join(unserved[:10])
            )
        wasi.finish(linker, component)  # last: every import left is unreachable, a trap
        loaded = _Loaded(engine, component, linker, component.get_export_index("run") or "run", pooled)
        # Instances now, at once and dropped at once: proves the pool fits the
        # component, and leaves that many slots warm (resident) for the first
        # runs, rather than have them fault in cold slots.
        try:
            warm = min(_WARM_SLOTS_AT_LOAD, pooling.INSTANCES) if pooled else 1
            stores = [_instantiate(loaded, Limits())[0] for _ in range(warm)]
        except wasmtime.WasmtimeError as exc:
            if pooled:
                raise _NoPool(f"the guest does not fit the pool: {exc}") from exc
            raise SandboxUnavailable(f"cannot instantiate the sandbox guest: {exc}") from exc
        del stores
        return loaded

    @property
    def pooled(self) -> bool | None:
        """Whether instances live in the pooling allocator's resident slots
        (None until loaded; False where it is unavailable, see `pooling`)."""
        return self._loaded.pooled if self._loaded is not None else None

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            loaded = self._loaded
            if loaded is not None:
                loaded.engine.increment_epoch()

    def _housekeep(self) -> None:
        while True:
            store = self._graveyard.get()
            del store  # dropping the last reference resets its slot
            self._slots.release()
            if self._graveyard.empty():
                try:
                    self._make_spare()
                except Exception:  # the thread must live on: runs wait for it to drop stores
                    logger.exception("could not make a spare sandbox instance")

    def _make_spare(self) -> None:
        """Instantiate the next run's instance now, if nothing else waits. Only
        with pooled slots: then a run makes no page faults, so this work on a
        second thread cannot slow a run going on meanwhile (see the docstring)."""
        loaded = self._loaded
        if loaded is None or not loaded.pooled or not epoch.AVAILABLE or self._spare is not None:
            return
        if not self._slots.acquire(blocking=False):
            return
        try:
            spare = _instantiate(loaded, Limits())
        except BaseException:
            self._slots.release()
            raise
        with self._spare_lock:
            self._spare = spare

    def _take_spare(self, limits: Limits) -> tuple[Store, Func] | None:
        # A limit near the guest's initial memory (16.7 MiB) gets a fresh
        # instantiation, which checks the initial memory against it as ever.
        if limits.memory < pooling.KEEP_RESIDENT:
            return None
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare[0].set_limits(memory_size=limits.memory)
        return spare

    def execute(
        self, request_json: str, host_call: hostcall.Handler, limits: Limits, guard: epoch.RunGuard
    ) -> tuple[str, float]:
        """Run one request in a fresh instance on this thread; (response JSON,
        seconds spent instantiating). The guest traps when `guard`'s deadline
        passes or it is cancelled.

        Raises `WasmTrap` if the guest traps, `SandboxUnavailable` if it cannot load."""
        if self._loaded is None:
            self.load()
        loaded = self._loaded
        assert loaded is not None
        return self._execute(loaded, request_json, host_call, limits, guard)

    def _execute(
        self, loaded: _Loaded, request_json: str, host_call: hostcall.Handler, limits: Limits, guard: epoch.RunGuard
    ) -> tuple[str, float]:
        t0 = time.perf_counter()
        store, run = self._instance(loaded, limits, guard)
        startup = time.perf_counter() - t0
        epoch.bind(guard)
        wasi.bind(guard)
        hostcall.bind_handler(host_call)
        try:
            response = hostcall.call_string_func(run, store, request_json)
        except wasmtime.WasmtimeError as exc:  # Trap is a subclass
            raise WasmTrap(_classify_trap(exc, limits)) from exc
        finally:
            hostcall.bind_handler(None)
            wasi.bind(None)
            epoch.bind(None)
            if self._graveyard.qsize() < _REAP_BACKLOG:
                self._graveyard.put(store)
                del store
            else:  # the housekeeper is behind: drop it here
                del store
                self._slots.release()
        if not isinstance(response, str):
            raise WasmTrap(SandboxCrashed(f"the guest answered {type(response).__name__}, not a string"))
        return response, startup

    def _instance(self, loaded: _Loaded, limits: Limits, guard: epoch.RunGuard) -> tuple[Store, Func]:
        """The spare if there is one, else a new instance in a free slot; while
        none is free, wait (polling for a spare too) until the run's deadline."""
        while True:
            spare = self._take_spare(limits)
            if spare is not None:
                return spare
            remaining = guard.deadline - time.monotonic()
            if self._slots.acquire(timeout=max(0.0, min(_SLOT_POLL_S, remaining))):
                break
            if remaining <= _SLOT_POLL_S:
                raise WasmTrap(
                    RunTimeout(
                        f"the run exceeded its {limits.timeout:g} s timeout waiting for one of "
                        f"the {pooling.INSTANCES} sandbox slots"
                    )
                )
        try:
            return _instantiate(loaded, limits)
        except wasmtime.WasmtimeError as exc:
            self._slots.release()
            raise WasmTrap(_classify_trap(exc, limits)) from exc
        except BaseException:
            self._slots.release()
            raise


def _instantiate(loaded: _Loaded, limits: Limits) -> tuple[Store, Func]:
    """A new store and instance of the guest, under `limits`; its `run` export."""
    store = Store(loaded.engine)
    store.set_limits(memory_size=limits.memory)
    if not epoch.install(store):
        store.set_epoch_deadline(max(1, math.ceil(limits.timeout / TICK_S)))
    instance = loaded.linker.instantiate(store, loaded.component)
    run = instance.get_func(store, loaded.run_export)
    if run is None:
        raise SandboxUnavailable("the sandbox guest has no `run` export")
    return store, run


def _classify_trap(exc: Exception, limits: Limits) -> RunTimeout | RunCancelled | SandboxCrashed:
    text = str(exc)
    if epoch.CANCEL_TRAP in text:
        return RunCancelled("the run was cancelled")
    if epoch.DEADLINE_TRAP in text:
        return RunTimeout(f"the run exceeded its {limits.timeout:g} s timeout")
    code = getattr(exc, "trap_code", None)
    if code == wasmtime.TrapCode.INTERRUPT or "interrupt" in text:
        return RunTimeout(f"the run exceeded its {limits.timeout:g} s timeout")
    if code == wasmtime.TrapCode.STACK_OVERFLOW or "call stack exhausted" in text:
        return SandboxCrashed("the guest's stack overflowed (too deep recursion?)")
    logger.warning("sandbox guest trapped: %s", text[:2000])
    return SandboxCrashed(f"the guest trapped: {_trap_reason(text)[:300]}")


def _trap_reason(text: str) -> str:
    """The line of a wasmtime error that says what happened: its first line is
    often only "error while executing at wasm backtrace:", the cause comes last."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("wasm trap:"):
            return line
    return lines[0] if lines else "unknown trap"
