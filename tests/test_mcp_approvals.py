"""Approval through `codemode mcp`: a call the policy asks about is put to the
client's user by MCP elicitation. The official SDK client spawns the server
over real stdio; the upstream is the real filesystem reference server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext

from codemode._sandbox.wasm import WasmBackend
from tests.test_mcp_server import REPO, STARTUP_S, text_of
from tests.test_policy import TWO_WRITES_ONE_READ, filesystem_config

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module", autouse=True)
def guest_built() -> None:
    WasmBackend().load()  # before spawning: a cold build would outlast the client's timeout


def server_params(tmp_path: Path, root: Path) -> StdioServerParameters:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps(filesystem_config(root, approve=["write_*"])))
    args = ["-m", "codemode", "mcp", "--config", str(config)]
    return StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ), cwd=str(REPO))


# legacy: the server asks mid-call (elicitation/create); auto: a 2026-07-28 session, where the
# call answers InputRequiredResult and the SDK client retries with the user's answer.
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_each_write_is_put_to_the_user_who_accepts_one_and_declines_the_other(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "files"
    root.mkdir()
    asked: list[str] = []

    async def user(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        if len(asked) == 1:
            return types.ElicitResult(action="accept", content={"approve": True})
        return types.ElicitResult(action="decline")

    code = TWO_WRITES_ONE_READ.replace("ROOT", repr(str(root)))
    with anyio.fail_after(STARTUP_S):
        async with Client(
            server_params(tmp_path, root), read_timeout_seconds=30, elicitation_callback=user, mode=mode
        ) as client:
            result = await client.call_tool("execute_code", {"code": code, "trace": True})
    assert not result.is_error, text_of(result)
    value: Any = json.loads(text_of(result).split("\n\n")[0])
    assert value["a.txt"] == "written" and value["b.txt"] == "approval_denied"
    assert "[FILE] a.txt" in str(value["listing"]) and "b.txt" not in str(value["listing"])
    assert sorted(p.name for p in root.iterdir()) == ["a.txt"]
    assert len(asked) == 2 and all(m.startswith("A program wants to call filesystem.write_file(") for m in asked)
    assert '"content": "hello from b.txt"' in asked[1]
    assert result.structured_content is not None
    decisions = [(c["decision"], c["decided_by"]) for c in result.structured_content["tool_calls"][:2]]
    assert decisions == [("approved", "mcp user"), ("approval_denied", "mcp user")]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_without_elicitation_gets_a_refusal_that_says_why(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "files"
    root.mkdir()
    code = f"await filesystem.write_file(path={str(root / 'a.txt')!r}, content='x')"
    with anyio.fail_after(STARTUP_S):
        async with Client(server_params(tmp_path, root), read_timeout_seconds=30, mode=mode) as client:
            result = await client.call_tool("execute_code", {"code": code})
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"]["code"] == "approval_denied"
    assert "does not support elicitation" in text_of(result)
    assert list(root.iterdir()) == []
