"""Configured secrets never leave a run: not in the value, stdout, the error, the
call log, the events or our logs; not literally, nor base64-, URL- or
hex-encoded. Over real MCP servers (stdio with `env`, HTTP with `headers`) that
hand their secrets back, and real wasm."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from codemode import CodeMode, Tool, parse_config
from codemode._redact import REDACTED, Redactor
from codemode._upstream.logs import server_log_path
from tests.fixtures.helpers import _free_port

pytestmark = pytest.mark.anyio

ECHO = Path(__file__).resolve().parent / "fixtures" / "servers" / "echo_server.py"
# Characters that URL-encoding changes, and bytes whose base64 holds `+` and `/`.
SECRET = "sk_live/Qx+7?&=zZ~9>>?"


def _encode(value: str, form: str, prefix: str = "") -> str:
    """What the echo server returns for `form` (its own encoder, written again)."""
    raw = (prefix + value).encode()
    return {
        "literal": prefix + value,
        "base64": base64.b64encode(raw).decode(),
        "base64url-nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
        "url": quote(prefix + value, safe=""),
    }[form]


FORMS = ["literal", "base64", "base64url-nopad", "hex", "url"]
PREFIXES = ["", "a", "ab"]  # the three byte offsets of base64


def _stdio_config(**extra: Any) -> dict[str, Any]:
    entry = {"command": sys.executable, "args": [str(ECHO), "stdio"], "env": {"API_KEY": SECRET}}
    return {"mcpServers": {"echo": entry}, **extra}


def _leaks(text: str) -> list[str]:
    """Every form of SECRET, at every offset, found in `text` (by a 12-character
    stretch from the middle of each encoding, which the secret alone decides)."""
    found = []
    for form in FORMS:
        for prefix in PREFIXES:
            encoded = _encode(SECRET, form, prefix)
            middle = encoded[len(encoded) // 2 - 6 : len(encoded) // 2 + 6]
            if middle in text:
                found.append(f"{form}/{len(prefix)}")
    if SECRET in text or quote_plus(SECRET) in text or SECRET.encode().hex().upper() in text:
        found.append("plain")
    return found


async def test_a_secret_a_server_returns_in_a_successful_result_is_redacted_in_every_form() -> None:
    calls = [(form, prefix) for form in FORMS for prefix in PREFIXES]
    code = "[" + ", ".join(f"await echo.reveal(name='API_KEY', form={f!r}, prefix={p!r})" for f, p in calls) + "]"
    async with CodeMode(config=parse_config(_stdio_config())) as cm:
        result = await cm.execute(code)
    assert result.ok, result.error
    for (form, prefix), value in zip(calls, result.value, strict=True):
        assert _encode(SECRET, form, prefix) not in value, (form, prefix)
        assert "***" in value, (form, prefix)
    assert _leaks(json.dumps(result.to_dict(trace=True))) == []


async def test_code_never_holds_a_secret_a_server_returned() -> None:
    # Redacting only what leaves would miss what code did to it on the way.
    code = "v = await echo.reveal(name='API_KEY')\n[v[::-1], ''.join(chr(ord(c) + 1) for c in v)]"
    async with CodeMode(config=parse_config(_stdio_config())) as cm:
        result = await cm.execute(code)
    assert result.value == ["." + REDACTED[::-1] + " :eulav", "wbmvf;!+++/"]


async def test_code_never_holds_a_secret_a_resource_returned() -> None:
    # The same as for tool results: a resource read is redacted before code sees it.
    code = "r = await echo.read_resource(uri='secret://API_KEY')\n[str(r)[::-1], str(r)]"
    async with CodeMode(config=parse_config(_stdio_config())) as cm:
        result = await cm.execute(code)
    assert result.ok, result.error
    assert SECRET[::-1] not in result.value[0] and REDACTED in result.value[1]


@pytest.mark.parametrize("form", FORMS)
async def test_a_secret_in_a_tool_error_is_redacted_in_every_form(form: str) -> None:
    code = f"""
try:
    await echo.reveal_in_error(name='API_KEY', form={form!r}, prefix='ab')
except ToolError as exc:
    caught = str(exc)
await echo.reveal_in_error(name='API_KEY', form={form!r}, prefix='a')
"""
    async with CodeMode(config=parse_config(_stdio_config())) as cm:
        result = await cm.execute(code)
    assert result.error is not None and result.error.code == "tool_error"
    assert "***" in result.error.message
    assert [c.error_message and "***" in c.error_message for c in result.tool_calls] == [True, True]
    assert _leaks(json.dumps(result.to_dict(trace=True))) == []


async def test_a_secret_in_an_http_servers_headers_is_redacted(echo_http_url: str) -> None:
    entry = {"type": "http", "url": echo_http_url, "headers": {"X-Api-Key": SECRET}}
    code = "[await echo.reveal(name='x-api-key', form=f, prefix='a') for f in ['literal', 'base64', 'hex', 'url']]"
    async with CodeMode(config=parse_config({"mcpServers": {"echo": entry}})) as cm:
        assert not cm.failures
        result = await cm.execute(code)
    assert result.ok, result.error
    assert all("***" in v for v in result.value)
    assert _leaks(json.dumps(result.to_dict(trace=True))) == []


# Code that got the secret some other way (the model was told it) and lets it out
# by every exit a run has, in every form.
_FORMS_IN_CODE = """
import base64, urllib.parse
S = {secret!r}
forms = [S, base64.b64encode(S.encode()).decode(), base64.b64encode(("x" + S).encode()).decode(),
         base64.b64encode(("xy" + S).encode()).decode().rstrip("="), base64.urlsafe_b64encode(S.encode()).decode(),
         base64.urlsafe_b64encode(("xyz" + S).encode()).decode().rstrip("="), urllib.parse.quote(S, safe=""),
         urllib.parse.quote_plus(S), S.encode().hex(), S.encode().hex().upper(), repr(S)]
"""


@pytest.mark.parametrize(
    "exit_",
    [
        pytest.param("forms", id="value"),
        pytest.param("print(*forms)", id="stdout"),
        pytest.param("raise ValueError(' '.join(forms))", id="error"),
        pytest.param("[await echo.reveal(name=f) for f in forms]", id="call-log-and-events"),
    ],
)
async def test_every_exit_of_a_run_is_redacted(exit_: str) -> None:
    events: list[dict[str, Any]] = []
    async with CodeMode(config=parse_config(_stdio_config())) as cm:
        result = await cm.execute(_FORMS_IN_CODE.format(secret=SECRET) + exit_, on_event=events.append)
    out = json.dumps(result.to_dict(trace=True))
    assert "***" in out
    assert _leaks(out) == []
    assert _leaks(str(result.error or "")) == []
    if "echo.reveal" in exit_:
        assert len(events) == 2 * 11 and len(result.tool_calls) == 11
        assert _leaks(json.dumps(events)) == []


async def test_secrets_are_redacted_from_our_logs(caplog: pytest.LogCaptureFixture) -> None:
    def broken(key: str) -> str:
        raise RuntimeError(f"the upstream refused key {key} ({base64.b64encode(key.encode()).decode()})")

    schema = {"type": "object", "properties": {"key": {"type": "string"}}}
    tool = Tool(name="broken", fn=broken, namespace="local", input_schema=schema)
    caplog.set_level(logging.INFO)
    async with CodeMode(config=parse_config(_stdio_config()), tools=[tool]) as cm:
        result = await cm.execute(f"await local.broken(key={SECRET!r})")
    assert result.error is not None
    assert "tool local.broken raised" in caplog.text, "the failure was logged"
    assert _leaks(caplog.text) == [], caplog.text
    for record in caplog.records:  # handlers that format records themselves see them redacted too
        assert _leaks(logging.Formatter().format(record)) == []


async def test_a_servers_stderr_goes_to_its_log_file_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CODEMODE_LOG_DIR", str(tmp_path / "logs"))
    async with CodeMode(config=parse_config(_stdio_config())) as cm:
        result = await cm.execute("await echo.crash_on_stderr(name='API_KEY')")
    assert result.value == "logged"
    log = server_log_path("echo")
    assert log.parent == tmp_path / "logs"
    assert "RuntimeError: connecting with key" in log.read_text(), "the traceback is in the server's log"
    assert os.stat(log).st_mode & 0o077 == 0, "only its owner can read it"
    assert SECRET not in capfd.readouterr().err


def test_the_redactor_matches_base64_at_every_offset_and_alphabet() -> None:
    redactor = Redactor([SECRET, "1", "abc"])  # values under 4 characters are not secrets
    assert redactor.text("DEBUG=1 abc") == "DEBUG=1 abc"
    for pad in range(6):
        raw = os.urandom(pad) + SECRET.encode() + os.urandom(5)
        for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
            assert "***" in redactor.text(encoded), (pad, encoded)
            tail = encoded[-3:]
            assert redactor.text(encoded).endswith(tail), "what does not depend on the secret stays"


@pytest.fixture(scope="module")
def echo_http_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ECHO), "http", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the echo server exited with {proc.returncode}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the echo server did not start within 20 s") from None
                time.sleep(0.05)  # polling a port that is not up yet: there is no event to wait on
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_secret_a_server_puts_in_its_tool_definitions_never_reaches_the_model() -> None:
    # The echo server writes its key into a tool's description (base64), a
    # parameter's description and a default: stubs, search, the prompt and the
    # tool definition a model reads must not carry it in any form.
    async with CodeMode(config=parse_config(_stdio_config())) as cm:
        seen = [
            cm.stubs(),
            cm.stubs(["echo.signed"]),
            json.dumps(cm.search_tools("sign key", with_stubs=True), default=str),
            cm.system_prompt(),
            json.dumps(cm.tool_definition(), default=str),
            json.dumps([t.input_schema for t in cm.tools()], default=str),
            json.dumps([t.description for t in cm.tools()]),
        ]
        result = await cm.execute("await echo.signed(text='abc')")
    assert result.ok, result.error
    assert result.value == "signed 3 characters"
    for text in seen:
        assert _leaks(text) == [], text[:300]
    assert REDACTED in cm.stubs(["echo.signed"])
    # A name cannot be redacted (calls need it), so a tool named with the key is left out.
    names = {t.name for t in cm.tools()}
    assert "signed" in names and f"k{SECRET.encode().hex()}" not in names, names
