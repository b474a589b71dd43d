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

import atexit
import logging
import math
import queue
import re
import threading
import time
from dataclasses import dataclass

import wasmtime
from wasmtime import Config, Engine, Store
from wasmtime.component import Component, ExportIndex, Func, Linker

from .._errors import MemoryLimitExceeded, RunCancelled, RunTimeout, SandboxCrashed, SandboxUnavailable
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
# While every resident slot is taken but one is being reset, a run waits this
# long for it rather than take an on-demand slot, whose first touches of ~360
# pages cost more than a reset (about 0.6 ms) or two.
_RESET_WAIT_S = 0.003
_RESET_POLL_S = 0.0001  # how often it looks for a spare meanwhile
# wasmtime's words when every slot of a pool is taken.
_POOL_FULL = "concurrent limit"


class WasmTrap(Exception):
    """The guest trapped; `error` is what the run should report."""

    def __init__(self, error: RunTimeout | RunCancelled | SandboxCrashed | MemoryLimitExceeded) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Loaded:
    engine: Engine
    component: Component
    linker: Linker
    run_export: ExportIndex | str
    pooled: bool


@dataclass
class _Tier:
    """One engine's instances: `slots` counts the stores alive in it (a slot is
    free again only once its store is closed, never when a reference is merely
    dropped). `resident`: its slots stay resident between instances."""

    loaded: _Loaded
    slots: threading.BoundedSemaphore
    size: int
    resident: bool
    resetting: int = 0
    """Stores handed to the housekeeper and not yet dropped (read without a lock: a hint)."""

    def acquire(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return self.slots.acquire(blocking=False)
        return self.slots.acquire(timeout=timeout)

    def drop(self, store: Store) -> None:
        """Free `store`'s slot now, whatever still refers to the Python object
        (a trap's traceback keeps it alive until the cyclic GC)."""
        store.close()
        self.slots.release()


class _NoPool(Exception):
    """The pooling allocator cannot be used here."""


def _make_engine(*, pooled: bool, instances: int = pooling.INSTANCES, keep_resident: bool = True) -> Engine:
    config = Config()
    config.epoch_interruption = True
    if pooled and not pooling.configure(config, instances=instances, keep_resident=keep_resident):
        raise _NoPool("this wasmtime-py cannot configure it, or the address space is capped")
    return Engine(config)


class WasmBackend:
    """Runs requests in fresh wasm instances. Thread-safe; one per process and
    pool setting is enough.

    `pool` sets how many instances stay resident between runs and how many may
    be alive at once (`pooling.PoolSettings`; default from the environment)."""

    name = "wasm"

    def __init__(self, *, direct_host_call: bool = True, pool: pooling.PoolSettings | None = None) -> None:
        self._direct = direct_host_call
        self.pool = pool or pooling.PoolSettings.resolve()
        self._tiers: list[_Tier] = []
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._housekeeper: threading.Thread | None = None
        # Set at interpreter exit: the threads stop calling into engines that
        # module teardown is about to delete (a use after free otherwise).
        self._stopping = threading.Event()
        self._graveyard: queue.SimpleQueue[tuple[Store, _Tier] | None] = queue.SimpleQueue()
        # An instance made ahead by the housekeeper while it had nothing to drop,
        # never run: the next run takes it instead of instantiating.
        self._spare: tuple[Store, Func] | None = None
        self._spare_lock = threading.Lock()
        self._lock_resetting = threading.Lock()
        self.min_memory: int | None = None
        """The guest's initial memory in bytes, read when it loads."""

    def load(self, *, progress: guest.Progress | None = None, force_build: bool = False) -> None:
        """Load the component (building and compiling it if the cache lacks it).

        Raises `SandboxUnavailable`."""
        with self._lock:
            if self._tiers and not force_build:
                return
            try:
                self._tiers = self._load_tiers(progress=progress, force_build=force_build)
            except _NoPool as exc:
                # On-demand instances work the same, only start slower.
                logger.warning("sandbox instances fall back to on-demand allocation: %s", exc)
                loaded = self._load(_make_engine(pooled=False), pooled=False, progress=progress, force_build=False)
                _prove(loaded, 1, pooled=False)
                size = self.pool.max
                self._tiers = [_Tier(loaded, threading.BoundedSemaphore(size), size, resident=False)]
            self.min_memory = _initial_memory(self._tiers[-1].loaded)
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="codemode-epoch", daemon=True)
                self._ticker.start()
                self._housekeeper = threading.Thread(target=self._housekeep, name="codemode-reaper", daemon=True)
                self._housekeeper.start()
                atexit.register(self._stop)

    def _load_tiers(self, *, progress: guest.Progress | None, force_build: bool) -> list[_Tier]:
        """The resident pool of `warm` slots, then the pool of the rest, whose
        memory is decommitted when their instance is dropped."""
        tiers = []
        warm, rest = self.pool.warm, self.pool.max - self.pool.warm
        for size, resident in ((warm, True), (rest, False)):
            if size == 0:
                continue
            engine = _make_engine(pooled=True, instances=size, keep_resident=resident)
            loaded = self._load(engine, pooled=True, progress=progress, force_build=force_build)
            force_build = False
            # Instances now, at once and dropped at once: proves the pool fits the
            # component, and leaves warm slots resident for the first runs,
            # rather than have them fault in cold slots.
            _prove(loaded, min(_WARM_SLOTS_AT_LOAD, size) if resident else 1, pooled=True)
            tiers.append(_Tier(loaded, threading.BoundedSemaphore(size), size, resident))
        return tiers

    def _load(self, engine: Engine, *, pooled: bool, progress: guest.Progress | None, force_build: bool) -> _Loaded:
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
        return _Loaded(engine, component, linker, component.get_export_index("run") or "run", pooled)

    @property
    def pooled(self) -> bool | None:
        """Whether instances live in the pooling allocator's slots (None until
        loaded; False where it is unavailable, see `pooling`)."""
        return self._tiers[0].loaded.pooled if self._tiers else None

    def _stop(self) -> None:
        """Stop the ticking and housekeeping threads (at interpreter exit)."""
        self._stopping.set()
        self._graveyard.put(None)
        for thread in (self._ticker, self._housekeeper):
            if thread is not None:
                thread.join(timeout=2.0)
        # Delete the linkers now, while the host functions' C callbacks (and
        # their finalizers) still exist; module teardown frees those first.
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare[0].close()
        for tier in self._tiers:
            tier.loaded.linker.close()

    def _tick(self) -> None:
        while not self._stopping.wait(TICK_S):
            for tier in self._tiers:
                tier.loaded.engine.increment_epoch()

    def _housekeep(self) -> None:
        while True:
            entry = self._graveyard.get()
            if entry is None or self._stopping.is_set():
                return
            store, tier = entry
            del entry
            tier.drop(store)  # resets its slot (a copy) or decommits it
            with self._lock_resetting:
                tier.resetting -= 1
            del store
            if self._graveyard.empty():
                try:
                    self._make_spare()
                except Exception:  # the thread must live on: runs wait for it to drop stores
                    logger.exception("could not make a spare sandbox instance")

    def _make_spare(self) -> None:
        """Instantiate the next run's instance now, if nothing else waits. Only
        in resident pooled slots: then a run makes no page faults, so this work
        on a second thread cannot slow a run going on meanwhile (see the docstring)."""
        tier = self._tiers[0] if self._tiers else None
        if tier is None or not tier.resident or not epoch.AVAILABLE or self._spare is not None:
            return
        if not tier.acquire():
            return
        try:
            spare = _instantiate(tier.loaded, Limits())
        except BaseException:
            tier.slots.release()
            raise
        with self._spare_lock:
            self._spare = spare

    def _take_spare(self, limits: Limits) -> tuple[Store, Func, _Tier] | None:
        # A limit near the guest's initial memory (16.7 MiB) gets a fresh
        # instantiation, which checks the initial memory against it as ever.
        if limits.memory < pooling.KEEP_RESIDENT:
            return None
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        spare[0].set_limits(memory_size=limits.memory)
        return spare[0], spare[1], self._tiers[0]

    def execute(
        self, request_json: str, host_call: hostcall.Handler, limits: Limits, guard: epoch.RunGuard
    ) -> tuple[str, float]:
        """Run one request in a fresh instance on this thread; (response JSON,
        seconds spent instantiating). The guest traps when `guard`'s deadline
        passes or it is cancelled.

        Raises `WasmTrap` if the guest traps, `SandboxUnavailable` if it cannot load."""
        if not self._tiers:
            self.load()
        return self._execute(request_json, host_call, limits, guard)

    def _execute(
        self, request_json: str, host_call: hostcall.Handler, limits: Limits, guard: epoch.RunGuard
    ) -> tuple[str, float]:
        t0 = time.perf_counter()
        store, run, tier = self._instance(limits, guard)
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
                with self._lock_resetting:
                    tier.resetting += 1
                self._graveyard.put((store, tier))
            else:  # the housekeeper is behind: drop it here
                tier.drop(store)
            del store
        if not isinstance(response, str):
            raise WasmTrap(SandboxCrashed(f"the guest answered {type(response).__name__}, not a string"))
        return response, startup

    def _instance(self, limits: Limits, guard: epoch.RunGuard) -> tuple[Store, Func, _Tier]:
        """The spare if there is one, else a new instance in a free slot (resident
        ones first, waiting a moment for one being reset); while none is free,
        wait (polling for a spare too) until the run's deadline or its cancel."""
        if self.min_memory is not None and limits.memory < self.min_memory:
            raise WasmTrap(
                MemoryLimitExceeded(
                    f"the memory limit ({limits.memory} bytes) is below the sandbox guest's "
                    f"initial memory of {self.min_memory} bytes"
                )
            )
        reset_wait_until = time.monotonic() + _RESET_WAIT_S
        while True:
            spare = self._take_spare(limits)
            if spare is not None:
                return spare
            first = self._tiers[0]
            tier = first if first.acquire() else None
            if tier is None and first.resident and first.resetting > 0 and time.monotonic() < reset_wait_until:
                # A resident slot is about to be free: worth a short wait (a
                # spare may turn up meanwhile), see `_RESET_WAIT_S`.
                if not first.acquire(timeout=_RESET_POLL_S):
                    continue
                tier = first
            if tier is None:
                tier = next((t for t in self._tiers[1:] if t.acquire()), None)
            if tier is None:
                if guard.cancelled.is_set():
                    # Its caller is gone: waiting on would hold this worker and
                    # take a slot from a run still wanted.
                    raise WasmTrap(RunCancelled("the run was cancelled while it waited for a sandbox slot"))
                remaining = guard.deadline - time.monotonic()
                last = self._tiers[-1]
                if last.acquire(timeout=max(0.0, min(_SLOT_POLL_S, remaining))):
                    tier = last
                elif remaining <= _SLOT_POLL_S:
                    raise WasmTrap(
                        RunTimeout(
                            f"the run exceeded its {limits.timeout:g} s timeout waiting for one of "
                            f"the {self.pool.max} sandbox slots"
                        )
                    )
                else:
                    continue
            try:
                store, run = _instantiate(tier.loaded, limits)
            except wasmtime.WasmtimeError as exc:
                tier.slots.release()
                if _POOL_FULL in str(exc):
                    # Not ours to see (every store is closed before its slot
                    # counts as free); should it happen, wait like any full pool.
                    logger.warning("sandbox pool reported full while a slot was free: %s", exc)
                    time.sleep(_SLOT_POLL_S)
                    continue
                raise WasmTrap(_classify_trap(exc, limits)) from exc
            except BaseException:
                tier.slots.release()
                raise
            return store, run, tier


def _initial_memory(loaded: _Loaded) -> int | None:
    """The guest's initial memory in bytes: what instantiating it under a
    memory limit of zero says it needs (None if wasmtime words it otherwise)."""
    store = Store(loaded.engine)
    try:
        store.set_limits(memory_size=0)
        loaded.linker.instantiate(store, loaded.component)
    except wasmtime.WasmtimeError as exc:
        match = re.search(r"minimum size of (\d+) pages", str(exc))
        return int(match.group(1)) * 65_536 if match else None
    finally:
        store.close()
    return 0


def _prove(loaded: _Loaded, count: int, *, pooled: bool) -> None:
    """Make `count` instances at once and drop them: proves the pool fits."""
    stores: list[Store] = []
    try:
        for _ in range(count):
            stores.append(_instantiate(loaded, Limits())[0])
    except wasmtime.WasmtimeError as exc:
        if pooled:
            raise _NoPool(f"the guest does not fit the pool: {exc}") from exc
        raise SandboxUnavailable(f"cannot instantiate the sandbox guest: {exc}") from exc
    finally:
        for store in stores:
            store.close()


def _instantiate(loaded: _Loaded, limits: Limits) -> tuple[Store, Func]:
    """A new store and instance of the guest, under `limits`; its `run` export.
    A store that fails to instantiate is closed at once (its slot is free)."""
    store = Store(loaded.engine)
    try:
        store.set_limits(memory_size=limits.memory)
        if not epoch.install(store):
            store.set_epoch_deadline(max(1, math.ceil(limits.timeout / TICK_S)))
        instance = loaded.linker.instantiate(store, loaded.component)
        run = instance.get_func(store, loaded.run_export)
        if run is None:
            raise SandboxUnavailable("the sandbox guest has no `run` export")
    except BaseException:
        store.close()
        raise
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
        if line.startswith(("wasm trap:", "codemode:")):  # ours say what happened (e.g. os._exit)
            return line
    return lines[0] if lines else "unknown trap"
