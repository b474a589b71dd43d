"""A user's type checker sees codemode's types (the package ships `py.typed`).

The package's own `mypy --strict` runs in `.ci/run`, not here."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_a_users_strict_mypy_sees_codemode_types(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    user = tmp_path / "user.py"
    user.write_text(
        "import codemode\n"
        "limits = codemode.Limits(timeout=5)\n"
        "reveal_type(limits.timeout)\n"
        "wrong: str = codemode.Limits().max_tool_calls\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy"),
            str(user),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert "py.typed" not in out and "missing library stubs" not in out, out
    assert re.search(r'Revealed type is "(builtins\.)?float"', out), out
    # A wrong use is caught, which needs the real annotation, not Any.
    assert 'expression has type "int", variable has type "str"' in out, out
