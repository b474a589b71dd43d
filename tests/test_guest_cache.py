"""The guest build cache: first build, reuse, and recovery from corruption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from codemode import Limits, Sandbox
from codemode._sandbox.guest import build_key, cache_root, guest_source_dir
from codemode._sandbox.wasm import WasmBackend

pytestmark = pytest.mark.anyio


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


async def _works(backend: WasmBackend) -> None:
    result = await Sandbox(backend=backend).run("sum(range(10))", limits=Limits(timeout=10))
    assert result.ok and result.value == 45, result.error


@pytest.mark.slow
async def test_first_build_is_cached_reused_and_rebuilt_when_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEMODE_CACHE_DIR", str(tmp_path))
    messages: list[str] = []
    first = WasmBackend()
    first.load(progress=messages.append)
    assert any("building" in m for m in messages) and any("compiling" in m for m in messages)
    await _works(first)
    artifacts = tmp_path / "sandbox" / build_key()
    assert {p.name for p in artifacts.iterdir()} >= {"sandbox.wasm", "sandbox.cwasm", "manifest.json"}

    messages.clear()
    WasmBackend().load(progress=messages.append)
    assert messages == [], "a second process start reuses the cache without building"

    _flip_bytes(artifacts / "sandbox.wasm")
    _flip_bytes(artifacts / "sandbox.cwasm")
    messages.clear()
    rebuilt = WasmBackend()
    rebuilt.load(progress=messages.append)
    assert any("corrupt" in m for m in messages) and any("building" in m for m in messages)
    await _works(rebuilt)


@pytest.mark.slow
def test_first_runs_at_once_on_an_empty_cache_build_the_guest_once(tmp_path: Path) -> None:
    # Three processes, as three first `codemode` commands started together: one
    # builds, the others wait for it and load its build (a file lock in the cache).
    env = {**os.environ, "CODEMODE_CACHE_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "codemode", "sandbox", "build"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=600)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    everything = "".join(outputs)
    assert everything.count("building the sandbox guest") == 1, outputs
    assert everything.count("compiling the sandbox guest") == 1, outputs
    assert [p.name for p in (tmp_path / "sandbox").iterdir()] == [build_key()]


def _copy_of_the_suites_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the suite's own build, so a test reruns only the step it breaks."""
    WasmBackend().load()
    source = cache_root() / "sandbox" / build_key()
    monkeypatch.setenv("CODEMODE_CACHE_DIR", str(tmp_path))
    target = tmp_path / "sandbox" / build_key()
    shutil.copytree(source, target)
    return target


async def test_a_corrupt_compiled_guest_is_recompiled_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _copy_of_the_suites_cache(tmp_path, monkeypatch)
    _flip_bytes(target / "sandbox.cwasm")
    messages: list[str] = []
    backend = WasmBackend()
    backend.load(progress=messages.append)
    assert any("compiling" in m for m in messages)
    assert not any("building" in m for m in messages)
    await _works(backend)


async def test_an_unreadable_manifest_means_recompiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_of_the_suites_cache(tmp_path, monkeypatch)
    (target / "manifest.json").write_text("{not json")
    messages: list[str] = []
    backend = WasmBackend()
    backend.load(progress=messages.append)
    assert any("building" in m or "compiling" in m for m in messages)
    assert json.loads((target / "manifest.json").read_text())["cwasm"]
    await _works(backend)


def test_the_cache_key_follows_the_guest_sources(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(guest_source_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert build_key(copy) == build_key(guest_source_dir())
    runtime = copy / "guest" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n# changed\n")
    assert build_key(copy) != build_key(guest_source_dir())
