"""`codemode serve` starting and stopping, as an operator runs it: a real
subprocess, real uvicorn, real stdio servers (one silent, some wrapped by a
shell or leaving a grandchild), a real SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from codemode import CodeMode, parse_config
from tests.fixtures.helpers import _free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "tests" / "fixtures" / "servers" / "raw_server.py"
SILENT = {"command": sys.executable, "args": ["-c", "import time; time.sleep(120)"], "codemode": {"connectTimeout": 60}}


def raw_entry(*args: str, command: list[str] | None = None, **codemode: Any) -> dict[str, Any]:
    argv = command or [sys.executable, str(RAW), *args]
    return {"command": argv[0], "args": argv[1:], "codemode": {"protocol": "legacy", **codemode}}


@contextmanager
def serve(tmp_path: Path, servers: dict[str, Any], *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "codemode", "serve", "--config", str(config), "--port", str(port), *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def wait_up(client: httpx.AsyncClient, base: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    while True:  # polling a port that is not open yet: there is no event to wait on
        assert proc.poll() is None, "codemode serve exited"
        try:
            response = await client.get(f"{base}/healthz")
            body: dict[str, Any] = response.json()
            return body
        except httpx.TransportError:
            await anyio.sleep(0.05)


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie waits only for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_port_opens_while_a_silent_server_connects_and_healthz_shows_each_state(tmp_path: Path) -> None:
    with serve(tmp_path, {"silent": SILENT, "raw": raw_entry()}) as (proc, base):
        async with httpx.AsyncClient(timeout=30) as client:
            with anyio.fail_after(20):  # far below the silent server's 60 s connectTimeout
                health = await wait_up(client, base, proc)
            states = {s["namespace"]: s for s in health["servers"]}
            assert states["silent"]["state"] == "connecting" and health["status"] == "starting"
            with anyio.fail_after(20):
                while states["raw"]["state"] != "ready":
                    await anyio.sleep(0.05)
                    health = (await client.get(f"{base}/healthz")).json()
                    states = {s["namespace"]: s for s in health["servers"]}
            run = await client.post(f"{base}/v1/execute", json={"code": "await raw.echo(text='hi')"})
            assert run.json()["value"] == "hi"
            servers = (await client.get(f"{base}/v1/servers")).json()
            assert {s["namespace"]: s["state"] for s in servers["states"]} == {"silent": "connecting", "raw": "ready"}


async def test_a_run_naming_a_server_still_connecting_waits_for_it() -> None:
    config = parse_config({"mcpServers": {"raw": raw_entry("--delay-start", "2", connectTimeout=30)}})
    cm = CodeMode(config=config)
    await cm.sandbox.load()  # so opening does not outlast the server's slow start
    await cm.open(wait_for_servers=False)
    try:
        assert [s.state for s in cm.server_status()] == ["connecting"]
        with anyio.fail_after(30):
            result = await cm.execute("await raw.echo(text='waited')")
        assert result.error is None, result.error
        assert result.value == "waited"
    finally:
        await cm.aclose()


async def test_sigterm_drains_runs_closes_every_upstream_group_and_exits_0(tmp_path: Path) -> None:
    sleeper = tmp_path / "grandchild.pid"
    wrapped_sleeper = tmp_path / "wrapped-grandchild.pid"
    servers = {
        # A shell that execs the server, and one that stays as its parent.
        "raw": raw_entry(command=["sh", "-c", f"exec {sys.executable} {RAW} --grandchild {sleeper}"]),
        "wrapped": raw_entry(command=["sh", "-c", f"{sys.executable} {RAW} --grandchild {wrapped_sleeper}; true"]),
    }
    with serve(tmp_path, servers, "--shutdown-grace", "3") as (proc, base):
        async with httpx.AsyncClient(timeout=60) as client:
            with anyio.fail_after(30):
                while (await wait_up(client, base, proc))["status"] != "ok":
                    await anyio.sleep(0.05)
            pids = [
                int((await client.post(f"{base}/v1/execute", json={"code": f"await {ns}.pid()"})).json()["value"])
                for ns in ("raw", "wrapped")
            ]
            groups = {os.getpgid(pid) for pid in pids}
            assert len(groups) == 2 and all(group_alive(g) for g in groups)
            answers: dict[str, httpx.Response] = {}

            async def post(name: str, code: str) -> None:
                answers[name] = await client.post(f"{base}/v1/execute", json={"code": code})

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(post, "quick", "await raw.slow(seconds=1)")
                    tg.start_soon(post, "long", "await wrapped.slow(seconds=60)")
                    while "codemode_runs_in_flight 2" not in (await client.get(f"{base}/metrics")).text:
                        await anyio.sleep(0.02)
                    proc.send_signal(signal.SIGTERM)
            assert answers["quick"].status_code == 200 and answers["quick"].json()["value"] == "done"
            long = answers["long"]
            assert long.status_code == 503 and long.headers["content-type"].startswith("application/problem+json")
            assert long.json()["code"] == "shutting_down"
        with anyio.fail_after(30):
            while proc.poll() is None:
                await anyio.sleep(0.05)
        assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
        survivors = [pid for pid in [*pids, *(int(f.read_text()) for f in (sleeper, wrapped_sleeper))] if running(pid)]
        assert survivors == [], (tmp_path / "serve.log").read_text()
