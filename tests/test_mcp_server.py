"""codemode as an MCP server, end to end: the official SDK client over real stdio
(spawning `python -m codemode mcp`) and over real Streamable HTTP, the MCP
Inspector CLI as a third-party client, and the fixture server as the upstream."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from anyio.abc import Process
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent

from codemode import CodeMode, Tool, parse_config
from codemode import build_mcp_server as build_server
from codemode._cli import main as codemode_main
from codemode._sandbox.wasm import WasmBackend
from tests.fixtures.helpers import stdio_entry

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
TOKEN = "mcp-test-token-2b9e"
STARTUP_S = 60  # a cold guest build on a fresh cache is the slow case
# Two steps, three calls in one gather: only the final dict may come back.
PROGRAM = """\
import asyncio
cities = ["Oslo", "Rome", "Lima"]
reports = await asyncio.gather(*(demo.weather(city=c) for c in cities))
warm = [r["city"] for r in reports if r["celsius"] > 20]
{"warm": warm, "count": len(reports)}
"""
FINAL = {"warm": ["Oslo", "Rome", "Lima"], "count": 3}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # Module scope, so one spawned server serves every test of a transport.
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def guest_built() -> None:
    """Build (or load) the guest here, once: every server spawned below would
    otherwise build it itself, past the clients' timeouts, after a guest change."""
    WasmBackend().load()


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"demo": stdio_entry()}}))
    return path


def codemode_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "codemode", "mcp", "--config", str(config), *extra]


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


@dataclass
class Progress:
    updates: list[tuple[float, float | None, str | None]] = field(default_factory=list)

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.updates.append((progress, total, message))


# --- stdio -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def stdio_client(config_path: Path) -> AsyncIterator[Client]:
    cmd = codemode_cmd(config_path)
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ), cwd=str(REPO))
    with anyio.fail_after(STARTUP_S):
        async with Client(params, read_timeout_seconds=30) as client:
            yield client


async def test_stdio_server_offers_execute_code_with_the_contract_and_every_stub(stdio_client: Client) -> None:
    tools = {t.name: t for t in (await stdio_client.list_tools()).tools}
    # The fixture's stubs fit the default budget: execute_code carries them, so a
    # model needs no search, and the discovery tools are not offered at all.
    assert sorted(tools) == ["execute_code"]
    execute = tools["execute_code"]
    assert execute.input_schema["required"] == ["code"]
    assert execute.input_schema["properties"]["trace"]["default"] is False
    description = (execute.description or "").lower()
    for lesson in ("top-level `await`", "last expression", "asyncio.gather", "toolerror"):
        assert lesson in description
    assert "async def weather(*, city: str)" in (execute.description or "")
    # Some fixture tools declare no output schema: the contract says what `-> Content` is.
    assert "-> content` means no declared type" in description
    assert "execute_code" in (stdio_client.instructions or "") and "search_tools" not in (
        stdio_client.instructions or ""
    )


async def test_the_stubs_budget_decides_between_inline_stubs_and_search_with_stubs() -> None:
    async def double(n: int) -> int:
        return 2 * n

    tool = Tool(name="double", fn=double, input_schema={"type": "object", "properties": {"n": {"type": "integer"}}})
    async with CodeMode(tools=[tool], stubs_budget=0) as cm, Client(build_server(cm)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert sorted(tools) == ["execute_code", "get_tool_stubs", "search_tools"]
        assert tools["search_tools"].annotations is not None and tools["search_tools"].annotations.read_only_hint
        assert "async def" not in (tools["execute_code"].description or "")
        # Which tools the model will read is not known: the contract has the `Content` rule.
        assert "`-> Content` means no declared type" in (tools["execute_code"].description or "")
        assert "search_tools" in (client.instructions or "")
        # The instructions carry the compact index of namespaces.
        assert re.search(r"^- tools \(1 tools\): double$", client.instructions or "", re.M)
        plain = text_of(await client.call_tool("search_tools", {"query": "double a number"}))
        assert plain == "tools.double(*, n: int | None = None) -> Content  # Calls the tool 'double'."
        found = text_of(await client.call_tool("search_tools", {"query": "double a number", "with_stubs": True}))
        assert found.startswith(plain + "\n\n```python\n") and "    async def double(" in found
    async with CodeMode(tools=[tool]) as cm, Client(build_server(cm)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert sorted(tools) == ["execute_code"]
        assert cm.stubs().rstrip() in (tools["execute_code"].description or "")


async def test_a_server_that_is_down_keeps_the_discovery_tools(config_path: Path) -> None:
    # It may come up later with tools the inline stubs lack: search is how a model would find them.
    config = json.loads(config_path.read_text())
    config["mcpServers"]["down"] = {"command": "/nonexistent/mcp-server"}
    async with CodeMode(config=parse_config(config)) as cm, Client(build_server(cm)) as client:
        assert "down" in cm.failures and cm.inline_stubs() is not None
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert sorted(tools) == ["execute_code", "get_tool_stubs", "search_tools"]
        assert "async def" not in (tools["execute_code"].description or "")
        assert "Unavailable right now: down" in (client.instructions or "")


async def test_execute_code_returns_only_the_final_value(stdio_client: Client) -> None:
    progress = Progress()
    result = await stdio_client.call_tool("execute_code", {"code": PROGRAM}, progress_callback=progress)
    assert not result.is_error
    assert json.loads(text_of(result)) == FINAL  # no intermediate tool results, no trace
    assert result.structured_content is not None
    assert result.structured_content["value"] == FINAL and result.structured_content["ok"] is True
    assert "tool_calls" not in result.structured_content
    # One progress notification per finished tool call, in increasing order.
    assert [p for p, _, _ in progress.updates] == [1, 2, 3]
    assert all(m == "demo.weather ok" for _, _, m in progress.updates)


async def test_stdout_comes_after_the_value_clearly_separated(stdio_client: Client) -> None:
    result = await stdio_client.call_tool("execute_code", {"code": 'print("checking")\n6 * 7'})
    assert text_of(result) == "42\n\n--- stdout ---\nchecking"
    assert result.structured_content is not None and result.structured_content["stdout"] == "checking\n"


async def test_trace_is_returned_only_when_asked(stdio_client: Client) -> None:
    result = await stdio_client.call_tool("execute_code", {"code": PROGRAM, "trace": True})
    assert result.structured_content is not None
    calls = result.structured_content["tool_calls"]
    assert [(c["namespace"], c["tool"], c["ok"]) for c in calls] == [("demo", "weather", True)] * 3
    assert len({c["batch"] for c in calls}) == 1  # the gather was one host crossing
    assert "--- tool calls (3) ---" in text_of(result)


async def test_uncaught_exception_is_an_error_with_code_and_the_models_traceback(stdio_client: Client) -> None:
    code = 'print("before")\nratio = 1 / 0\nratio'
    result = await stdio_client.call_tool("execute_code", {"code": code})
    assert result.is_error
    assert result.structured_content is not None
    error = result.structured_content["error"]
    assert error["code"] == "uncaught_exception" and error["exc_type"] == "ZeroDivisionError"
    assert error["traceback"] == [{"line": 2, "name": "<module>", "text": "ratio = 1 / 0"}]
    text = text_of(result)
    assert text.startswith("Error [uncaught_exception]: ZeroDivisionError: division by zero")
    assert "line 2, in <module>: ratio = 1 / 0" in text and text.endswith("--- stdout ---\nbefore")


async def test_syntax_error_names_the_line(stdio_client: Client) -> None:
    result = await stdio_client.call_tool("execute_code", {"code": "x = 1\ny = (x +\n"})
    assert result.is_error and result.structured_content is not None
    error = result.structured_content["error"]
    assert error["code"] == "syntax_error" and error["line"] == 2
    assert text_of(result).startswith("Error [syntax_error]:")


async def test_failed_tool_call_is_an_error_with_the_tool_error_code(stdio_client: Client) -> None:
    result = await stdio_client.call_tool("execute_code", {"code": 'await demo.fail(reason="nope")'})
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"]["code"] == "tool_error"
    assert text_of(result).startswith("Error [tool_error]:") and "refused: nope" in text_of(result)


async def test_search_then_stubs_then_unknown_names_get_suggestions(config_path: Path) -> None:
    config = parse_config(json.loads(config_path.read_text()))
    async with CodeMode(config=config, stubs_budget=0) as cm, Client(build_server(cm)) as client:
        found = text_of(await client.call_tool("search_tools", {"query": "weather in a city", "limit": 3}))
        assert found.splitlines()[0].startswith("demo.weather(")
        stubs = await client.call_tool("get_tool_stubs", {"names": ["demo.weather"]})
        assert not stubs.is_error and "async def weather(" in text_of(stubs)
        missing = await client.call_tool("get_tool_stubs", {"names": ["demo.wether"]})
    assert missing.is_error and missing.structured_content is not None
    assert missing.structured_content["error"]["code"] == "tool_not_found"
    assert missing.structured_content["error"]["suggestions"] == {"demo.wether": ["demo.weather"]}


async def test_stdio_server_exits_cleanly_on_sigterm(config_path: Path) -> None:
    async with await anyio.open_process(codemode_cmd(config_path), stdin=subprocess.PIPE) as proc:
        await read_stderr_until(proc, re.compile(r"serving \d+ tools"))
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await proc.wait() == 0


# --- Streamable HTTP -------------------------------------------------------------------------------


async def read_stderr_until(proc: Process, pattern: re.Pattern[str]) -> re.Match[str]:
    """Read the server's stderr until a line matches (bounded); the caller keeps draining it."""
    assert proc.stderr is not None
    seen = ""
    with anyio.fail_after(STARTUP_S):
        async for chunk in proc.stderr:
            seen += chunk.decode(errors="replace")
            if match := pattern.search(seen):
                return match
    raise AssertionError(f"the server exited before logging {pattern.pattern!r}:\n{seen}")


async def drain(proc: Process) -> None:
    assert proc.stderr is not None
    async for _ in proc.stderr:
        pass


@dataclass(frozen=True)
class HttpServer:
    url: str
    proc: Process


@asynccontextmanager
async def serve_http(config: Path, *extra: str) -> AsyncIterator[HttpServer]:
    """`codemode mcp --http --port 0` as a process; stopped with SIGTERM, which must exit 0."""
    async with await anyio.open_process(codemode_cmd(config, "--http", "--port", "0", *extra)) as proc:
        match = await read_stderr_until(proc, re.compile(r"listening on (http://\S+/mcp)"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, proc)  # a full pipe would block the server's logging
            try:
                yield HttpServer(url=match.group(1), proc=proc)
            finally:  # also when the test failed: else `drain` would keep the task group open forever
                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(15):
                    code = await proc.wait()
            assert code == 0


@pytest.fixture(scope="module")
async def http_server(config_path: Path) -> AsyncIterator[HttpServer]:
    async with serve_http(config_path, "--token", TOKEN, "--allow-origin", "https://app.example") as server:
        yield server


@asynccontextmanager
async def http_client(url: str, token: str = TOKEN) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=120)
    ) as http:
        with anyio.fail_after(30):
            async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=30) as client:
                yield client


async def test_http_client_runs_a_program_and_gets_only_the_final_value(http_server: HttpServer) -> None:
    async with http_client(http_server.url) as client:
        assert sorted(t.name for t in (await client.list_tools()).tools) == ["execute_code"]
        progress = Progress()
        result = await client.call_tool("execute_code", {"code": PROGRAM}, progress_callback=progress)
        assert not result.is_error and json.loads(text_of(result)) == FINAL
        assert [p for p, _, _ in progress.updates] == [1, 2, 3]


async def test_http_handshake_era_client_works_too(http_server: HttpServer) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        with anyio.fail_after(30):
            async with Client(streamable_http_client(http_server.url, http_client=http), mode="legacy") as client:
                assert client.protocol_version == "2025-11-25"
                result = await client.call_tool("execute_code", {"code": PROGRAM})
                assert json.loads(text_of(result)) == FINAL


async def test_http_refuses_missing_token_foreign_origin_and_foreign_host(http_server: HttpServer) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    auth = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=10) as http:

        async def post(**headers: str) -> httpx.Response:
            return await http.post(http_server.url, json=init, headers=headers)

        # The same guard and the same problem shape as `codemode serve` (tests/test_guards.py).
        for response, status, code in [
            (await post(), 401, "unauthorized"),
            (await post(Authorization="Bearer wrong"), 401, "unauthorized"),
            (await post(**auth, Origin="http://evil.example"), 403, "forbidden_origin"),
            (await post(**auth, Host="evil.example"), 403, "forbidden_host"),
        ]:
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == code and response.json()["status"] == status
        assert (await post(**auth, Origin="https://app.example")).status_code == 200
        assert (await post(**auth, Origin="http://localhost:5173")).status_code == 200
    with pytest.raises(ExceptionGroup) as refused:
        async with http_client(http_server.url, token="wrong"):
            pass
    assert refused.group_contains(MCPError, depth=2)


def test_refuses_to_bind_a_public_address_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CODEMODE_TOKEN", raising=False)
    assert codemode_main(["mcp", "--http", "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_bad_config_exits_3(tmp_path: Path) -> None:
    (tmp_path / "mcp.json").write_text("{not json")
    proc = subprocess.run(codemode_cmd(tmp_path / "mcp.json"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "not valid JSON" in proc.stderr
    assert proc.stdout == ""  # stdout is the protocol: nothing else may reach it


# --- MCP Inspector CLI (a third-party client) ------------------------------------------------------


def inspector() -> str:
    """The pinned MCP Inspector (@modelcontextprotocol/inspector, see tests/reference_servers.py),
    installed on first use like the reference servers."""
    from tests.reference_servers import Unavailable, npm_bin

    try:
        return str(npm_bin("mcp-inspector"))
    except Unavailable as exc:
        pytest.fail(f"the pinned MCP Inspector cannot be installed: {exc}")


@pytest.fixture
def inspector_bin() -> Iterator[str]:
    yield inspector()


async def run_inspector(bin_: str, *args: str, returncode: int = 0) -> Any:
    """The Inspector's JSON answer; it exits 5 for a tool result with isError."""
    with anyio.fail_after(60):
        proc = await anyio.run_process([bin_, "--cli", *args], check=False)
    out = proc.stdout.decode()
    assert proc.returncode == returncode, f"inspector exited {proc.returncode}:\n{out}\n{proc.stderr.decode()}"
    return json.loads(out)


async def test_inspector_lists_and_calls_tools_over_stdio(inspector_bin: str, config_path: Path) -> None:
    # `--` ends the Inspector's options: our `--config` is not its own `--config`.
    server = ["-e", f"CODEMODE_CACHE_DIR={os.environ['CODEMODE_CACHE_DIR']}", "--", *codemode_cmd(config_path)]
    listed = await run_inspector(inspector_bin, "--method", "tools/list", *server)
    assert sorted(t["name"] for t in listed["tools"]) == ["execute_code"]  # every stub fits its description
    called = await run_inspector(
        inspector_bin, "--method", "tools/call", "--tool-name", "execute_code", "--tool-arg", f"code={PROGRAM}", *server
    )
    assert called["isError"] is False and json.loads(called["content"][0]["text"]) == FINAL


async def test_inspector_calls_execute_code_over_http(inspector_bin: str, http_server: HttpServer) -> None:
    called = await run_inspector(
        inspector_bin,
        http_server.url,
        "--transport",
        "http",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--method",
        "tools/call",
        "--tool-name",
        "execute_code",
        "--tool-arg",
        "code=1 / 0",
        returncode=5,
    )
    assert called["isError"] is True and called["structuredContent"]["error"]["code"] == "uncaught_exception"


async def test_limit_flags_apply_to_every_run(config_path: Path) -> None:
    cmd = codemode_cmd(config_path, "--timeout", "1", "--max-tool-calls", "2")
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ), cwd=str(REPO))
    with anyio.fail_after(STARTUP_S):
        async with Client(params, read_timeout_seconds=30) as client:
            spin = await client.call_tool("execute_code", {"code": "while True:\n    pass"})
            assert spin.is_error and spin.structured_content is not None
            assert spin.structured_content["error"]["code"] == "timeout"
            calls = await client.call_tool("execute_code", {"code": "for i in range(5):\n    await demo.add(a=i, b=1)"})
            assert calls.structured_content is not None
            assert calls.structured_content["error"]["code"] == "tool_call_limit"


async def test_http_sessions_are_bounded_and_closed_when_idle(config_path: Path) -> None:
    # Each session held ~38 kB until the SDK's 30 minutes ran out, up to its
    # 10,000: 3,000 opened and left added 114 MB to the server.
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {TOKEN}"}
    async with (
        serve_http(config_path, "--token", TOKEN, "--max-sessions", "2", "--session-idle", "1") as server,
        httpx.AsyncClient(timeout=30, headers=headers) as http,
    ):
        opened = [await http.post(server.url, json=initialize) for _ in range(2)]
        refused = await http.post(server.url, json=initialize)
        first = opened[0].headers["mcp-session-id"]
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        with anyio.fail_after(20):  # idle for a second, the session is closed and its place is free again
            while True:
                await anyio.sleep(1.5)  # a ping is a request: only a wait longer than the idle time lets it close
                if (await http.post(server.url, json=ping, headers={"mcp-session-id": first})).status_code == 404:
                    break
            while (again := await http.post(server.url, json=initialize)).status_code != 200:
                await anyio.sleep(0.2)
    assert [r.status_code for r in opened] == [200, 200]
    assert refused.status_code == 503
    assert again.headers["mcp-session-id"] not in {r.headers["mcp-session-id"] for r in opened}
