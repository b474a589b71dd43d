"""A pinned tool keeps its Python name: code that calls `evil.get_data` reaches
the pinned `get_data`, whatever the server lists later. Over a real stdio MCP
server whose tool list the tests change between runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from codemode import CodeMode
from codemode._pinning import PinStore, ToolRef

pytestmark = pytest.mark.anyio

SERVER = Path(__file__).resolve().parent / "fixtures" / "servers" / "listing_server.py"


def _config(tmp_path: Path, tools: list[str]) -> Path:
    """A config for the listing server, which lists `tools` in that order."""
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    config = {"mcpServers": {"evil": {"command": sys.executable, "args": [str(SERVER), str(tmp_path / "tools.json")]}}}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(config))
    return path


async def _run(config: Path, code: str, **kwargs: Any) -> Any:
    async with CodeMode.from_config(config) as cm:
        assert not cm.failures
        result = await cm.execute(code, **kwargs)
        result.raise_for_error()
        return result


async def test_a_new_tool_listed_first_cannot_take_a_pinned_tools_name(tmp_path: Path) -> None:
    config = _config(tmp_path, ["get_data"])
    assert (await _run(config, "await evil.get_data()")).value == "get_data"

    # The server now lists an impersonator first; with names by listing order it
    # would become `get_data`, and be trusted on first use.
    _config(tmp_path, ["get-data", "get_data"])
    result = await _run(config, "[await evil.get_data(), await evil.get_data_2()]")
    assert result.value == ["get_data", "get-data"]

    data = json.loads((tmp_path / "codemode.lock.json").read_text())
    assert {tool: entry["python_name"] for tool, entry in data["tools"]["evil"].items()} == {
        "get_data": "get_data",
        "get-data": "get_data_2",
    }


async def test_reordering_pinned_tools_does_not_redirect_their_names(tmp_path: Path) -> None:
    config = _config(tmp_path, ["a-b", "a_b"])
    assert (await _run(config, "[await evil.a_b(), await evil.a_b_2()]")).value == ["a-b", "a_b"]

    _config(tmp_path, ["a_b", "a-b"])
    assert (await _run(config, "[await evil.a_b(), await evil.a_b_2()]")).value == ["a-b", "a_b"]


async def test_a_removed_pinned_tools_name_is_not_given_to_a_new_tool(tmp_path: Path) -> None:
    config = _config(tmp_path, ["get_data", "other"])
    await _run(config, "await evil.other()")

    # `get_data` is gone for now (its pin stays); a new tool must not inherit its name.
    _config(tmp_path, ["get-data", "other"])
    async with CodeMode.from_config(config) as cm:
        stubs = cm.stubs()
        result = await cm.execute("await evil.get_data()")
    assert "def get_data_2(" in stubs and "def get_data(" not in stubs
    assert result.error is not None and result.error.code == "uncaught_exception"


async def test_the_call_log_and_events_name_both_the_python_and_the_wire_name(tmp_path: Path) -> None:
    config = _config(tmp_path, ["get-data"])
    events: list[dict[str, Any]] = []
    result = await _run(config, "await evil.get_data()", on_event=events.append)
    call = result.tool_calls[0].to_dict()
    names = {k: call[k] for k in ("namespace", "tool", "server", "wire_name")}
    assert names == {"namespace": "evil", "tool": "get_data", "server": "evil", "wire_name": "get-data"}
    for event in events:
        assert (event["tool"], event["wire_name"]) == ("get_data", "get-data"), event["type"]
    assert [e["type"] for e in events] == ["tool_call_started", "tool_call_finished"]


async def test_a_lock_file_from_before_names_were_recorded_keeps_its_tools_names(tmp_path: Path) -> None:
    config = _config(tmp_path, ["get_data"])
    await _run(config, "await evil.get_data()")
    lock = tmp_path / "codemode.lock.json"
    data = json.loads(lock.read_text())
    del data["tools"]["evil"]["get_data"]["python_name"]  # as an older codemode wrote it
    lock.write_text(json.dumps(data))

    _config(tmp_path, ["get-data", "get_data"])
    assert (await _run(config, "await evil.get_data()")).value == "get_data"
    recorded = json.loads(lock.read_text())["tools"]["evil"]
    assert (recorded["get_data"]["python_name"], recorded["get-data"]["python_name"]) == ("get_data", "get_data_2")
    assert ToolRef(server="evil", tool="get-data") in PinStore.load(lock).pinned()
