"""Figures the benchmarks derive from their measurements: never one that cannot be true."""

from __future__ import annotations

import math

import pytest

from benchmarks.sandbox import per_call


def stats(median_ms: float, p95_ms: float, n: int = 5) -> dict[str, float]:
    return {"median_ms": median_ms, "p95_ms": p95_ms, "n": n}


@pytest.mark.parametrize(
    ("chain", "start"),
    [
        (stats(60.0, 80.0), stats(62.0, 90.0)),  # the chain's median below the start's: noise
        (stats(63.0, 80.0), stats(62.0, 90.0)),  # above it, but by less than the start's own scatter
    ],
)
def test_a_per_call_cost_lost_in_noise_is_reported_as_below_resolution(
    chain: dict[str, float], start: dict[str, float]
) -> None:
    figure = per_call(chain, start, calls=100)
    assert figure["per_call_us"] is None
    assert "below resolution" in figure["per_call_note"]


def test_a_per_call_cost_above_the_noise_is_the_difference_of_medians_per_call() -> None:
    figure = per_call(stats(13.5, 22.0, 20), stats(1.8, 2.5, 300), calls=100)
    assert figure["per_call_us"] is not None and math.isclose(figure["per_call_us"], 117.0)
    assert "per_call_note" not in figure
