"""The public MCP reference servers the tests run against, pinned, installed on
first use into the repo's `.cache/reference/` (npm packages, and a venv for each
PyPI server so its own `mcp` pin cannot clash with ours).

    python -m tests.reference_servers      # install now (CI does this first)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / ".cache" / "reference"

NPM = {
    "@modelcontextprotocol/server-everything": "2026.8.31",
    "@modelcontextprotocol/server-memory": "2026.8.31",
    "@modelcontextprotocol/server-filesystem": "2026.8.31",
    "@modelcontextprotocol/inspector": "2.12.0",
}
PYPI = {"mcp-server-time": "2026.10.19"}
# Untyped servers the token benchmark connects: each in its own venv, since
# mcp-server-sqlite needs the SDK's v1 (`mcp<2`).
PYPI_GIT = {"mcp-server-git": "2026.10.19"}
PYPI_SQLITE = {"mcp-server-sqlite": "2025.4.25", "mcp": "<2"}


class Unavailable(Exception):
    """A reference server cannot be installed here (no npm, no registry)."""


def _log(message: str) -> None:
    print(f"reference servers: {message}", file=sys.stderr, flush=True)


def _stamp(path: Path, pins: dict[str, str]) -> bool:
    try:
        return json.loads(path.read_text()) == pins
    except (OSError, ValueError):
        return False


def npm_bin(name: str) -> Path:
    """Path of an installed npm reference binary (installing the set if needed)."""
    ensure_npm()
    return ROOT / "npm" / "node_modules" / ".bin" / name


def ensure_npm() -> None:
    target = ROOT / "npm"
    stamp = target / "codemode-pins.json"
    if _stamp(stamp, NPM):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed")
    target.mkdir(parents=True, exist_ok=True)
    (target / "package.json").write_text(json.dumps({"private": True, "dependencies": NPM}, indent=2))
    _log(f"installing {', '.join(f'{k}@{v}' for k, v in NPM.items())} (once)…")
    proc = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise Unavailable(f"npm install failed: {proc.stderr.strip()[-1000:]}")
    stamp.write_text(json.dumps(NPM))


def _pypi_venv(name: str, pins: dict[str, str]) -> Path:
    """The bin directory of `.cache/reference/<name>`, a venv holding `pins`
    (installing them if its stamp differs). A pin starting with `<`, `>`, `=`
    or `!` is a specifier, else an exact version."""
    target = ROOT / name
    stamp = target / "codemode-pins.json"
    bindir = target / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    if not _stamp(stamp, pins):
        specs = [f"{k}{v}" if v[:1] in "<>=!" else f"{k}=={v}" for k, v in pins.items()]
        _log(f"installing {', '.join(specs)} into {target} (once)…")
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *specs],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise Unavailable(f"pip install failed: {proc.stderr.strip()[-1000:]}")
        stamp.write_text(json.dumps(pins))
    return bindir


def time_server() -> list[str]:
    """The command that runs the pinned `mcp-server-time` (installing it if needed)."""
    return [_venv_python("venv-time", PYPI), "-m", "mcp_server_time", "--local-timezone", "UTC"]


def _venv_python(name: str, pins: dict[str, str]) -> str:
    # The venv's interpreter, not its console scripts: a script's shebang names the
    # path the venv was made at, so a cache reached through another path (a
    # symlink, a moved checkout) would hold scripts that cannot start.
    return str(_pypi_venv(name, pins) / ("python.exe" if os.name == "nt" else "python"))


def git_server(repository: Path) -> list[str]:
    """The command that runs the pinned `mcp-server-git` on `repository` (installing it if needed)."""
    return [_venv_python("venv-git", PYPI_GIT), "-m", "mcp_server_git", "--repository", str(repository)]


def sqlite_server(db_path: Path) -> list[str]:
    """The command that runs the pinned `mcp-server-sqlite` on `db_path` (installing it if needed)."""
    main = "import sys; from mcp_server_sqlite import main; sys.exit(main())"  # the package has no __main__
    return [_venv_python("venv-sqlite", PYPI_SQLITE), "-c", main, "--db-path", str(db_path)]


def installed(name: str) -> bool:
    """Whether `.cache/reference/<name>` is already installed with its pins (nothing is installed)."""
    pins = {"venv-time": PYPI, "venv-git": PYPI_GIT, "venv-sqlite": PYPI_SQLITE}[name]
    return _stamp(ROOT / name / "codemode-pins.json", pins)


if __name__ == "__main__":
    ensure_npm()
    time_server()
    if "--untyped" in sys.argv:  # the token benchmark's git and sqlite servers
        _pypi_venv("venv-git", PYPI_GIT)
        _pypi_venv("venv-sqlite", PYPI_SQLITE)
    _log(f"ready in {ROOT}")
