"""Where a stdio server's stderr goes: one log file per server, not our stderr.

A child's stderr carries its tracebacks, and those may quote the secrets it was
started with (its `env`); mixed into codemode's own stderr they would reach
whatever collects it. So each stdio server writes to
`<log dir>/<server>.stderr.log`, where the log dir is `$CODEMODE_LOG_DIR` or
the user log directory (`~/.local/state/codemode/log` on Linux). The file is
created readable by its owner only, and appended to; once it passes
`MAX_LOG_BYTES` it is moved aside to `<server>.stderr.log.1` (replacing the
previous one) before the next start, so two files bound what a server leaves.
The file holds what the server wrote, unredacted: it is the operator's record.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TextIO

import platformdirs

__all__ = ["MAX_LOG_BYTES", "log_dir", "open_server_log", "server_log_path"]

MAX_LOG_BYTES = 10_000_000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def log_dir() -> Path:
    """`$CODEMODE_LOG_DIR`, or the user log directory for codemode."""
    env = os.environ.get("CODEMODE_LOG_DIR")
    return Path(env) if env else Path(platformdirs.user_log_dir("codemode"))


def server_log_path(server: str) -> Path:
    """The stderr log of the server with config key `server` (made a safe file name)."""
    name = _UNSAFE.sub("_", server).lstrip(".")[:100] or "server"
    return log_dir() / f"{name}.stderr.log"


def open_server_log(server: str) -> TextIO:
    """The server's stderr log, open for appending (rotated first if too large).

    Raises `OSError` if the directory or file cannot be created."""
    path = server_log_path(server)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")
