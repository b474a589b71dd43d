"""The built-in demo: two bundled MCP servers and a program that composes them."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DEMO_PROGRAM", "demo_config"]


def demo_config() -> dict[str, Any]:
    """An `mcpServers` config for the bundled demo servers (this Python runs them)."""
    return {
        "mcpServers": {
            name: {"command": sys.executable, "args": ["-m", "codemode._demo_server", name]}
            for name in ("weather", "notes")
        }
    }


DEMO_PROGRAM = """\
import asyncio

cities = await weather.list_cities()
# Every forecast at once: one host crossing, the five calls run concurrently.
forecasts = await asyncio.gather(*[weather.forecast(city=c, days=3) for c in cities])
warmest = max(forecasts, key=lambda f: sum(f["highs_c"]) / len(f["highs_c"]))
number = await notes.add_note(text=f"warmest city: {warmest['city']}")
print(f"checked {len(forecasts)} cities, saved note #{number}")
{"warmest": warmest["city"], "average_high_c": round(sum(warmest["highs_c"]) / 3, 1), "note": number}
"""
