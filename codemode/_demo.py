"""The built-in demo: a few in-process tools and a program that composes them."""

from __future__ import annotations

import anyio

from ._tools import Tool

__all__ = ["DEMO_PROGRAM", "demo_tools"]

_CITIES = {
    "Lisbon": {"country": "PT", "lat": 38.72, "lon": -9.14},
    "Oslo": {"country": "NO", "lat": 59.91, "lon": 10.75},
    "Cairo": {"country": "EG", "lat": 30.04, "lon": 31.24},
    "Lima": {"country": "PE", "lat": -12.05, "lon": -77.04},
    "Hanoi": {"country": "VN", "lat": 21.03, "lon": 105.85},
}
_DELAY_S = 0.2


async def _list_cities() -> list[str]:
    await anyio.sleep(_DELAY_S)
    return sorted(_CITIES)


async def _forecast(city: str, days: int = 3) -> dict[str, object]:
    await anyio.sleep(_DELAY_S)  # a slow upstream: calls in a gather overlap
    info = _CITIES[city]
    base = 30 - abs(float(info["lat"])) / 2  # type: ignore[arg-type]
    return {"city": city, "highs_c": [round(base + (i * 7 % 5) - 2, 1) for i in range(days)]}


def demo_tools() -> list[Tool]:
    return [
        Tool(name="list_cities", fn=_list_cities, description="Names of the cities with forecasts."),
        Tool(
            name="forecast",
            fn=_forecast,
            description="Daily high temperatures (°C) for a city, one value per day.",
            input_schema={
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": sorted(_CITIES), "description": "A city from list_cities()."},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 3},
                },
                "required": ["city"],
            },
        ),
    ]


DEMO_PROGRAM = """\
import asyncio

cities = await tools.list_cities()
# All forecasts at once: one host crossing, the calls run concurrently.
forecasts = await asyncio.gather(*[tools.forecast(city=c, days=3) for c in cities])
warmest = max(forecasts, key=lambda f: sum(f["highs_c"]) / len(f["highs_c"]))
print(f"checked {len(forecasts)} cities")
{"warmest": warmest["city"], "average_high_c": round(sum(warmest["highs_c"]) / 3, 1)}
"""
