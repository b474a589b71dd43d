"""The `codemode` command, as a user runs it: real processes, real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codemode._demo import demo_config

REPO = Path(__file__).resolve().parent.parent


def codemode(
    *args: str, stdin: str | None = None, timeout: float = 120, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codemode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


@pytest.fixture
def demo_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(demo_config()))
    return path


def test_demo_runs_a_gather_over_bundled_mcp_servers() -> None:
    proc = codemode("demo", "--json", "--trace")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["value"]["warmest"] == "Lima"
    forecasts = [c for c in out["tool_calls"] if c["tool"] == "forecast"]
    assert len(forecasts) == 5 and len({c["batch"] for c in forecasts}) == 1


def test_run_chains_calls_across_servers_and_prints_only_the_result(demo_config_file: Path) -> None:
    program = (
        "cities = await weather.list_cities()\n"
        "f = await weather.forecast(city=cities[0], days=1)\n"
        "n = await notes.add_note(text=str(f['highs_c'][0]))\n"
        "(await notes.list_notes())[n - 1]\n"
    )
    proc = codemode("run", "--config", str(demo_config_file), stdin=program)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "13.0"  # Cairo, the first city, day one


@pytest.mark.slow
def test_the_example_config_and_program_work() -> None:
    proc = codemode("run", "--config", "examples/mcp.json", "examples/program.py", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["remembered"] == [json.loads(proc.stdout)["hottest"]]


def test_stubs_and_search_read_the_configured_servers(demo_config_file: Path) -> None:
    stubs = codemode("stubs", "--config", str(demo_config_file))
    assert stubs.returncode == 0, stubs.stderr
    assert "class weather:" in stubs.stdout and "class notes:" in stubs.stdout
    compile(stubs.stdout, "stubs.py", "exec")
    one = codemode("stubs", "--config", str(demo_config_file), "notes.add_note")
    assert "async def add_note" in one.stdout and "forecast" not in one.stdout
    hits = codemode("search", "--config", str(demo_config_file), "temperature forecast for a city", "--json")
    assert hits.returncode == 0, hits.stderr
    assert json.loads(hits.stdout)[0]["name"] == "weather.forecast"


def test_pin_records_definitions_and_refuses_a_changed_one(demo_config_file: Path) -> None:
    first = codemode("pin", "--config", str(demo_config_file))
    assert first.returncode == 0, first.stderr
    lock = demo_config_file.parent / "codemode.lock.json"
    data = json.loads(lock.read_text())
    assert set(data["tools"]) == {"weather", "notes"}
    # A rug pull: the pinned description no longer matches what the server says.
    data["tools"]["notes"]["add_note"]["sha256"] = "0" * 64
    lock.write_text(json.dumps(data))
    refused = codemode("run", "--config", str(demo_config_file), stdin="await notes.add_note(text='x')")
    assert refused.returncode == 3
    assert "notes" in refused.stderr and "add_note" in refused.stderr and "codemode pin --update" in refused.stderr
    check = codemode("pin", "--config", str(demo_config_file))
    assert check.returncode == 1 and "CHANGED" in check.stdout
    update = codemode("pin", "--config", str(demo_config_file), "--update")
    assert update.returncode == 0, update.stderr
    again = codemode("run", "--config", str(demo_config_file), stdin="await notes.add_note(text='x')")
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "code"),
    [
        (["run"], "1/0", 1),
        (["run", "--json"], "1/0", 1),
        (["run", "/no/such/file.py"], None, 2),
        (["run", "--timeout", "-1"], "1", 2),
        (["stubs", "--config", "/no/such/config.json"], None, 3),
        (["nonsense"], None, 2),
    ],
)
def test_exit_codes_scripts_can_rely_on(args: list[str], stdin: str | None, code: int) -> None:
    proc = codemode(*args, stdin=stdin)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_a_bad_config_names_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mcpServers": {"x": {"command": 42}}}))
    proc = codemode("stubs", "--config", str(bad))
    assert proc.returncode == 3
    assert str(bad) in proc.stderr and "command" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_output_of_a_failed_run_has_the_error_code() -> None:
    proc = codemode("run", "--json", stdin="x = 1\nundefined_name\n")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "uncaught_exception" and error["exc_type"] == "NameError"
    assert error["traceback"][0]["line"] == 2


def test_an_unavailable_server_is_reported_once(tmp_path: Path) -> None:
    config = demo_config()
    config["mcpServers"]["broken"] = {"command": str(tmp_path / "no-such-server")}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(config))
    # Long enough for the hub to retry the broken server in the background (after 1 s, then 2 s).
    program = "import asyncio\nawait asyncio.sleep(3.5)\nlen(await weather.list_cities())"
    proc = codemode("run", "--config", str(path), stdin=program)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5"
    assert proc.stderr.count("is unavailable") == 1, proc.stderr
    assert "'broken'" in proc.stderr


def test_plain_output_of_an_uncaught_tool_error_names_its_line(demo_config_file: Path) -> None:
    program = "cities = await weather.list_cities()\nawait weather.forecast(city='Atlantis')\n"
    proc = codemode("run", "--config", str(demo_config_file), stdin=program)
    assert proc.returncode == 1
    assert "error [tool_error]" in proc.stderr
    assert "line 2, in <module>: await weather.forecast(city='Atlantis')" in proc.stderr, proc.stderr


def test_the_demo_weather_server_tells_the_model_what_to_do_about_an_unknown_city(demo_config_file: Path) -> None:
    program = "try:\n    await weather.forecast(city='Atlantis')\nexcept ToolError as e:\n    r = str(e)\nr\n"
    proc = codemode("run", "--config", str(demo_config_file), stdin=program)
    assert proc.returncode == 0, proc.stderr
    assert "unknown city 'Atlantis'; call list_cities()" in proc.stdout


def test_trace_without_json_prints_the_tool_call_log_on_stderr(demo_config_file: Path) -> None:
    proc = codemode("run", "--trace", "--config", str(demo_config_file), stdin="len(await weather.list_cities())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5"  # the result alone on stdout, as without --trace
    assert "weather.list_cities({}) ok" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["run", "--timeout", "-1"], "--timeout"),
        (["run", "--timeout", "nan"], "--timeout"),
        (["run", "--memory-mb", "0"], "--memory-mb"),
        (["run", "--max-tool-calls", "0"], "--max-tool-calls"),
        (["search", "--config", "CONFIG", "weather", "--limit", "0"], "--limit"),
    ],
)
def test_a_bad_number_is_a_usage_error_naming_the_flag_typed(
    args: list[str], flag: str, demo_config_file: Path
) -> None:
    proc = codemode(*[str(demo_config_file) if a == "CONFIG" else a for a in args], stdin="1")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert flag in proc.stderr and "Limits." not in proc.stderr and "Traceback" not in proc.stderr


def test_stubs_for_an_unknown_tool_is_a_usage_error_with_suggestions(demo_config_file: Path) -> None:
    proc = codemode("stubs", "--config", str(demo_config_file), "weather.forcast")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "weather.forecast" in proc.stderr and "Traceback" not in proc.stderr


def test_the_example_demo_servers_start_from_a_launcher_without_the_venv_on_path(tmp_path: Path) -> None:
    # An MCP client starts codemode by its absolute path, with a PATH of its own
    # where `python3` (if any) lacks codemode's dependencies and `codemode` is absent.
    example = json.loads((REPO / "examples" / "mcp.json").read_text())
    servers = {name: example["mcpServers"][name] for name in ("weather", "notes")}
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    proc = subprocess.run(
        [sys.executable, "-m", "codemode", "run", "--config", str(config)],
        input="(len(await weather.list_cities()), await notes.add_note(text='hi'))",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [5, 1]
    assert "unavailable" not in proc.stderr


def test_pool_flags_and_variables_are_validated() -> None:
    bad = codemode("run", "--pool-warm", "5", "--pool-max", "2", "-", stdin="1 + 1")
    assert bad.returncode == 2 and "cannot exceed" in bad.stderr, bad.stderr
    env_bad = codemode("run", "-", stdin="1 + 1", env={"CODEMODE_POOL_WARM": "lots"})
    assert env_bad.returncode == 3 and "CODEMODE_POOL_WARM" in env_bad.stderr, env_bad.stderr
    on_demand = codemode("run", "--pool-warm", "0", "--pool-max", "1", "-", stdin="sum(range(10))")
    assert on_demand.returncode == 0 and on_demand.stdout.strip() == "45", on_demand.stderr
