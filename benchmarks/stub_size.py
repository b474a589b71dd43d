"""Stub size: tokens of each reference server's raw JSON tool definitions
against tokens of the stubs codemode renders for them.

    python -m benchmarks.stub_size [--quick] [--json FILE]

Two raw sizes per server, both as JSON: what its `tools/list` serves, verbatim
(titles, annotations, execution hints included), and the part a client hands a
model: `name`, `description`, `inputSchema` and, where the tool declares one,
`outputSchema` (the stubs carry the return types too). The ratio is taken
against the second, the smaller. Everything is counted with the o200k_base
tokenizer the token benchmark uses (`_tokens.count`). Counts depend only on
the pinned servers, so they repeat exactly; `--quick` only skips the prose.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from benchmarks._tokens import ENCODING, count, dumps
from codemode import CodeMode, Tool, parse_config

__all__ = ["measure", "raw_definitions", "render_table"]


def raw_definitions(tools: list[Tool]) -> list[dict[str, Any]]:
    """The tools as `tools/list` lists them (the fields a model is handed)."""
    out = []
    for t in tools:
        entry: dict[str, Any] = {"name": t.name, "description": t.description, "inputSchema": dict(t.input_schema)}
        if t.output_schema is not None:
            entry["outputSchema"] = dict(t.output_schema)
        out.append(entry)
    return out


async def served_definitions(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The server's `tools/list`, every field as served."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=entry["command"], args=entry.get("args", []), env=entry.get("env"))
    with anyio.fail_after(60):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
    return [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in listed.tools]


async def measure() -> list[dict[str, Any]]:
    """One row per reference server: tools, raw tokens (served and model-facing), stub tokens."""
    from tests.test_reference_servers import reference_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "files"
        root.mkdir()
        for name, entry in reference_config(root)["mcpServers"].items():
            async with CodeMode(config=parse_config({"mcpServers": {name: entry}})) as cm:
                if cm.failures:
                    raise RuntimeError(f"{name}: {cm.failures[name].message}")
                tools = cm.tools()
                raw = count(dumps(raw_definitions(tools)))
                stubs = count(cm.stubs())
            served = count(dumps(await served_definitions(entry)))
            rows.append(
                {"server": name, "tools": len(tools), "served_tokens": served, "raw_tokens": raw, "stub_tokens": stubs}
            )
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | tools | `tools/list` as served | name, description, schemas | stubs | stubs / schemas |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    total = {k: sum(r[k] for r in rows) for k in ("tools", "served_tokens", "raw_tokens", "stub_tokens")}
    for r in [*rows, {"server": "all", **total}]:
        lines.append(
            f"| {r['server']} | {r['tools']} | {r['served_tokens']:,} | {r['raw_tokens']:,} | {r['stub_tokens']:,} "
            f"| {r['stub_tokens'] / r['raw_tokens']:.0%} |"
        )
    lines.append(f"\n({ENCODING} tokens.)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stub_size", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="print the table only")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = anyio.run(measure)
    if not args.quick:
        print("Raw tool definitions (tools/list JSON) against codemode's stubs, per reference server:\n")
    print(render_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
