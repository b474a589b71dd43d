"""Settings of `codemode serve` and `codemode mcp`: one typed object per command,
read from `CODEMODE_*` environment variables and then from command-line flags
(a flag given wins over the variable, which wins over the default).

Every flag has its variable: `--max-body-bytes` is `CODEMODE_MAX_BODY_BYTES`.
Lists (`--allow-origin`) are comma-separated in the environment; switches
(`--http`, `--observe-shapes`) take 1/0, true/false, yes/no, on/off.

Failure policy: a value that does not fit its field (from either source) raises
`SettingsError` naming the variable or flag; nothing is silently dropped. No
new dependency: pydantic (already used for the service's models) validates,
`os.environ` is read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._errors import ConfigError
from .._limits import Limits

__all__ = ["ENV_PREFIX", "McpSettings", "ServeSettings", "SettingsError", "env_name"]

ENV_PREFIX = "CODEMODE_"
_MIB = 1024 * 1024
_DEFAULT_LIMITS = Limits()


class SettingsError(ConfigError):
    """A setting from the environment or a flag has a value that does not fit."""


def env_name(field: str) -> str:
    """The environment variable of a settings field: `max_body_bytes` -> `CODEMODE_MAX_BODY_BYTES`."""
    return ENV_PREFIX + field.upper()


class _CommandSettings(BaseModel):
    """What `serve` and `mcp` share: the tools, the sandbox, the network."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _lists: ClassVar[frozenset[str]] = frozenset({"allow_origin"})

    config: Path | None = Field(default=None, description="an mcpServers JSON file")
    observe_shapes: bool = False
    stubs_budget: int | None = Field(default=None, ge=0)
    """Tokens within which every stub goes into execute_code's description; None: the default (4,000)."""
    backend: Literal["wasm", "restricted"] = "wasm"
    timeout: float = Field(default=_DEFAULT_LIMITS.timeout, gt=0)
    memory_mb: int = Field(default=_DEFAULT_LIMITS.memory // _MIB, gt=0)
    max_tool_calls: int = Field(default=_DEFAULT_LIMITS.max_tool_calls, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    token: str | None = None
    allow_origin: tuple[str, ...] = ()

    @field_validator("token")
    @classmethod
    def _empty_token_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def limits(self) -> Limits:
        return Limits(timeout=self.timeout, memory=self.memory_mb * _MIB, max_tool_calls=self.max_tool_calls)

    @classmethod
    def load(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> Self:
        """Defaults, overridden by `CODEMODE_*` variables in `environ`, overridden
        by `flags` (field -> value; None means the flag was not given).

        Raises `SettingsError` naming the variable or flag of a bad value."""
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name in cls.model_fields:
            raw = environ.get(env_name(name))
            if raw is not None:
                values[name] = [v.strip() for v in raw.split(",") if v.strip()] if name in cls._lists else raw
                origin[name] = env_name(name)
        for name, value in flags.items():
            if name in cls.model_fields and value is not None:
                values[name] = value
                origin[name] = "--" + name.replace("_", "-")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                where = origin.get(field, field)
                got = "" if field == "token" else f" (got {error.get('input')!r})"  # a secret stays out
                problems.append(f"{where}: {error['msg']}{got}")
            raise SettingsError("; ".join(problems)) from None


class ServeSettings(_CommandSettings):
    """`codemode serve`."""

    max_concurrency: int = Field(default=4, ge=1)
    queue: int = Field(default=16, ge=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    tokens_file: Path | None = None
    max_store_mb: float = Field(default=256.0, gt=0)
    """Memory for background runs' results and events; the oldest finished runs are forgotten beyond it."""
    max_listeners: int = Field(default=1_024, ge=1)
    """Event streams (SSE) open at once, over all runs; then 429 `too_many_listeners`."""
    shutdown_grace: float = Field(default=10.0, ge=0)
    """Seconds runs in flight may take to finish after SIGTERM before they are answered 503."""
    store: str | None = None
    """Where background runs live: "memory" (the default) or a redis:// URL shared by a fleet."""
    replica_id: str | None = None
    """This replica's name in a fleet (default hostname-pid)."""
    lease: float = Field(default=5.0, gt=0)
    """Seconds a silent replica of a fleet is given before it is taken for dead."""


class McpSettings(_CommandSettings):
    """`codemode mcp`."""

    http: bool = False
    port: int = Field(default=8765, ge=0, le=65535)
    max_sessions: int = Field(default=1_000, ge=1)
    """MCP sessions open at once over HTTP; each holds about 38 kB until it ends or idles out."""
    session_idle: float = Field(default=600.0, gt=0)
    """Seconds an HTTP session may go without a request before it is closed."""
    tokens_file: Path | None = None
    """More bearer tokens, one client each (`--http`); a task is seen only by the client that started it."""
    store: str | None = None
    """Where `--http` keeps execute_code tasks: "memory" (the default) or a redis:// URL shared by replicas."""
    replica_id: str | None = None
    lease: float = Field(default=5.0, gt=0)
