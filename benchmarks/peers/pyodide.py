"""Pyodide from the npm registry, run by node: installed once into the repo's
`.cache/pyodide/` (pinned), then measured by `pyodide_bench.mjs`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["PIN", "Unavailable", "ensure", "measure"]

PIN = "314.0.7"
ROOT = Path(__file__).resolve().parents[2] / ".cache" / "pyodide"
SCRIPT = Path(__file__).resolve().parent / "pyodide_bench.mjs"


class Unavailable(Exception):
    """Pyodide cannot run here; the message says why."""


def ensure() -> Path:
    """The installed package directory (installing `pyodide@PIN` if needed).

    Raises `Unavailable` without node or npm, or if the install fails."""
    if shutil.which("node") is None:
        raise Unavailable("node is not installed")
    package = ROOT / "node_modules" / "pyodide"
    try:
        if json.loads((package / "package.json").read_text())["version"] == PIN:
            return package
    except (OSError, ValueError, KeyError):
        pass
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed")
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "package.json").write_text(json.dumps({"private": True, "dependencies": {"pyodide": PIN}}, indent=2))
    proc = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise Unavailable(f"npm install pyodide@{PIN} failed: {proc.stderr.strip()[-500:]}")
    return package


def measure(spec: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
    """Run the node benchmark with `spec` (see pyodide_bench.mjs); its JSON result.

    Raises `Unavailable` if Pyodide cannot be installed or does not run."""
    package = ensure()
    try:
        proc = subprocess.run(
            ["node", str(SCRIPT), str(package)], input=json.dumps(spec), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"the node benchmark took over {timeout:g} s") from None
    if proc.returncode != 0:
        raise Unavailable(f"node exited {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:300]}")
    data: dict[str, Any] = json.loads(proc.stdout)
    return data
