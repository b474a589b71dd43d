"""Upstream tools that require a task (MCP 2025-11-25 `execution.taskSupport:
"required"`): called as a task and polled to the end inside the run.

Against the real server-everything (pinned; its `simulate-research-query`
runs four one-second stages as a task), and against a raw JSON-RPC fixture
(tests/fixtures/servers/task_server.py) for what a well-behaved server never
sends: a task that never ends, a malformed task, an unknown status, a task
asking for input. The official Python SDK serves no tasks, so that fixture
is not an SDK server."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from codemode import CodeMode, Limits, parse_config
from tests.fixtures.helpers import _free_port
from tests.reference_servers import Unavailable, npm_bin

pytestmark = pytest.mark.anyio

TASK_SERVER = Path(__file__).resolve().parent / "fixtures" / "servers" / "task_server.py"


@pytest.fixture
async def everything() -> AsyncIterator[CodeMode]:
    try:
        entry = {"command": str(npm_bin("mcp-server-everything")), "args": ["stdio"]}
    except Unavailable as exc:
        pytest.skip(f"the pinned reference servers cannot be installed: {exc}")
    async with CodeMode(config=parse_config({"mcpServers": {"everything": entry}})) as cm:
        assert cm.failures == {}, cm.failures
        yield cm


def task_config(log: Path, env: dict[str, str] | None = None, **codemode: Any) -> Any:
    entry = {
        "command": sys.executable,
        "args": [str(TASK_SERVER), str(log)],
        "env": env or {},
        "codemode": {"protocol": "legacy", **codemode},
    }
    return parse_config({"mcpServers": {"tasks": entry}})


def requests(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def until_cancel_sent(log: Path) -> dict[str, Any]:
    """The `tasks/cancel` the server received (sent in the background, so waited for)."""
    with anyio.fail_after(10):
        while True:
            sent = [r for r in requests(log) if r["method"] == "tasks/cancel"]
            if sent:
                return sent[0]
            await anyio.sleep(0.02)  # a file another process writes has no event to wait on


async def server_tasks(cm: CodeMode) -> list[types.Task]:
    """The tasks server-everything holds, asked over the hub's own session (the
    task store is per session, so no other client could see them)."""
    assert cm._hub is not None
    client = cm._hub._upstreams["everything"]._client
    assert client is not None
    listed = await client.session.send_request(types.ListTasksRequest(), types.ListTasksResult)
    return listed.tasks


async def test_a_program_gets_the_real_result_of_a_tool_that_requires_a_task(everything: CodeMode) -> None:
    result = await everything.execute(
        'report = await everything.simulate_research_query(topic="tide pools")\nreport',
        limits=Limits(timeout=60),
    )
    assert result.ok, result.error
    assert result.value.startswith("# Research Report: tide pools\n")
    assert "Stage 4: Generating report ✓" in result.value
    [call] = result.tool_calls
    assert call.ok and call.wire_name == "simulate-research-query"


async def test_a_task_tool_works_over_streamable_http_too(tmp_path: Path) -> None:
    try:
        command = str(npm_bin("mcp-server-everything"))
    except Unavailable as exc:
        pytest.skip(f"the pinned reference servers cannot be installed: {exc}")
    port = _free_port()
    with open(tmp_path / "everything.log", "wb") as log:
        server = subprocess.Popen(
            [command, "streamableHttp"], env={**os.environ, "PORT": str(port)}, stdout=log, stderr=log
        )
    try:
        with anyio.fail_after(30):
            while True:  # a port that is not open yet has no event to wait on
                assert server.poll() is None, (tmp_path / "everything.log").read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    await anyio.sleep(0.1)
        config = {"mcpServers": {"everything": {"type": "http", "url": f"http://127.0.0.1:{port}/mcp"}}}
        async with CodeMode(config=parse_config(config)) as cm:
            assert cm.failures == {}, cm.failures
            result = await cm.execute(
                'await everything.simulate_research_query(topic="over http")', limits=Limits(timeout=60)
            )
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.ok, result.error
    assert result.value.startswith("# Research Report: over http\n")


async def test_the_stub_of_a_task_tool_says_it_runs_as_a_task(everything: CodeMode) -> None:
    stubs = everything.stubs()
    start = stubs.index("async def simulate_research_query(")
    doc = stubs[start : stubs.index('"""', stubs.index('"""', start) + 3)]
    assert "Runs as an MCP task" in doc
    echo = stubs[stubs.index("async def echo(") :]
    assert "Runs as an MCP task" not in echo[: echo.index('"""', echo.index('"""') + 3)]


async def test_cancelling_a_run_mid_task_frees_it_at_once_and_cancels_the_task(everything: CodeMode) -> None:
    async with anyio.create_task_group() as tg:
        code = 'await everything.simulate_research_query(topic="kelp")'
        tg.start_soon(functools.partial(everything.execute, code, limits=Limits(timeout=60)))
        with anyio.fail_after(20):
            while not [t for t in await server_tasks(everything) if t.status == "working"]:
                await anyio.sleep(0.05)  # the server's task store has no event we can wait on
        with anyio.fail_after(2):  # the task would run ~4 s more; the run must not wait for it
            tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        while True:
            [task] = await server_tasks(everything)
            if task.status == "cancelled":
                break
            await anyio.sleep(0.05)
    assert (await everything.execute("1 + 1")).value == 2


async def test_the_run_deadline_bounds_a_task_that_never_ends(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    async with CodeMode(config=task_config(log, timeout=300)) as cm:
        with anyio.fail_after(20):
            result = await cm.execute("await tasks.never_ends()", limits=Limits(timeout=2))
        assert result.error is not None and result.error.code == "timeout"
        cancel = await until_cancel_sent(log)
        assert cancel["params"]["taskId"] == "task-1"
        assert (await cm.execute("await tasks.finishes()")).value == "finished"


async def test_the_server_timeout_bounds_a_task_that_never_ends(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    async with CodeMode(config=task_config(log, timeout=1)) as cm:
        with anyio.fail_after(20):
            result = await cm.execute("await tasks.never_ends()", limits=Limits(timeout=60))
        assert result.error is not None and result.error.code == "tool_error"
        assert (await until_cancel_sent(log))["params"]["taskId"] == "task-1"


async def test_a_server_may_answer_a_task_call_at_once(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    async with CodeMode(config=task_config(log)) as cm:
        result = await cm.execute("await tasks.answers_at_once()")
    assert result.value == "at once", result.error
    [call] = [r for r in requests(log) if r["method"] == "tools/call"]
    assert "task" in call["params"]
    assert not [r for r in requests(log) if r["method"].startswith("tasks/")]


@pytest.mark.parametrize(
    ("tool", "polled", "cancelled"),
    [
        ("malformed_task", False, False),  # no task id: nothing to poll or cancel
        ("odd_status", True, True),  # status "paused": not one MCP defines
        ("needs_input", True, True),  # input_required: codemode serves no elicitation
        ("fails", True, False),  # failed is terminal; its result holds the error
    ],
)
async def test_a_task_that_does_not_lead_to_a_result_is_a_tool_error(
    tmp_path: Path, tool: str, polled: bool, cancelled: bool
) -> None:
    log = tmp_path / "requests.jsonl"
    code = f"""
try:
    await tasks.{tool}()
except ToolError as exc:
    caught = [exc.code, str(exc)]
caught
"""
    async with CodeMode(config=task_config(log)) as cm:
        with anyio.fail_after(20):
            result = await cm.execute(code)
        assert result.ok, result.error
        code_, message = result.value
        assert code_ == "tool_error"
        if tool == "fails":
            assert message == "disk full"  # the tool's own error, from tasks/result, as for a direct call
        else:
            assert message.startswith(f"tasks.{tool} failed")
        calls = [r for r in requests(log) if r["method"] == "tools/call"]
        assert calls[0]["params"]["task"]["ttl"] > 0
        assert any(r["method"] == "tasks/get" for r in requests(log)) is polled
        if cancelled:
            assert (await until_cancel_sent(log))["params"]["taskId"] == "task-1"
        assert (await cm.execute("await tasks.finishes()")).value == "finished"
        if not cancelled:  # checked after a later call, so a stray background cancel would show
            assert not [r for r in requests(log) if r["method"] == "tasks/cancel"]


@pytest.mark.parametrize("tool", ["secret_in_message", "secret_in_status", "secret_in_error"])
async def test_a_secret_a_task_echoes_is_redacted_even_where_its_text_is_capped(tmp_path: Path, tool: str) -> None:
    # The server's status text is capped in the error; a cap that falls inside the
    # secret must not leave its first characters for redaction to miss.
    secret = "tsk-" + "9f3a2c71d4e8b605" * 2
    log = tmp_path / "requests.jsonl"
    config = task_config(log, env={"TASK_SECRET": secret})
    code = f"""
try:
    await tasks.{tool}()
except ToolError as exc:
    caught = str(exc)
caught
"""
    async with CodeMode(config=config) as cm:
        with anyio.fail_after(20):
            result = await cm.execute(code)
    assert result.ok, result.error
    message = result.value
    assert message.startswith(f"tasks.{tool} failed") or tool == "secret_in_error"  # the tool's own error
    assert not [i for i in range(len(secret) - 5) if secret[i : i + 6] in message], message
