"""The built-in demo's MCP servers, run over stdio by `codemode demo`.

    codemode demo-server weather    # list_cities, forecast (each call takes 0.2 s)
    codemode demo-server notes      # add_note, list_notes (kept in memory)

(`python -m codemode._demo_server NAME` does the same.)

Real MCP servers written with the official SDK, so the demo exercises the whole
path: hub, stubs, sandbox, and calls proxied back over MCP.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

CITIES = {
    "Cairo": 30.04,
    "Hanoi": 21.03,
    "Lima": -12.05,
    "Lisbon": 38.72,
    "Oslo": 59.91,
}
DELAY_S = 0.2


class Forecast(TypedDict):
    city: str
    highs_c: list[float]


def weather_server() -> MCPServer:
    server = MCPServer("weather", instructions="Demo weather data (deterministic).", log_level="CRITICAL")

    @server.tool()
    async def list_cities() -> list[str]:
        """Names of the cities that have forecasts."""
        await asyncio.sleep(DELAY_S)
        return sorted(CITIES)

    @server.tool()
    async def forecast(
        city: Annotated[str, Field(description="A city from list_cities().")],
        days: Annotated[int, Field(ge=1, le=7, description="How many days.")] = 3,
    ) -> Forecast:
        """Daily high temperatures in °C for a city, one value per day."""
        await asyncio.sleep(DELAY_S)  # a slow upstream: calls in a gather overlap
        if city not in CITIES:
            # The SDK's ToolError reaches the model with its text; any other
            # exception is masked as "Error executing tool forecast".
            raise ToolError(f"unknown city {city!r}; call list_cities()")
        base = 30 - abs(CITIES[city]) / 2
        return {"city": city, "highs_c": [round(base + (i * 7 % 5) - 2, 1) for i in range(days)]}

    return server


def notes_server() -> MCPServer:
    server = MCPServer("notes", instructions="Demo notes, kept in memory.", log_level="CRITICAL")
    notes: list[str] = []

    @server.tool()
    def add_note(text: Annotated[str, Field(min_length=1, max_length=2000)]) -> int:
        """Store a note; returns its number."""
        notes.append(text)
        return len(notes)

    @server.tool()
    def list_notes() -> list[str]:
        """Every note stored so far, oldest first."""
        return list(notes)

    return server


def main(argv: list[str]) -> int:
    servers = {"weather": weather_server, "notes": notes_server}
    if len(argv) != 1 or argv[0] not in servers:
        print(f"usage: python -m codemode._demo_server {{{','.join(servers)}}}", file=sys.stderr)
        return 2
    servers[argv[0]]().run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
