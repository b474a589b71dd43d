# Chains calls across three MCP servers; only the final value is printed.
import asyncio

cities = await weather.list_cities()
forecasts = await asyncio.gather(*[weather.forecast(city=c, days=2) for c in cities])
hottest = max(forecasts, key=lambda f: max(f["highs_c"]))
note = await notes.add_note(text=f"hottest: {hottest['city']} at {max(hottest['highs_c'])} °C")
await memory.create_entities(
    entities=[{"name": hottest["city"], "entityType": "city", "observations": [f"hottest of {len(cities)} cities"]}]
)
found = await memory.search_nodes(query=hottest["city"])
{"hottest": hottest["city"], "note": note, "remembered": [e["name"] for e in found["entities"]]}
