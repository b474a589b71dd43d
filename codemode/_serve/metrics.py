"""Prometheus metrics for the HTTP service, written in the text exposition
format by hand (version 0.0.4) so the service needs no client library.

Everything is updated on the event loop, so plain ints and floats suffice.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Tool calls range from in-process microseconds to slow upstream servers.
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _header(name: str, help_text: str, kind: str) -> list[str]:
    escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {escaped}", f"# TYPE {name} {kind}"]


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = _header(self.name, self.help, "counter")
        lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]
        return lines


@dataclass
class Gauge:
    """A value read when scraped, so it can never drift from the truth."""

    name: str
    help: str
    read: Callable[[], float]

    def render(self) -> list[str]:
        return [*_header(self.name, self.help, "gauge"), f"{self.name} {_number(self.read())}"]


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def render(self) -> list[str]:
        lines = _header(self.name, self.help, "histogram")
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            cumulative += n
            lines.append(f"{self.name}_bucket{_labels((), (('le', _number(bound)),))} {cumulative}")
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {_number(self.total)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    """The service's metrics. `queue_depth` and `in_flight` are read from the
    admission gate at scrape time."""

    def __init__(self, *, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        self.runs = Counter("codemode_runs_total", "Runs finished, by outcome (succeeded, failed, cancelled).")
        self.run_errors = Counter("codemode_run_errors_total", "Failed runs, by error code.")
        self.rejected = Counter(
            "codemode_rejected_total",
            "Requests turned away before running, by reason (busy, unauthorized, "
            "forbidden_origin, forbidden_host, body_too_large).",
        )
        self.tool_calls = Counter("codemode_tool_calls_total", "Tool calls finished, by ok (true or false).")
        self.tool_latency = Histogram("codemode_tool_call_duration_seconds", "Tool call latency.", _LATENCY_BUCKETS)
        self.run_latency = Histogram("codemode_run_duration_seconds", "Run wall time, queueing excluded.", _RUN_BUCKETS)
        self._gauges = [
            Gauge("codemode_queue_depth", "Runs admitted and waiting for a slot.", queue_depth),
            Gauge("codemode_runs_in_flight", "Runs executing now.", in_flight),
        ]
        # Series that exist from the start, so rate() sees their first increment.
        for outcome in ("succeeded", "failed", "cancelled"):
            self.runs.inc(0, outcome=outcome)

    def tool_call_finished(self, event: Mapping[str, object]) -> None:
        """Record one `tool_call_finished` event from `CodeMode.execute`."""
        self.tool_calls.inc(ok="true" if event.get("ok") else "false")
        duration = event.get("duration_s")
        if isinstance(duration, (int, float)):
            self.tool_latency.observe(float(duration))

    def run_finished(self, outcome: str, error_code: str | None, duration_s: float | None) -> None:
        self.runs.inc(outcome=outcome)
        if error_code is not None:
            self.run_errors.inc(code=error_code)
        if duration_s is not None:
            self.run_latency.observe(duration_s)

    def render(self) -> str:
        """The whole exposition, ending with a newline as the format requires."""
        parts: Iterable[Counter | Histogram | Gauge] = (
            self.runs,
            self.run_errors,
            self.rejected,
            self.tool_calls,
            self.tool_latency,
            self.run_latency,
            *self._gauges,
        )
        lines: list[str] = []
        for metric in parts:
            lines += metric.render()
        return "\n".join(lines) + "\n"
