"""Multi-step programs through the wasm sandbox against the public MCP reference
servers, pinned (tests/reference_servers.py installs them on first use)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from codemode import CodeMode, Hub, ToolCallFailed, ToolError, parse_config
from tests.reference_servers import Unavailable, npm_bin, time_server

pytestmark = pytest.mark.anyio


def reference_config(root: Path) -> dict[str, Any]:
    """All four reference servers; the filesystem one is confined to `root`."""
    try:
        time_cmd = time_server()
        servers = {
            "filesystem": {"command": str(npm_bin("mcp-server-filesystem")), "args": [str(root)]},
            "memory": {
                "command": str(npm_bin("mcp-server-memory")),
                "env": {"MEMORY_FILE_PATH": str(root.parent / "memory.jsonl")},
            },
            "everything": {"command": str(npm_bin("mcp-server-everything")), "args": ["stdio"]},
            "time": {"command": time_cmd[0], "args": time_cmd[1:]},
        }
    except Unavailable as exc:
        pytest.fail(f"the pinned reference servers cannot be installed: {exc}")
    return {"mcpServers": servers}


@pytest.fixture
async def cm(tmp_path: Path) -> AsyncIterator[CodeMode]:
    root = tmp_path / "files"
    root.mkdir()
    async with CodeMode(config=parse_config(reference_config(root))) as cm:
        assert cm.failures == {}, cm.failures
        yield cm


async def run(cm: CodeMode, code: str) -> Any:
    result = await cm.execute(code.replace("ROOT", repr(str(_root(cm)))))
    assert result.ok, result.error
    return result


def _root(cm: CodeMode) -> Path:
    assert cm.config is not None
    return Path(cm.config.servers["filesystem"].args[0])  # type: ignore[union-attr]


async def test_filesystem_fan_out_then_filter_in_the_sandbox(cm: CodeMode) -> None:
    result = await run(
        cm,
        """
import asyncio
await filesystem.create_directory(path=f"{ROOT}/logs")
await asyncio.gather(*[
    filesystem.write_file(path=f"{ROOT}/logs/day{i}.log", content="".join(
        f"{'ERROR' if (i * 7 + n) % 5 == 0 else 'INFO'} event {n}\\n" for n in range(200)))
    for i in range(6)])
listing = await filesystem.list_directory(path=f"{ROOT}/logs")
names = [line.split("] ", 1)[1] for line in listing["content"].splitlines() if line.startswith("[FILE]")]
texts = await asyncio.gather(*[filesystem.read_text_file(path=f"{ROOT}/logs/{n}") for n in names])
{n: t["content"].count("ERROR") for n, t in zip(names, texts)}
""",
    )
    expected = {f"day{i}.log": sum(1 for n in range(200) if (i * 7 + n) % 5 == 0) for i in range(6)}
    assert result.value == expected
    assert len(result.tool_calls) == 1 + 6 + 1 + 6
    # Each gather crossed once: 4 crossings for 14 calls.
    assert len({c.batch for c in result.tool_calls}) == 4


async def test_memory_builds_and_queries_a_graph(cm: CodeMode) -> None:
    result = await run(
        cm,
        """
people = ["Ada", "Grace", "Edsger"]
await memory.create_entities(entities=[
    {"name": p, "entityType": "person", "observations": [f"{p} wrote code"]} for p in people])
await memory.create_relations(relations=[
    {"from": "Ada", "to": "Grace", "relationType": "inspired"},
    {"from": "Grace", "to": "Edsger", "relationType": "inspired"}])
graph = await memory.read_graph()
found = await memory.search_nodes(query="Grace")
{"entities": sorted(e["name"] for e in graph["entities"]),
 "chain": [(r["from"], r["to"]) for r in graph["relations"]],
 "found": [e["name"] for e in found["entities"]]}
""",
    )
    assert result.value == {
        "entities": ["Ada", "Edsger", "Grace"],
        "chain": [["Ada", "Grace"], ["Grace", "Edsger"]],
        "found": ["Grace"],
    }


async def test_everything_chain_feeds_each_result_into_the_next_call(cm: CodeMode) -> None:
    result = await run(
        cm,
        """
import re
total = 1
for step in range(5):
    text = await everything.get_sum(a=total, b=total)
    total = int(float(re.findall(r"is (-?[0-9.]+)", text)[0]))
echo = await everything.echo(message=f"total={total}")
{"total": total, "echo": echo}
""",
    )
    assert result.value == {"total": 32, "echo": "Echo: total=32"}


async def test_time_converts_across_zones(cm: CodeMode) -> None:
    result = await run(
        cm,
        """
import asyncio
zones = ["Asia/Tokyo", "Europe/Paris", "America/New_York"]
out = await asyncio.gather(*[time.convert_time(source_timezone="UTC", time="12:00", target_timezone=z) for z in zones])
{o["target"]["timezone"]: o["target"]["datetime"][11:16] for o in out}
""",
    )
    tokyo, paris, new_york = (result.value[z] for z in ("Asia/Tokyo", "Europe/Paris", "America/New_York"))
    assert tokyo == "21:00"
    assert paris in ("13:00", "14:00")  # winter / summer time
    assert new_york in ("07:00", "08:00")


async def test_a_program_chains_three_servers(cm: CodeMode) -> None:
    result = await run(
        cm,
        """
now = await time.get_current_time(timezone="UTC")
stamp = now["datetime"][:10]
await filesystem.write_file(path=f"{ROOT}/report.txt", content=f"report for {stamp}\\n")
content = (await filesystem.read_text_file(path=f"{ROOT}/report.txt"))["content"]
await memory.create_entities(entities=[{"name": "report", "entityType": "file", "observations": [content.strip()]}])
node = (await memory.open_nodes(names=["report"]))["entities"][0]
{"stamp": stamp, "observation": node["observations"][0]}
""",
    )
    stamp = result.value["stamp"]
    assert result.value["observation"] == f"report for {stamp}"
    assert (_root(cm) / "report.txt").read_text() == f"report for {stamp}\n"
    assert {c.namespace for c in result.tool_calls} == {"time", "filesystem", "memory"}


async def test_a_program_follows_resource_links_in_the_namespace_that_returned_them(cm: CodeMode) -> None:
    result = await run(
        cm,
        """
import base64
links = [b for b in await everything.get_resource_links(count=2) if isinstance(b, dict) and b["type"] == "resource_link"]
out = []
for link in links:
    for part in await everything.read_resource(uri=link["uri"]):
        text = part["text"] if "text" in part else base64.b64decode(part["blob"]).decode()
        out.append((link["uri"], part["uri"], text.split(":")[0]))
out
""",
    )
    assert result.value == [
        ["demo://resource/dynamic/blob/1", "demo://resource/dynamic/blob/1", "Resource 1"],
        ["demo://resource/dynamic/text/2", "demo://resource/dynamic/text/2", "Resource 2"],
    ]
    assert [(c.namespace, c.tool) for c in result.tool_calls][1:] == [("everything", "read_resource")] * 2
    stubs = cm.stubs(["everything.read_resource"])
    assert "async def read_resource(*, uri: str) -> list[" in stubs
    # Offered only where the server serves resources: the filesystem server lacks the
    # capability; the time server declares it (as every official Python SDK server does)
    # but lists no resource nor template.
    readers = {t.namespace for t in cm.tools() if t.name == "read_resource"}
    assert "everything" in readers and not readers & {"filesystem", "time"}
    missing = await cm.execute("await everything.read_resource(uri='demo://no/such/resource')")
    assert isinstance(missing.error, ToolCallFailed) and "demo://no/such/resource" in missing.error.message


async def test_read_resource_obeys_the_servers_deny_list(tmp_path: Path) -> None:
    entry = reference_config(tmp_path)["mcpServers"]["everything"]
    config = parse_config({"mcpServers": {"everything": {**entry, "codemode": {"deny": ["read_*"]}}}})
    async with CodeMode(config=config) as cm:
        assert not any(t.name == "read_resource" for t in cm.tools())
        # Not in the stubs, and refused on the host when called anyway.
        result = await cm.execute(
            "await _call_tool('everything', 'read_resource', {'uri': 'demo://resource/static/document/architecture.md'})"
        )
        assert isinstance(result.error, ToolCallFailed)
        assert result.error.code == "unknown_tool"
    async with Hub(config) as hub:
        assert hub.resource_tools() == []
        with pytest.raises(ToolError, match="not allowed"):
            await hub.read_resource("everything", "demo://resource/dynamic/text/1")
