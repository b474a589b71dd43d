"""Which MCP servers to connect to, in the `mcpServers` JSON format other clients use.

A Claude Desktop, Cursor, Claude Code or VS Code file works unchanged::

    {
      "mcpServers": {
        "server-filesystem": {
          "command": "npx",
          "args": ["-y", "@modelcontextprotocol/server-filesystem", "/data"],
          "env": {"API_KEY": "${API_KEY}"},
          "codemode": {"alias": "fs", "deny": ["delete_*"], "approve": ["write_*"], "timeout": 30}
        },
        "search": {"type": "http", "url": "https://example.com/mcp",
                   "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}}
      }
    }

- An entry with `command` (plus `args`, `env`, `cwd`) is a stdio server; one with
  `url` (plus `headers`) is a Streamable HTTP server. A `type` of "stdio", "http",
  "streamable-http" or "streamableHttp" is accepted and must agree; "sse" is refused.
  VS Code's top-level `servers` key is read like `mcpServers`.
- `${VAR}`, `${env:VAR}` and `${VAR:-default}` in command, args, env, cwd, url and
  headers are read from the environment, so secrets can stay out of the file.
- Keys other clients use (`disabled`, `autoApprove`, `envFile`, ...) are ignored,
  except `disabled: true`, which skips the server here too.
- codemode's own options sit in a `codemode` object per server (`CodemodeOptions`);
  unknown keys there are errors, since they can only be typos.
- The namespace model code uses is `codemode.alias`, else the server's key made an
  identifier (`server-filesystem` -> `server_filesystem`).
- A `command` of exactly `codemode` runs this codemode: the Python running it,
  with `-m codemode`. A client that starts codemode by absolute path, without its
  venv on PATH, would find no `codemode` (nor a `python3` with its dependencies)
  there; e.g. `{"command": "codemode", "args": ["demo-server", "weather"]}`.

`env` and `headers` values are `SecretStr`: they never show in reprs or errors.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .._errors import ConfigError
from .._names import to_identifier

__all__ = ["CodemodeOptions", "Config", "HttpServer", "ServerConfig", "StdioServer", "load_config", "parse_config"]

_STDIO_TYPES = frozenset({"stdio"})
_HTTP_TYPES = frozenset({"http", "streamable-http", "streamable_http", "streamableHttp"})
_VAR = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_UNSUPPORTED_VAR = re.compile(r"\$\{(input|command|config):[^}]*\}")


class CodemodeOptions(BaseModel):
    """codemode's options for one server: the `codemode` object in its entry."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    alias: str | None = None
    """The namespace model code uses for this server's tools."""
    allow: tuple[str, ...] | None = None
    """If set, only tools matching one of these shell-style patterns are exposed and callable."""
    deny: tuple[str, ...] = ()
    """Tools matching one of these patterns are never exposed nor callable; wins over `allow`."""
    approve: tuple[str, ...] = ()
    """Calls to tools matching one of these patterns wait for an approver's
    decision before they are made (see `codemode.Policy`); the tools stay listed."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds one tool call may take."""
    connect_timeout: float = Field(default=30.0, gt=0, alias="connectTimeout")
    """Seconds to start (or restart) the server and list its tools."""
    protocol: Literal["auto", "legacy"] = "auto"
    """"auto" tries the 2026 protocol and falls back to the initialize handshake;
    "legacy" goes straight to the handshake."""

    @field_validator("alias")
    @classmethod
    def _alias_is_identifier(cls, alias: str | None) -> str | None:
        if alias is not None and to_identifier(alias) != alias:
            raise ValueError("must be a Python identifier (letters, digits, underscores; no keyword)")
        return alias

    def permits(self, tool: str) -> bool:
        """Whether the allow and deny lists let `tool` be listed and called."""
        if any(fnmatchcase(tool, pattern) for pattern in self.deny):
            return False
        return self.allow is None or any(fnmatchcase(tool, pattern) for pattern in self.allow)


class _ServerBase(BaseModel):
    # Other clients' keys must not break a file that works for them.
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    """The server's key in the file."""
    type: str | None = None
    disabled: bool = False
    codemode: CodemodeOptions = CodemodeOptions()

    @property
    def namespace(self) -> str:
        """Where the server's tools live in model code: the alias, else the key as an identifier."""
        return self.codemode.alias or to_identifier(self.name, fallback="server")

    def secrets(self) -> list[str]:
        """The secret values this entry holds, for redacting text that might echo them."""
        return []


class StdioServer(_ServerBase):
    """A server the hub starts as a child process and talks to over stdin/stdout."""

    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    env: dict[str, SecretStr] = Field(default_factory=dict)
    """Set for the child, over a minimal inherited environment (PATH, HOME, ...)."""
    cwd: str | None = None

    @field_validator("type")
    @classmethod
    def _type_is_stdio(cls, value: str | None) -> str | None:
        if value is not None and value not in _STDIO_TYPES:
            raise ValueError("a server with `command` must have type 'stdio'")
        return value

    def secrets(self) -> list[str]:
        return [v.get_secret_value() for v in self.env.values()]


class HttpServer(_ServerBase):
    """A server reached over Streamable HTTP."""

    url: str = Field(repr=False)
    """Kept out of reprs: some services put a key in the URL's path or query."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("type")
    @classmethod
    def _type_is_http(cls, value: str | None) -> str | None:
        if value == "sse":
            raise ValueError("the SSE transport is not supported; use the server's Streamable HTTP endpoint")
        if value is not None and value not in _HTTP_TYPES:
            raise ValueError("a server with `url` must have type 'http' or 'streamable-http'")
        return value

    def secrets(self) -> list[str]:
        parts = urlsplit(self.url)
        in_url = [parts.password or ""] + [value for _, value in parse_qsl(parts.query)]
        return [v.get_secret_value() for v in self.headers.values()] + [s for s in in_url if s]


ServerConfig = StdioServer | HttpServer


class Config(BaseModel):
    """The servers to connect to, by their key in the file, in file order."""

    model_config = ConfigDict(frozen=True)

    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    """Every enabled server."""
    source: str = "<config>"
    """Where the configuration came from, for messages."""

    def secrets(self) -> list[str]:
        """Every secret value in the configuration (for redaction)."""
        return [s for server in self.servers.values() for s in server.secrets() if s]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file.

    Raises `ConfigError` (naming the file and the field) if the file cannot be
    read, is not JSON, or does not validate."""
    source = str(path)
    try:
        # utf-8-sig: editors on Windows start the file with a byte-order mark.
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the file: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: the file is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # The message names line and column only, never the document's text.
        raise ConfigError(f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    return parse_config(data, source=source, environ=os.environ)


def parse_config(data: Any, *, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate configuration data already parsed from JSON. `${VAR}` references
    are read from `environ` (default: `os.environ`).

    Raises `ConfigError` naming `source` and the field at fault."""
    environ = os.environ if environ is None else environ
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the configuration must be a JSON object")
    key = "mcpServers" if "mcpServers" in data else "servers" if "servers" in data else None
    if key is None:
        raise ConfigError(f"{source}: no `mcpServers` object")
    entries = data[key]
    if not isinstance(entries, Mapping):
        raise ConfigError(f"{source}: {key}: must be an object mapping server names to servers")
    servers: dict[str, ServerConfig] = {}
    problems: list[str] = []
    owners: dict[str, str] = {}
    for name, entry in entries.items():
        where = f"{key}.{name}"
        try:
            server = _parse_server(str(name), entry, environ)
        except _EntryError as exc:
            problems.append(f"{where}{exc.field}: {exc.message}")
            continue
        except ValidationError as exc:
            problems.extend(_describe(where, exc))
            continue
        if server is None:
            continue
        if server.namespace in owners:
            problems.append(
                f"{where}: namespace {server.namespace!r} is already used by server "
                f"{owners[server.namespace]!r}; set `codemode.alias` on one of them"
            )
            continue
        owners[server.namespace] = str(name)
        servers[str(name)] = server
    if problems:
        raise ConfigError(f"{source}: invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
    return Config(servers=servers, source=source)


class _EntryError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _parse_server(name: str, entry: Any, environ: Mapping[str, str]) -> ServerConfig | None:
    if not isinstance(entry, Mapping):
        raise _EntryError("", "must be an object")
    if entry.get("disabled") is True:
        return None
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        raise _EntryError(
            "",
            "needs either `command` (stdio) or `url` (Streamable HTTP)"
            if not has_command
            else "has both `command` and `url`; keep one",
        )
    fields = ("command", "args", "env", "cwd") if has_command else ("url", "headers")
    expanded: dict[str, Any] = {**entry, "name": name}
    for field in fields:
        if field in entry:
            expanded[field] = _expand(entry[field], f".{field}", environ)
    model: type[ServerConfig] = StdioServer if has_command else HttpServer
    server = model.model_validate(expanded)
    if isinstance(server, StdioServer) and server.command == "codemode" and sys.executable:
        # This codemode, whatever the launcher's PATH holds.
        return server.model_copy(update={"command": sys.executable, "args": ("-m", "codemode", *server.args)})
    return server


def _expand(value: Any, field: str, environ: Mapping[str, str]) -> Any:
    """`value` with `${VAR}` references replaced from `environ`."""
    if isinstance(value, str):
        if _UNSUPPORTED_VAR.search(value):
            raise _EntryError(field, "`${input:...}`-style variables are not supported; use `${VAR}`")

        def one(match: re.Match[str]) -> str:
            var, default = match.group(1), match.group(2)
            if var in environ:
                return environ[var]
            if default is not None:
                return default
            raise _EntryError(field, f"environment variable {var} is not set")

        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [_expand(v, f"{field}.{i}", environ) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _expand(v, f"{field}.{k}", environ) for k, v in value.items()}
    return value


def _describe(where: str, exc: ValidationError) -> list[str]:
    # The offending input is left out on purpose: it may be a secret.
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}.{loc}: {message}" if loc else f"{where}: {message}")
    return lines
