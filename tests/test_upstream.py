"""The upstream hub against real MCP servers: our fixture server over real stdio
and over real Streamable HTTP (uvicorn), and the real wasm sandbox end to end."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from codemode import Hub, Sandbox, Tool, ToolError, UncaughtException, parse_config
from tests.fixtures.helpers import http_entry, http_server_url, stdio_entry  # noqa: F401 (fixture)

pytestmark = pytest.mark.anyio

SECRET = "sk-test-5f3a9c0e1b7d"


def hub_for(servers: dict[str, Any]) -> Hub:
    return Hub(parse_config({"mcpServers": servers}))


@pytest.fixture
async def hub(http_server_url: str) -> AsyncIterator[Hub]:  # noqa: F811
    """`local` over stdio and `remote` over HTTP: the same fixture server twice."""
    async with hub_for({"local": stdio_entry(), "remote": http_entry(http_server_url)}) as hub:
        assert hub.failures == {}
        yield hub


def by_name(tools: list[Tool]) -> dict[tuple[str, str], Tool]:
    return {(t.namespace, t.name): t for t in tools}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_hub_lists_every_page_of_tools_of_both_servers(hub: Hub) -> None:
    tools = by_name(hub.tools())
    # The fixture server pages its listing 4 tools at a time.
    local = sorted(name for ns, name in tools if ns == "local")
    assert len(local) == 14 and local == sorted(name for ns, name in tools if ns == "remote")
    assert {"add", "describe_shape", "weather", "get-data.v2", "grow"} <= set(local)
    shape = tools[("local", "describe_shape")]
    assert shape.input_schema["properties"]["shape"] == {"$ref": "#/$defs/Shape"}
    assert shape.input_schema["$defs"]["Color"]["enum"] == ["red", "green"]
    assert tools[("remote", "weather")].output_schema is not None
    hostile = tools[("local", "get-data.v2")]
    assert "class" in hostile.input_schema["properties"] and '"""' in hostile.description
    assert hub.namespaces == ["local", "remote"]
    # Unchanged listings keep the same objects, so stub caches keyed on them hit.
    assert hub.tools() == hub.tools() and all(a is b for a, b in zip(hub.tools(), hub.tools()))


async def test_calls_map_results_over_stdio_and_http(hub: Hub) -> None:
    for ns in ("local", "remote"):
        assert await hub.call_tool(ns, "weather", {"city": "Oslo"}) == {
            "city": "Oslo",
            "celsius": 21.5,
            "conditions": ["sunny", "dry"],
        }
        assert await hub.call_tool(ns, "json_text") == {"items": [1, 2, 3]}
        assert await hub.call_tool(ns, "two_texts") == ["first", "second"]
        image = await hub.call_tool(ns, "image")
        assert image["type"] == "image" and image["mimeType"] == "image/png" and image["size"] == 66
        assert await hub.call_tool(ns, "get-data.v2", {"class": "c"}) == {"class": "c", "limit": 10}
        with pytest.raises(ToolError) as info:
            await hub.call_tool(ns, "fail", {"reason": "nope"})
        assert info.value.code == "tool_error" and "refused: nope" in info.value.message


async def test_wrapped_plain_returns_are_typed_and_returned_unwrapped(hub: Hub) -> None:
    # MCPServer wraps `-> int` as {"result": 5} with an `addOutput` schema; the
    # model should read `-> int` and get 5.
    add = by_name(hub.tools())[("local", "add")]
    assert add.output_schema == {"title": "Result", "type": "integer"}
    stub = Sandbox().stubs([add]).source
    assert "async def add(*, a: int, b: int) -> int:" in stub
    assert await add.fn(a=2, b=3) == 5
    weather = by_name(hub.tools())[("remote", "weather")]
    assert weather.output_schema is not None and "celsius" in weather.output_schema["properties"]


async def test_end_to_end_program_chains_calls_across_stdio_and_http_in_wasm(hub: Hub) -> None:
    code = """
import asyncio
total = await local.add(a=2, b=3)
w = await remote.weather(city="Oslo")
data = await remote.get_data_v2(class_="gold", limit=total)
shape = await local.describe_shape(shape={"kind": "polygon", "points": [{"x": 1}, {"x": 2, "y": 3}]},
                                   tags=[w["city"]])
slept = await asyncio.gather(local.slow(seconds=0.2), remote.slow(seconds=0.2))
try:
    await remote.fail(reason="expected")
    caught = None
except ToolError as e:
    caught = str(e)
img = await local.image()
{"total": total, "celsius": w["celsius"], "data": data, "shape": shape,
 "slept": slept, "caught": caught, "image_bytes": img["size"]}
"""
    async with Sandbox() as sandbox:
        result = await sandbox.run(code, tools=hub.tools())
    assert result.error is None, result.error
    assert result.value == {
        "total": 5,
        "celsius": 21.5,
        "data": {"class": "gold", "limit": 5},
        "shape": "red polygon with 2 points x1.0 tags=['Oslo']",
        "slept": ["slept 0.2", "slept 0.2"],
        "caught": "Error executing tool fail: refused: expected",
        "image_bytes": 66,
    }
    assert [(c.namespace, c.tool) for c in result.tool_calls][:2] == [("local", "add"), ("remote", "weather")]
    # Both slow calls went out in one batch and ran concurrently.
    slow = [c for c in result.tool_calls if c.tool == "slow"]
    assert slow[0].batch == slow[1].batch


async def test_a_crash_mid_run_fails_that_call_and_the_next_call_reconnects() -> None:
    code = """
before = await local.pid()
try:
    await local.crash()
    error = None
except ToolError as e:
    error = str(e)
after = await local.pid()
{"before": before, "after": after, "error": error}
"""
    async with hub_for({"local": stdio_entry()}) as hub:
        async with Sandbox() as sandbox:
            result = await sandbox.run(code, tools=hub.tools())
        assert result.error is None, result.error
        value = result.value
        assert "closed the connection" in value["error"]
        assert value["before"] != value["after"]
        assert not alive(value["before"])
        assert alive(value["after"])
        assert hub.failures == {}
        assert await hub.call_tool("local", "add", {"a": 1, "b": 1}) == 2
    assert not alive(value["after"])


async def test_a_server_that_died_between_calls_is_restarted_before_the_next_call() -> None:
    async with hub_for({"local": stdio_entry()}) as hub:
        pid = await hub.call_tool("local", "pid")
        generation = hub.generation
        assert hub.is_connected("local")
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(5):
            while hub.is_connected("local"):  # nothing to wait on: the session just sees EOF
                await anyio.sleep(0.01)
        with anyio.fail_after(10):
            new_pid = await hub.call_tool("local", "pid")
        assert new_pid != pid and hub.failures == {}
        # The restart relisted the tools; unchanged, so the Tool objects are kept.
        assert hub.generation == generation


async def test_one_server_failing_to_start_does_not_break_the_others(http_server_url: str) -> None:  # noqa: F811
    servers = {
        "missing": {"command": "/nonexistent/mcp-server"},
        "quits": {"command": sys.executable, "args": ["-c", "raise SystemExit(1)"]},
        "remote": http_entry(http_server_url),
    }
    async with hub_for(servers) as hub:
        failures = hub.failures
        assert {ns: f.code for ns, f in failures.items()} == {"missing": "spawn_failed", "quits": "connect_failed"}
        assert "No such file or directory" in failures["missing"].message
        assert failures["missing"].to_dict()["server"] == "missing"
        assert hub.namespaces == ["remote"]
        assert {t.namespace for t in hub.tools()} == {"remote"}
        assert await hub.call_tool("remote", "add", {"a": 2, "b": 2}) == 4
        with pytest.raises(ToolError, match="unavailable"):
            await hub.call_tool("missing", "anything")


async def test_a_server_that_never_answers_times_out_and_is_stopped() -> None:
    hang = {
        "command": sys.executable,
        "args": ["-c", "import time; time.sleep(60)"],
        "codemode": {"connectTimeout": 0.5},
    }
    with anyio.fail_after(10):
        async with hub_for({"hang": hang, "local": stdio_entry()}) as hub:
            assert hub.failures["hang"].code == "connect_timeout"
            assert await hub.call_tool("local", "add", {"a": 1, "b": 2}) == 3


async def test_calls_time_out_and_the_connection_stays_usable() -> None:
    async with hub_for({"local": stdio_entry(timeout=0.5)}) as hub:
        with anyio.fail_after(5):
            with pytest.raises(ToolError, match=r"timed out after 0\.5 s"):
                await hub.call_tool("local", "slow", {"seconds": 30})
        assert await hub.call_tool("local", "add", {"a": 1, "b": 2}) == 3


async def test_deny_and_allow_lists_are_enforced_on_the_host(http_server_url: str) -> None:  # noqa: F811
    servers = {
        "local": stdio_entry(deny=["crash", "get-*"]),
        "remote": http_entry(http_server_url, allow=["add", "weather", "crash"], deny=["crash"]),
    }
    async with hub_for(servers) as hub:
        names = {(t.namespace, t.name) for t in hub.tools()}
        assert ("local", "crash") not in names and ("local", "get-data.v2") not in names
        assert ("local", "add") in names
        assert {n for ns, n in names if ns == "remote"} == {"add", "weather"}
        for ns, tool in [("local", "crash"), ("local", "get-data.v2"), ("remote", "crash"), ("remote", "pid")]:
            with pytest.raises(ToolError, match="not allowed"):
                await hub.call_tool(ns, tool)
        # Model code does not even see a denied tool.
        async with Sandbox() as sandbox:
            result = await sandbox.run("await local.crash()", tools=hub.tools())
        assert isinstance(result.error, UncaughtException) and result.error.exc_type == "AttributeError"
        assert await hub.call_tool("local", "pid") > 0  # the server did not crash


async def test_secrets_reach_servers_but_never_error_text(
    http_server_url: str,  # noqa: F811 (fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    servers = {
        "local": {**stdio_entry(), "env": {"API_TOKEN": SECRET}},
        "remote": {**http_entry(http_server_url), "headers": {"X-Api-Key": SECRET}},
        "down": {
            "url": f"http://user:{SECRET}@127.0.0.1:9/mcp?key={SECRET}",
            "headers": {"Authorization": f"Bearer {SECRET}"},
            "codemode": {"connectTimeout": 5},
        },
        "bad": {"command": "/nonexistent/mcp-server", "env": {"T": SECRET}},
    }
    async with hub_for(servers) as hub:
        assert set(hub.failures) == {"down", "bad"}
        assert await hub.call_tool("local", "env_has", {"name": "API_TOKEN", "value": SECRET}) is True
        assert await hub.call_tool("remote", "header_is", {"name": "X-Api-Key", "value": SECRET}) is True
        texts = [repr(hub.failures), repr(hub.config), repr(hub.tools())]
        for ns in ("local", "remote"):
            with pytest.raises(ToolError) as info:
                await hub.call_tool(ns, "fail", {"reason": f"the key is {SECRET}"})
            texts += [str(info.value), repr(info.value)]
            assert "the key is ***" in info.value.message
        with pytest.raises(ToolError) as down:
            await hub.call_tool("down", "add")
        texts.append(str(down.value))
    # The SDK logs requests (arguments included) at DEBUG; what codemode logs is ours to keep clean.
    texts += [record.getMessage() + str(record.exc_text) for record in caplog.records if record.name == "codemode"]
    for text in texts:
        assert SECRET not in text


@pytest.mark.parametrize("protocol", ["auto", "legacy"])
async def test_a_tool_list_change_is_picked_up(protocol: str) -> None:
    async with hub_for({"local": stdio_entry(protocol=protocol)}) as hub:
        assert "late_tool" not in {t.name for t in hub.tools()}
        generation = hub.generation
        assert await hub.call_tool("local", "grow") == "grown"
        with anyio.fail_after(5):
            await hub.wait_for_change(generation)
        late = by_name(hub.tools())[("local", "late_tool")]
        assert await late.fn(word="hi") == "HI"


async def test_closing_stops_every_child_process_and_is_idempotent() -> None:
    hub = hub_for({"a": stdio_entry(), "b": stdio_entry()})
    async with hub:
        pids = [await hub.call_tool(ns, "pid") for ns in ("a", "b")]
        assert all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)
    await hub.aclose()
    with pytest.raises(ToolError, match="closed"):
        await hub.call_tool("a", "pid")


async def test_closing_while_a_call_is_in_flight_is_bounded() -> None:
    with anyio.fail_after(15):
        async with hub_for({"local": stdio_entry()}) as hub:
            pid = await hub.call_tool("local", "pid")
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.call_tool, "local", "slow", {"seconds": 60})
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
    assert not alive(pid)
