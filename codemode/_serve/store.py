"""The run store as the HTTP app sees it: the seam between the endpoints and
where runs live.

Two stores stand behind it: `runs.RunStore`, in this process's memory (the
default: nothing to install, runs end with the process), and
`redis_store.RedisRunStore`, in Redis, shared by every replica of a fleet. The
app calls only what `Runs` declares, so both answer the same endpoints with the
same shapes: `info` and the result event are the `RunInfo` model, events are
(name, seq, data) with integer `seq` for `Last-Event-ID`.

Ownership is the store's job too: a run read with another owner is `None`,
exactly as a run that never existed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol, Self

from .._limits import Limits

__all__ = ["STORE_URL_PROBLEM", "Event", "Runs", "is_store_url"]

STORE_URL_PROBLEM = "--store must be 'memory' or a redis://, rediss:// or unix:// URL"
"""What is wrong with a `--store` that `is_store_url` refuses (the URL is not echoed: it may hold a password)."""


def is_store_url(store: str | None) -> bool:
    """Whether `store` names a run store: none or "memory" (this process), or a Redis URL."""
    return store in (None, "", "memory") or store.startswith(("redis://", "rediss://", "unix://"))


Event = tuple[str, int | None, Any]
"""(SSE event name, sequence number or None, data)."""


class Runs(Protocol):
    """Background runs: start, read, stream, cancel. An async context manager;
    leaving it stops the runs this process is carrying out."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...

    async def submit(self, code: str, limits: Limits, *, trace: bool, owner: str) -> dict[str, Any]:
        """Admit a run for `owner`; answers its `RunInfo`.

        Raises `runs.Busy` when the queue is full."""
        ...

    async def info(self, run_id: str, owner: str) -> dict[str, Any] | None:
        """The run's `RunInfo`, if it is kept and `owner` started it."""
        ...

    async def why_forgotten(self, run_id: str, owner: str) -> str | None:
        """Why `owner`'s run is no longer kept; None if it is not known to have been."""
        ...

    def events(self, run_id: str, after: int, ping_s: float) -> AsyncIterator[Event]:
        """Every event after seq `after`, live ones as they come, then
        ("result", None, info) and the end; ("events_dropped", None, {count})
        first if some were lost to the bound; ("ping", None, None) after
        `ping_s` of silence. The caller has checked the owner."""
        ...

    async def cancel(self, run_id: str, wait_s: float) -> dict[str, Any] | None:
        """Cancel a queued or running run, wait up to `wait_s` for it to end, and
        answer its `RunInfo` (None if it is gone). The caller has checked the owner."""
        ...

    async def decide(self, run_id: str, call_id: str, *, approved: bool, by: str, reason: str = "") -> bool:
        """Answer a tool call the run waits on for approval; False if it waits on
        no call `call_id`. The caller has checked the owner."""
        ...

    async def ping(self) -> None:
        """Check the store can be reached. Raises `StoreUnavailable` if not."""
        ...

    def stop_intake(self) -> None:
        """Take no more runs to carry out here (the service is stopping)."""
        ...
