"""Tool-call policy and approval (codemode._policy), on real wasm runs: over the
real filesystem reference server, and over Python tools (sync and async) that
count the calls that actually reached them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from codemode import (
    Approval,
    CodeMode,
    ConfigError,
    Limits,
    Policy,
    Tool,
    ToolCall,
    ToolCallNotApproved,
    parse_config,
)
from tests.reference_servers import Unavailable, npm_bin
from tests.test_tracing import InMemorySpanExporter, by_name, spans  # noqa: F401 (the spans fixture)

pytestmark = pytest.mark.anyio

TWO_WRITES_ONE_READ = """
outcome = {}
for name in ["a.txt", "b.txt"]:
    try:
        await filesystem.write_file(path=f"{ROOT}/{name}", content=f"hello from {name}")
        outcome[name] = "written"
    except ToolError as exc:
        outcome[name] = exc.code
outcome["read"] = await filesystem.read_text_file(path=f"{ROOT}/a.txt")
outcome["listing"] = await filesystem.list_directory(path=ROOT)
outcome
"""


def filesystem_config(root: Path, **codemode: Any) -> dict[str, Any]:
    try:
        command = str(npm_bin("mcp-server-filesystem"))
    except Unavailable as exc:
        pytest.fail(f"the pinned reference servers cannot be installed: {exc}")
    return {"mcpServers": {"filesystem": {"command": command, "args": [str(root)], "codemode": codemode}}}


async def test_approve_write_pauses_both_writes_one_approved_one_denied_over_the_filesystem_server(
    tmp_path: Path,
) -> None:
    root = tmp_path / "files"
    root.mkdir()
    asked: list[ToolCall] = []
    events: list[dict[str, Any]] = []

    async def approver(call: ToolCall) -> Approval:
        asked.append(call)
        return Approval(approved=len(asked) == 1, by="alice", reason="only one file today")

    config = parse_config(filesystem_config(root, approve=["write_*"]))
    async with CodeMode(config=config, approver=approver) as cm:
        assert "write_file" in cm.stubs()  # approval does not hide a tool
        result = await cm.execute(TWO_WRITES_ONE_READ.replace("ROOT", repr(str(root))), on_event=events.append)
        assert result.ok, result.error
        # A fresh session asks the upstream server what is on disk.
        async with CodeMode(config=parse_config(filesystem_config(root))) as check:
            listing = (await check.execute(f"await filesystem.list_directory(path={str(root)!r})")).value

    value = result.value
    assert value["a.txt"] == "written" and value["b.txt"] == "approval_denied"
    assert value["read"]["content"] == "hello from a.txt"
    assert "[FILE] a.txt" in str(listing) and "b.txt" not in str(listing)
    assert sorted(p.name for p in root.iterdir()) == ["a.txt"]
    # It paused twice, on the two writes only, and showed what each would write.
    assert [(c.namespace, c.tool) for c in asked] == [("filesystem", "write_file")] * 2
    assert '"content": "hello from b.txt"' in asked[1].preview
    requested = [e for e in events if e["type"] == "approval_requested"]
    assert [e["call_id"] for e in requested] == [c.call_id for c in asked]
    # The call log has every call's decision.
    log = [(c.tool, c.ok, c.error_code, c.decision, c.decided_by) for c in result.tool_calls]
    assert log == [
        ("write_file", True, None, "approved", "alice"),
        ("write_file", False, "approval_denied", "approval_denied", "alice"),
        ("read_text_file", True, None, "allowed", "policy"),
        ("list_directory", True, None, "allowed", "policy"),
    ]
    assert "only one file today" in (result.tool_calls[1].error_message or "")


def counting_tools(calls: list[str]) -> list[Tool]:
    def write(path: str) -> str:  # sync: runs on the sandbox's worker thread
        calls.append(f"write {path}")
        return "ok"

    async def delete(path: str) -> str:  # async: runs on the event loop
        calls.append(f"delete {path}")
        return "ok"

    schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
    return [Tool(name="write", fn=write, input_schema=schema), Tool(name="delete", fn=delete, input_schema=schema)]


PROBE = """
out = []
try:
    out.append(await tools.write(path="a"))
except ToolError as exc:
    out.append(exc.code)
try:
    out.append(await tools.delete(path="b"))
except ToolError as exc:
    out.append(exc.code)
out
"""


@pytest.fixture
async def calls() -> AsyncIterator[list[str]]:
    yield []


async def test_policy_deny_is_a_catchable_denied_error_and_the_tool_is_never_called(calls: list[str]) -> None:
    async with CodeMode(tools=counting_tools(calls), policy=Policy(deny=["tools.delete"])) as cm:
        result = await cm.execute(PROBE)
    assert result.value == ["ok", "denied"] and calls == ["write a"]
    assert [(c.decision, c.decided_by) for c in result.tool_calls] == [("allowed", "policy"), ("denied", "policy")]


async def test_a_policy_function_sees_the_arguments_and_sync_and_async_tools_both_wait(
    calls: list[str], backend: str
) -> None:
    seen: list[tuple[str, str]] = []

    def policy(call: ToolCall) -> Any:
        seen.append((call.qualified_name, call.preview))
        return "ask"

    async def approver(call: ToolCall) -> bool:
        return call.arguments["path"] == "b"

    async with CodeMode(tools=counting_tools(calls), policy=policy, approver=approver, backend=backend) as cm:  # type: ignore[arg-type]
        result = await cm.execute(PROBE)
    assert result.value == ["approval_denied", "ok"] and calls == ["delete b"]
    assert seen == [("tools.write", '{"path": "a"}'), ("tools.delete", '{"path": "b"}')]


async def test_no_decision_within_the_timeout_denies_the_call(calls: list[str]) -> None:
    async def never(call: ToolCall) -> bool:
        await anyio.sleep_forever()
        return True

    async with CodeMode(
        tools=counting_tools(calls), policy=Policy(approve=["*"]), approver=never, approval_timeout=0.3
    ) as cm:
        with anyio.fail_after(20):
            result = await cm.execute("await tools.write(path='a')")
    assert calls == []
    assert isinstance(result.error, ToolCallNotApproved) and result.error.code == "approval_denied"
    assert "within 0.3 s" in result.error.message
    assert result.tool_calls[0].decided_by == "timeout"


@pytest.mark.parametrize("tool", ["write", "delete"])  # sync, async
async def test_an_approval_never_outlasts_the_run_and_the_call_is_never_made(
    calls: list[str], tool: str, caplog: pytest.LogCaptureFixture
) -> None:
    ended: list[str] = []

    async def never(call: ToolCall) -> bool:
        try:
            await anyio.sleep_forever()
        finally:
            ended.append(call.tool)
        return True

    async with CodeMode(
        tools=counting_tools(calls), policy=Policy(approve=["*"]), approver=never, limits=Limits(timeout=1)
    ) as cm:
        with anyio.fail_after(20):
            result = await cm.execute(f"await tools.{tool}(path='a')")
        await anyio.sleep(0.3)  # a call let through late would land here
    assert result.error is not None and result.error.code in ("timeout", "approval_denied")
    assert calls == [] and ended == [tool]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_failing_or_confused_policy_function_denies(calls: list[str]) -> None:
    def policy(call: ToolCall) -> Any:
        if call.tool == "write":
            raise KeyError("a bug in the policy")
        return "maybe"

    async with CodeMode(tools=counting_tools(calls), policy=policy) as cm:
        result = await cm.execute(PROBE)
    assert result.value == ["denied", "denied"] and calls == []


async def test_without_an_approver_or_with_a_failing_one_asked_calls_are_denied(calls: list[str]) -> None:
    async def broken(call: ToolCall) -> bool:
        raise RuntimeError("the approval UI crashed")

    async with CodeMode(tools=counting_tools(calls), policy=Policy(approve=["tools.*"])) as cm:
        alone = await cm.execute(PROBE)
        failing = await cm.execute(PROBE, approver=broken)
    assert alone.value == failing.value == ["approval_denied", "approval_denied"] and calls == []
    assert {c.decided_by for c in alone.tool_calls} == {"no approver"}
    assert {c.decided_by for c in failing.tool_calls} == {"approver error"}


async def test_a_run_approver_overrides_the_codemodes_and_events_show_the_pending_call(calls: list[str]) -> None:
    async def no(call: ToolCall) -> bool:
        return False

    async def yes(call: ToolCall) -> Approval:
        return Approval(approved=True, by="run")

    events: list[dict[str, Any]] = []
    async with CodeMode(tools=counting_tools(calls), policy=Policy(approve=["tools.write"]), approver=no) as cm:
        result = await cm.execute("await tools.write(path='x')", approver=yes, on_event=events.append)
    assert result.ok and calls == ["write x"]
    kinds = [e["type"] for e in events]
    # The dispatcher announces the call, then the gate holds it until it is decided.
    assert kinds == ["tool_call_started", "approval_requested", "approval_decided", "tool_call_finished"]
    assert {k: events[1][k] for k in ("namespace", "tool", "preview")} == {
        "namespace": "tools",
        "tool": "write",
        "preview": '{"path": "x"}',
    }
    assert events[2]["decision"] == "approved" and events[2]["by"] == "run"


async def test_each_decision_is_on_its_tool_calls_span(calls: list[str], spans: InMemorySpanExporter) -> None:  # noqa: F811
    async def alice(call: ToolCall) -> Approval:
        return Approval(approved=True, by="alice")

    policy = Policy(approve=["tools.write"], deny=["tools.delete"])
    async with CodeMode(tools=counting_tools(calls), policy=policy, approver=alice) as cm:
        result = await cm.execute(PROBE)
    assert result.value == ["ok", "denied"]
    decided = {
        s.name: (s.attributes.get("codemode.tool.decision"), s.attributes.get("codemode.tool.decided_by"))
        for s in by_name(spans, "codemode.tool")
        if s.attributes is not None
    }
    assert decided == {
        "codemode.tool tools.write": ("approved", "alice"),
        "codemode.tool tools.delete": ("denied", "policy"),
    }


async def test_without_a_policy_calls_are_not_wrapped_and_carry_no_decision(calls: list[str]) -> None:
    tools = counting_tools(calls)
    async with CodeMode(tools=tools) as cm:
        assert cm.tools() == tools
        result = await cm.execute("await tools.write(path='a')")
    assert result.ok and result.tool_calls[0].decision is None


def test_approve_is_a_per_server_config_key_of_patterns() -> None:
    config = parse_config({"mcpServers": {"fs": {"command": "x", "codemode": {"approve": ["write_*", "delete_*"]}}}})
    assert config.servers["fs"].codemode.approve == ("write_*", "delete_*")
    with pytest.raises(ConfigError, match="approve"):
        parse_config({"mcpServers": {"fs": {"command": "x", "codemode": {"approve": "write_*"}}}})
