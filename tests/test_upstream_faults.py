"""The hub against a faulty upstream: a raw JSON-RPC server over real stdio
(tests/fixtures/servers/raw_server.py) that sends what an SDK server cannot:
malformed answers, -32000 errors, 50 MB lines; that is down at startup or
after a crash and comes back."""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest

from codemode import CodeMode, Hub, Sandbox, ServerUnavailable, ToolError, parse_config
from codemode._upstream.stdio import Framer, response_id

pytestmark = pytest.mark.anyio

RAW = Path(__file__).resolve().parent / "fixtures" / "servers" / "raw_server.py"


def raw_entry(*args: str, **codemode: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(RAW), *args], "codemode": {"protocol": "legacy", **codemode}}


def hub_for(servers: dict[str, Any], **kwargs: Any) -> Hub:
    return Hub(parse_config({"mcpServers": servers}), **kwargs)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_32000_error_is_the_servers_error_and_the_session_survives() -> None:
    async with hub_for({"raw": raw_entry()}) as hub:
        pid = await hub.call_tool("raw", "pid")
        outcomes: dict[str, Any] = {}

        async def slow() -> None:
            outcomes["slow"] = await hub.call_tool("raw", "slow", {"seconds": 0.5})

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)  # in flight while the error arrives
                await anyio.sleep(0.1)  # let the slow call reach the server first
                with pytest.raises(ToolError) as info:
                    await hub.call_tool("raw", "error_32000")
        assert info.value.code == "tool_error"
        assert "quota exceeded for this key" in info.value.message
        assert outcomes["slow"] == "done"
        assert await hub.call_tool("raw", "pid") == pid  # not restarted


@pytest.mark.parametrize(
    ("tool", "why"),
    [
        ("null_result", "result is null"),
        ("string_result", "result is str"),
        ("deep", "nested too deeply"),
        ("unknown_block", "content block 0"),
    ],
)
async def test_a_malformed_answer_fails_its_call_at_once_with_a_clear_error(tool: str, why: str) -> None:
    async with hub_for({"raw": raw_entry(timeout=60)}) as hub:
        with anyio.fail_after(10):  # far below the server's 60 s timeout
            with pytest.raises(ToolError) as info:
                await hub.call_tool("raw", tool)
        assert info.value.code == "tool_error"
        assert why in info.value.message and "malformed" in info.value.message
        assert "input_value" not in info.value.message and "pydantic" not in info.value.message
        assert await hub.call_tool("raw", "echo", {"text": "still here"}) == "still here"


@pytest.mark.parametrize("tool", ["big", "big_id_last"])
async def test_a_50_mb_answer_is_refused_as_it_arrives_within_bounded_memory(tool: str) -> None:
    cap = 2_000_000
    async with hub_for({"raw": raw_entry(timeout=60)}, max_message_bytes=cap) as hub:
        pid = await hub.call_tool("raw", "pid")
        tracemalloc.start()
        try:
            with anyio.fail_after(20):
                with pytest.raises(ToolError) as info:
                    await hub.call_tool("raw", tool, {"bytes": 50_000_000})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.value.code == "tool_result_too_large"
        assert f"{cap}-byte limit" in info.value.message
        assert peak < 3 * cap
        # The rest of the line was skipped: the session goes on, same process.
        with anyio.fail_after(10):
            assert await hub.call_tool("raw", "echo", {"text": "next"}) == "next"
        assert await hub.call_tool("raw", "pid") == pid


async def test_an_answer_over_the_cap_is_a_catchable_error_in_the_sandbox() -> None:
    code = """
try:
    await raw.big(bytes=5_000_000)
except ToolError as e:
    code = e.code
[code, await raw.echo(text="ok")]
"""
    async with hub_for({"raw": raw_entry()}, max_message_bytes=1_000_000) as hub:
        async with Sandbox() as sandbox:
            result = await sandbox.run(code, tools=hub.tools())
    assert result.error is None, result.error
    assert result.value == ["tool_result_too_large", "ok"]


def test_the_framer_splits_lines_across_chunks_and_caps_each() -> None:
    framer = Framer(10)
    data = b'{"a":1}\n{"id":7,"x":"' + b"y" * 50 + b'"}\n\n{"b":2}\n'
    lines, crossings = [], []
    for i in range(0, len(data), 3):
        got, crossed = framer.feed(data[i : i + 3])
        lines += got
        if crossed is not None:
            crossings.append(crossed)
    assert [(line.data, line.oversized) for line in lines if not line.oversized] == [
        (b'{"a":1}', False),
        (b'{"b":2}', False),
    ]
    big = [line for line in lines if line.oversized]
    assert len(big) == 1 and big[0].size == len(b'{"id":7,"x":"') + 52
    assert len(crossings) == 1 and response_id(big[0].data, big[0].tail) == 7


def test_ids_are_read_only_from_a_responses_edges() -> None:
    assert response_id(b'{"jsonrpc":"2.0","id":3,"result":{"x":"') == 3
    assert response_id(b'{"jsonrpc":"2.0","result":{', b'"x"}},"id":"a-1"}') == "a-1"
    assert response_id(b'{"jsonrpc":"2.0","method":"x","id":3,') is None  # a request, not an answer
    assert response_id(b'{"jsonrpc":"2.0","result":{"items":[{"id":9,', b'"id":9}]}}') is None


async def test_an_upstream_that_dies_and_cannot_restart_comes_back_without_a_restart(tmp_path: Path) -> None:
    flag = tmp_path / "down"
    code = """
try:
    value = await raw.echo(text="hi")
except ToolError as e:
    value = [e.code, str(e)]
value
"""
    async with hub_for({"raw": raw_entry("--fail-if-exists", str(flag), connectTimeout=5)}) as hub:
        pid = int(await hub.call_tool("raw", "pid"))
        flag.touch()
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(10):
            while hub.state("raw") != "unavailable":  # nothing to wait on: the supervisor retries in the background
                await anyio.sleep(0.02)
        # The namespace stays defined, from the last listing; calls fail clearly.
        async with Sandbox() as sandbox:
            result = await sandbox.run(code, tools=hub.tools())
        assert result.error is None, result.error
        assert result.value[0] == "server_unavailable" and "'raw'" in result.value[1]
        status = {s.namespace: s for s in hub.status()}["raw"]
        assert status.state == "unavailable" and status.last_error is not None and status.tools > 0
        flag.unlink()
        with anyio.fail_after(20):
            while True:
                try:
                    assert await hub.call_tool("raw", "echo", {"text": "back"}) == "back"
                    break
                except ServerUnavailable:
                    await anyio.sleep(0.05)
        assert hub.state("raw") == "ready" and hub.failures == {}


async def test_a_server_down_at_startup_is_retried_until_it_comes_up(tmp_path: Path) -> None:
    flag = tmp_path / "down"
    flag.touch()
    async with hub_for({"raw": raw_entry("--fail-if-exists", str(flag), connectTimeout=5)}) as hub:
        assert hub.failures["raw"].code == "connect_failed"
        with pytest.raises(ServerUnavailable) as info:
            await hub.call_tool("raw", "echo", {"text": "x"})
        assert info.value.code == "server_unavailable" and "'raw'" in info.value.message
        generation = hub.generation
        flag.unlink()
        with anyio.fail_after(40):  # the backoff is at most 30 s
            await hub.wait_for_change(generation)
        assert hub.state("raw") == "ready"
        assert await hub.call_tool("raw", "echo", {"text": "up"}) == "up"


async def test_a_run_naming_a_server_that_never_came_up_fails_with_server_unavailable(tmp_path: Path) -> None:
    flag = tmp_path / "down"
    flag.touch()
    config = parse_config({"mcpServers": {"raw": raw_entry("--fail-if-exists", str(flag))}})
    async with CodeMode(config=config) as cm:
        result = await cm.execute("await raw.echo(text='x')")
    assert result.error is not None
    assert result.error.code == "server_unavailable" and "'raw'" in result.error.message


ECHO = Path(__file__).resolve().parent / "fixtures" / "servers" / "echo_server.py"


async def test_a_50_mb_answer_over_http_is_refused_within_bounded_memory() -> None:
    # The SDK's client read a JSON answer (how the SDK's server answers a tool
    # call) whole before parsing it: a server reached over HTTP could make the
    # host allocate whatever it sent.
    from tests.fixtures.helpers import _free_port

    port = _free_port()
    args = [str(ECHO), "http", str(port), "json"]
    async with await anyio.open_process([sys.executable, *args]) as proc:
        try:
            cap = 2_000_000
            url = f"http://127.0.0.1:{port}/mcp"
            entry = {"type": "http", "url": url, "codemode": {"timeout": 60}}
            with anyio.fail_after(30):
                while True:  # a port that is not up yet: there is no event to wait on
                    try:
                        await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await anyio.sleep(0.05)
            async with hub_for({"echo": entry}, max_message_bytes=cap) as hub:
                assert await hub.call_tool("echo", "blob", {"size": 5}) == "xxxxx"
                tracemalloc.start()
                try:
                    with anyio.fail_after(20):
                        with pytest.raises(ToolError) as info:
                            await hub.call_tool("echo", "blob", {"size": 50_000_000})
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                assert info.value.code == "tool_result_too_large", info.value
                assert peak < 3 * cap, peak
                with anyio.fail_after(10):  # the session goes on
                    assert await hub.call_tool("echo", "blob", {"size": 1_000_000}) == "x" * 1_000_000
        finally:
            proc.terminate()


GZIP = Path(__file__).resolve().parent / "fixtures" / "servers" / "gzip_server.py"


async def test_a_compressed_answer_over_http_is_refused_unread() -> None:
    # A gzip bomb (about 100 kB that inflate to 100 MB) passed a count of the
    # bytes that arrive: the client asked for gzip and inflated it whole.
    from tests.fixtures.helpers import _free_port

    port = _free_port()
    async with await anyio.open_process([sys.executable, str(GZIP), str(port)]) as proc:
        try:
            with anyio.fail_after(30):
                while True:  # a port that is not up yet: there is no event to wait on
                    try:
                        await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await anyio.sleep(0.05)
            entry = {"type": "http", "url": f"http://127.0.0.1:{port}/mcp", "codemode": {"timeout": 60}}
            async with hub_for({"gz": entry}, max_message_bytes=2_000_000) as hub:
                tracemalloc.start()
                try:
                    with anyio.fail_after(20):
                        with pytest.raises(ToolError) as info:
                            await hub.call_tool("gz", "bomb", {})
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                assert "compressed" in info.value.message, info.value
                assert peak < 6_000_000, peak
        finally:
            proc.terminate()
