"""Configuration in the `mcpServers` format other MCP clients use."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from codemode import ConfigError, load_config, parse_config
from codemode._upstream.config import CodemodeOptions, HttpServer, StdioServer

SECRET = "sk-live-0123456789abcdef"


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def config_error(data: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    assert info.value.code == "config_error"
    return info.value


def test_a_claude_desktop_file_loads_unchanged(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "globalShortcut": "Ctrl+Space",
            "mcpServers": {
                "server-filesystem": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-filesystem", "/data"],
                    "env": {"API_KEY": SECRET},
                    "autoApprove": ["read_file"],
                    "alwaysAllow": [],
                },
                "search": {
                    "type": "streamable-http",
                    "url": "https://example.com/mcp",
                    "headers": {"Authorization": f"Bearer {SECRET}"},
                },
            },
        },
    )
    config = load_config(path)
    fs, search = config.servers["server-filesystem"], config.servers["search"]
    assert isinstance(fs, StdioServer) and isinstance(search, HttpServer)
    assert fs.command == "npx" and fs.args == ("-y", "@modelcontextprotocol/server-filesystem", "/data")
    assert fs.env["API_KEY"].get_secret_value() == SECRET
    assert search.headers["Authorization"].get_secret_value() == f"Bearer {SECRET}"
    assert config.source == str(path)
    assert list(config.servers) == ["server-filesystem", "search"]


def test_a_vs_code_file_with_servers_and_types_loads() -> None:
    config = parse_config(
        {
            "inputs": [],
            "servers": {
                "local": {"type": "stdio", "command": "python", "args": ["server.py"], "cwd": "/srv"},
                "remote": {"type": "http", "url": "http://127.0.0.1:8000/mcp"},
            },
        }
    )
    local = config.servers["local"]
    assert isinstance(local, StdioServer) and local.cwd == "/srv"
    assert isinstance(config.servers["remote"], HttpServer)


def test_namespace_is_the_alias_else_the_key_as_an_identifier() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "server-filesystem": {"command": "npx"},
                "github": {"command": "gh-mcp", "codemode": {"alias": "gh"}},
                "2fa.tools": {"url": "https://x/mcp"},
            }
        }
    )
    assert [s.namespace for s in config.servers.values()] == ["server_filesystem", "gh", "n_2fa_tools"]


def test_codemode_options_are_read_with_defaults() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "a": {
                    "command": "x",
                    "codemode": {
                        "allow": ["read_*"],
                        "deny": ["read_secret"],
                        "timeout": 5,
                        "connectTimeout": 2,
                        "protocol": "legacy",
                    },
                },
                "b": {"command": "y"},
            }
        }
    )
    a, b = config.servers["a"].codemode, config.servers["b"].codemode
    assert a == CodemodeOptions(
        allow=("read_*",), deny=("read_secret",), timeout=5, connect_timeout=2, protocol="legacy"
    )
    assert b == CodemodeOptions()
    assert (b.timeout, b.connect_timeout, b.protocol, b.allow, b.deny) == (60.0, 30.0, "auto", None, ())


def test_allow_and_deny_patterns_decide_which_tools_are_permitted() -> None:
    options = CodemodeOptions(allow=("read_*", "list_dir"), deny=("read_secret*",))
    assert options.permits("read_file") and options.permits("list_dir")
    assert not options.permits("read_secret_key")  # deny wins over allow
    assert not options.permits("write_file")  # not allowed
    assert CodemodeOptions(deny=("rm",)).permits("anything")
    assert not CodemodeOptions(deny=("rm",)).permits("rm")


def test_the_command_codemode_runs_this_codemode_whatever_the_path() -> None:
    config = parse_config({"mcpServers": {"notes": {"command": "codemode", "args": ["demo-server", "notes"]}}})
    notes = config.servers["notes"]
    assert isinstance(notes, StdioServer)
    assert (notes.command, notes.args) == (sys.executable, ("-m", "codemode", "demo-server", "notes"))


def test_disabled_servers_are_skipped() -> None:
    config = parse_config({"mcpServers": {"off": {"command": "x", "disabled": True}, "on": {"command": "y"}}})
    assert list(config.servers) == ["on"]


def test_environment_variables_are_expanded() -> None:
    environ = {"TOKEN": SECRET, "ROOT": "/data"}
    config = parse_config(
        {
            "mcpServers": {
                "a": {"command": "srv", "args": ["--root", "${env:ROOT}", "${DEPTH:-3}"], "env": {"KEY": "${TOKEN}"}},
                "b": {"url": "https://x/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
            }
        },
        environ=environ,
    )
    a, b = config.servers["a"], config.servers["b"]
    assert isinstance(a, StdioServer) and isinstance(b, HttpServer)
    assert a.args == ("--root", "/data", "3")
    assert a.env["KEY"].get_secret_value() == SECRET
    assert b.headers["Authorization"].get_secret_value() == f"Bearer {SECRET}"


def test_a_missing_environment_variable_is_reported_by_field() -> None:
    error = config_error({"mcpServers": {"a": {"command": "srv", "env": {"KEY": "${NOT_SET_ANYWHERE}"}}}}, environ={})
    assert "mcpServers.a.env.KEY: environment variable NOT_SET_ANYWHERE is not set" in error.message


def test_a_bad_file_names_the_file_and_every_bad_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "fs": {"command": "npx", "codemode": {"timeout": -1, "alais": "x"}},
                "web": {"url": "ftp://example.com"},
                "both": {"command": "x", "url": "https://x"},
                "none": {"args": []},
                "old": {"type": "sse", "url": "https://x/sse"},
                "odd": {"type": "stdio", "url": "https://x/mcp"},
                "kw": {"command": "x", "codemode": {"alias": "class"}},
            }
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert message.startswith(f"{path}: invalid configuration:")
    for field in [
        "mcpServers.fs.codemode.timeout",
        "mcpServers.fs.codemode.alais",
        "mcpServers.web.url",
        "mcpServers.both:",
        "mcpServers.none:",
        "mcpServers.old.type",
        "mcpServers.odd.type",
        "mcpServers.kw.codemode.alias",
    ]:
        assert field in message, field


def test_two_servers_with_the_same_namespace_are_refused() -> None:
    error = config_error({"mcpServers": {"my-server": {"command": "a"}, "my_server": {"command": "b"}}})
    assert "namespace 'my_server' is already used" in error.message


def test_invalid_json_is_reported_with_the_file_and_position(tmp_path: Path) -> None:
    path = write(tmp_path, '{"mcpServers": {"a": {"command": "x",}}}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"{path}: not valid JSON:")
    assert "line 1" in info.value.message


def test_a_file_starting_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # Editors on Windows write UTF-8 with a BOM.
    path = tmp_path / "mcp.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"mcpServers": {"x": {"command": "x"}}}).encode())
    assert list(load_config(path).servers) == ["x"]


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.json")


def test_a_file_without_servers_is_a_config_error() -> None:
    assert "no `mcpServers` object" in config_error({"servers_typo": {}}).message
    assert "must be a JSON object" in config_error([1, 2]).message


def test_secrets_never_appear_in_reprs_dumps_or_errors(tmp_path: Path) -> None:
    data = {
        "mcpServers": {
            "a": {"command": "srv", "env": {"KEY": SECRET, "OTHER": 42}},  # OTHER is invalid: not a string
            "b": {"url": "https://x/mcp", "headers": {"Authorization": SECRET, "X-Num": ["not", "a", "string"]}},
        }
    }
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert "mcpServers.a.env.OTHER" in info.value.message
    assert "mcpServers.b.headers.X-Num" in info.value.message
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in json.dumps(info.value.to_dict())

    config = parse_config(
        {
            "mcpServers": {
                "a": {"command": "srv", "env": {"KEY": SECRET}},
                "b": {"url": "https://x/mcp", "headers": {"Authorization": SECRET}},
            }
        }
    )
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.servers["a"])):
        assert SECRET not in text
    assert config.secrets() == [SECRET, SECRET]
