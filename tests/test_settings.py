"""`codemode serve` and `codemode mcp` read every flag from a `CODEMODE_*`
variable too; a flag given wins. The real commands, in subprocesses."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from codemode import Client, MemoryLimitExceeded, Unauthorized
from codemode._cli import main as codemode_main
from codemode._serve.settings import McpSettings, ServeSettings, SettingsError, env_name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def command(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[subprocess.Popen[str]]:
    """`codemode ARGS` with `env` added, until `ready_url` answers (any status)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CODEMODE_") or k == "CODEMODE_CACHE_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "codemode", *args],
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"codemode {args} exited with {proc.returncode}: {proc.communicate()[1]}")
            try:
                httpx.get(ready_url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the command did not start listening within 60 s"
                time.sleep(0.05)  # polling a port that is not up yet: there is no event to wait on
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_serve_configured_only_by_the_environment_answers_on_its_port() -> None:
    port = free_port()
    env = {
        "CODEMODE_PORT": str(port),
        "CODEMODE_TOKEN": "from-the-env",
        "CODEMODE_MEMORY_MB": "64",
        "CODEMODE_BACKEND": "wasm",
    }
    url = f"http://127.0.0.1:{port}"
    with command(["serve"], env, f"{url}/healthz"):
        with Client(url) as anonymous, pytest.raises(Unauthorized):
            anonymous.execute("1 + 1")
        with Client(url, token="from-the-env") as client:
            assert client.execute("1 + 1").value == 2
            # CODEMODE_MEMORY_MB=64 is the run's cap: 100 MiB cannot be had.
            bomb = client.execute("x = bytearray(100 * 1024 * 1024)\nlen(x)")
            assert isinstance(bomb.error, MemoryLimitExceeded)


def test_mcp_over_http_configured_only_by_the_environment_answers_on_its_port() -> None:
    port = free_port()
    env = {"CODEMODE_HTTP": "true", "CODEMODE_PORT": str(port), "CODEMODE_TOKEN": "from-the-env"}
    url = f"http://127.0.0.1:{port}/mcp"
    with command(["mcp"], env, url):
        assert httpx.post(url, json={}).status_code == 401
        authorized = httpx.post(url, json={}, headers={"Authorization": "Bearer from-the-env"})
        assert authorized.status_code != 401


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    environ = {"CODEMODE_PORT": "9001", "CODEMODE_ALLOW_ORIGIN": "http://a.example, http://b.example"}
    from_env = ServeSettings.load({"port": None, "allow_origin": None}, environ)
    assert from_env.port == 9001 and from_env.allow_origin == ("http://a.example", "http://b.example")
    assert from_env.queue == 16  # the default
    from_flag = ServeSettings.load({"port": 9002, "allow_origin": ["http://c.example"]}, environ)
    assert from_flag.port == 9002 and from_flag.allow_origin == ("http://c.example",)
    assert McpSettings.load({}, {"CODEMODE_HTTP": "yes"}).http is True
    assert McpSettings.load({}, {}).port == 8765 and ServeSettings.load({}, {}).port == 8000
    assert ServeSettings.load({"config": "x.json"}, {"CODEMODE_CONFIG": "y.json"}).config == Path("x.json")


def test_a_bad_value_names_its_variable_or_flag() -> None:
    with pytest.raises(SettingsError) as env_error:
        ServeSettings.load({}, {"CODEMODE_PORT": "eighty"})
    assert "CODEMODE_PORT" in str(env_error.value)
    with pytest.raises(SettingsError) as flag_error:
        ServeSettings.load({"max_concurrency": 0}, {})
    assert "--max-concurrency" in str(flag_error.value)


def test_a_bad_variable_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CODEMODE_TIMEOUT", "-3")
    assert codemode_main(["serve"]) == 2
    assert "CODEMODE_TIMEOUT" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "settings"), [("serve", ServeSettings), ("mcp", McpSettings)])
def test_help_names_every_variable(
    name: str, settings: type[ServeSettings | McpSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        codemode_main([name, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for field in settings.model_fields:
        assert f"[env {env_name(field)}]" in text, field
