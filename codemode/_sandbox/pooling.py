"""wasmtime's pooling allocator for the guest, set through the C API.

A run in a fresh on-demand instance starts by faulting in its pages: the
guest's memory is the CPython heap snapshotted at build time, mapped
copy-on-write, and `1 + 1` touches about 360 of its pages, each a page fault
(3-5 us here; a write to a page already read also flushes the TLB of every CPU
running another thread of this process). The pooling allocator keeps memory
slots between instances; with `linear_memory_keep_resident` covering the
guest's initial memory, a slot is reset by copying the snapshot back over it
(about 1.8 ms for 16.7 MiB, on the housekeeping thread) instead of unmapping
it, so the next instance in that slot finds every page present and writable:
no faults at all (measured: the run of `1 + 1` 1.3 -> 0.4 ms). Each instance
still starts from exactly the snapshot: wasmtime resets a slot before reuse.
(wasmtime can copy back only the dirty pages, with Linux's PAGEMAP_SCAN, but
its C API does not expose that switch.)

Slots kept resident are never given back to the system (wasmtime resets them
in place), so the backend keeps two pools: `warm` slots kept resident for fast
starts, and up to `max - warm` more whose memory is decommitted as soon as their
instance is dropped (`keep_resident=False`). A burst beyond the warm slots then
costs memory only while it lasts. `PoolSettings` says how many of each.

wasmtime-py has no wrapper for these settings; `configure` returns False when
the bindings are missing (another wasmtime-py) and the caller keeps the default
on-demand allocator.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import ConfigError

if TYPE_CHECKING:  # the restricted backend needs no wasmtime
    from wasmtime import Config

__all__ = ["INSTANCES", "KEEP_RESIDENT", "WARM_SLOTS", "PoolSettings", "configure"]

_MIB = 1024 * 1024
KEEP_RESIDENT = 20 * _MIB
"""Bytes of each memory slot kept resident and reset by copying: the guest's
initial memory (16.7 MiB, of which the snapshot is 15.7) and a little growth."""
INSTANCES = 256
"""Default of component instances alive at once: runs executing, stores waiting
for the housekeeping thread, runs abandoned by a cancelled caller that have not
yet trapped. Each slot reserves address space (4 GiB + guard), no memory until used."""
WARM_SLOTS = 3
"""Default of slots kept resident between runs (about 17 MiB each). Back-to-back
runs rotate through three: one running, one being reset, one spare."""
# componentize-py links CPython from about 15 core modules, one memory and two tables.
_CORE_INSTANCES_PER_COMPONENT = 32
_TABLES_PER_COMPONENT = 4
_TABLE_ELEMENTS = 20_000  # CPython's function table has 5,672
_MAX_MEMORY = 4 * 1024 * _MIB  # all of wasm32, so any `Limits.memory` is ours to enforce


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """How many sandbox instances the wasm backend keeps and allows.

    `warm`: slots kept resident between runs (about 17 MiB each): runs that fit
    in them start without page faults. 0 keeps nothing resident (on demand).
    `max`: instances alive at once; past that, a run waits for one within its
    timeout. Raises `ValueError` unless 0 <= warm <= max and max >= 1."""

    warm: int = WARM_SLOTS
    max: int = INSTANCES

    def __post_init__(self) -> None:
        for name in ("warm", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"PoolSettings.{name} must be a whole number >= 0, got {value!r}")
        if self.max < 1:
            raise ValueError(f"PoolSettings.max must be at least 1, got {self.max}")
        if self.warm > self.max:
            raise ValueError(f"PoolSettings.warm ({self.warm}) cannot exceed PoolSettings.max ({self.max})")

    @classmethod
    def resolve(cls, *, warm: int | None = None, max: int | None = None) -> PoolSettings:
        """The given values, else `$CODEMODE_POOL_WARM` and `$CODEMODE_POOL_MAX`,
        else the defaults; `max` defaults up to `warm` when only `warm` is raised.

        Raises `ConfigError` for a variable that is not a whole number, and
        `ValueError` for values that do not fit together."""
        warm = _from_env("CODEMODE_POOL_WARM") if warm is None else warm
        max = _from_env("CODEMODE_POOL_MAX") if max is None else max
        if warm is None:
            warm = WARM_SLOTS if max is None or max >= WARM_SLOTS else max
        if max is None:
            max = warm if isinstance(warm, int) and warm > INSTANCES else INSTANCES
        return cls(warm=warm, max=max)


def _from_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"${name} must be a whole number, got {raw!r}") from exc


def configure(config: Config, *, instances: int = INSTANCES, keep_resident: bool = True) -> bool:
    """Switch `config` to the pooling allocator with `instances` slots; False if
    this wasmtime-py cannot, or if the process's address space is capped: the
    pool reserves it all when the engine is made, and wasmtime's C API aborts
    the process if that fails. With `keep_resident`, a dropped instance's slot
    stays resident and is reset by copying; without, it is decommitted."""
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        return False
    try:
        from wasmtime import _ffi as ffi

        pool = ffi.wasmtime_pooling_allocation_config_new()
    except (ImportError, AttributeError):  # pragma: no cover - other wasmtime-py versions
        return False
    try:
        ffi.wasmtime_pooling_allocation_config_total_component_instances_set(pool, instances)
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pool, instances * _CORE_INSTANCES_PER_COMPONENT)
        ffi.wasmtime_pooling_allocation_config_max_core_instances_per_component_set(pool, _CORE_INSTANCES_PER_COMPONENT)
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, instances)
        ffi.wasmtime_pooling_allocation_config_max_memories_per_component_set(pool, 1)
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pool, _MAX_MEMORY)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, instances * _TABLES_PER_COMPONENT)
        ffi.wasmtime_pooling_allocation_config_max_tables_per_component_set(pool, _TABLES_PER_COMPONENT)
        ffi.wasmtime_pooling_allocation_config_table_elements_set(pool, _TABLE_ELEMENTS)
        resident = KEEP_RESIDENT if keep_resident else 0
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pool, resident)
        ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(
            pool, _TABLE_ELEMENTS * 16 if keep_resident else 0
        )
        ffi.wasmtime_pooling_allocation_config_max_unused_warm_slots_set(pool, instances if keep_resident else 0)
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    except AttributeError:  # pragma: no cover - a partial binding
        return False
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)
    return True
