from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["GUEST_MIN_MEMORY", "Limits"]

_MIB = 1024 * 1024
GUEST_MIN_MEMORY = 267 * 65_536
"""The sandbox guest's initial linear memory (267 wasm pages, 16.7 MiB): a
smaller `Limits.memory` could never instantiate it. A test checks this against
the built guest, whose minimum the wasm backend also reads when it loads."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one run may use. Each limit, when hit, ends the run with a typed
    error in `RunResult.error` (sizes of output are truncated with a visible
    marker instead).

    Raises `ValueError` on construction if a limit is not a positive number
    (a whole number but for `timeout`), or `memory` is below `GUEST_MIN_MEMORY`."""

    timeout: float = 30.0
    """Wall-clock seconds for the whole run, tool calls included."""
    memory: int = 256 * _MIB
    """Bytes the guest's linear memory may grow to (wasm backend only)."""
    max_tool_calls: int = 1_000
    max_batch: int = 256
    """Tool calls one host crossing may carry (one `asyncio.gather` level)."""
    max_batch_bytes: int = 4_000_000
    """Size of one host crossing's tool calls, as UTF-8 JSON, leaving the
    sandbox. Checked before the host decodes or parses it; reading a crossing
    costs the host at most three times this."""
    max_code_bytes: int = 200_000
    max_tool_result_bytes: int = 1_000_000
    """Size of one tool result, as JSON, entering the sandbox."""
    max_stdout: int = 64_000
    """Characters of print output kept; the rest is cut with a marker."""
    max_result: int = 64_000
    """Characters of the result's JSON kept; the rest is cut with a marker."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kinds = (int, float) if field.name == "timeout" else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
                what = "number" if field.name == "timeout" else "whole number"
                raise ValueError(f"Limits.{field.name} must be a positive {what}, got {value!r}")
        if self.memory < GUEST_MIN_MEMORY:
            raise ValueError(
                f"Limits.memory must be at least {GUEST_MIN_MEMORY} bytes ({GUEST_MIN_MEMORY / _MIB:.1f} MiB), "
                f"the sandbox guest's initial memory; got {self.memory}"
            )

    def replace(self, **changes: float) -> Limits:
        """A copy with some limits changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
