"""Building the sandbox guest and caching it.

The guest (the WIT world and the Python runtime in `sandbox/`) is built into a
WebAssembly component with componentize-py, then compiled by wasmtime and
serialized. Both artifacts live in a user cache directory under a key that
hashes the guest sources and the componentize-py and wasmtime versions, so a
change to any of them builds afresh. A manifest records each artifact's sha256;
an artifact that does not match is rebuilt, never deserialized (wasmtime trusts
serialized code completely).

Several processes may start on an empty cache at once (three `codemode`
commands, a test run's workers): a lock file in the build's directory lets one
build while the others wait, bounded, and then load what it built.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .._errors import SandboxUnavailable

__all__ = ["GuestArtifacts", "cache_root", "ensure_built", "guest_source_dir"]

logger = logging.getLogger("codemode")

WORLD = "sandbox"
_BUILD_TIMEOUT_S = 600
_lock = threading.Lock()

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"codemode: {message}", file=sys.stderr, flush=True)


def guest_source_dir() -> Path:
    """The guest sources: packaged inside the wheel, or `sandbox/` of a checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged, checkout = package / "_guest_src", package.parent / "sandbox"
    for candidate in (packaged, checkout):
        if (candidate / "wit").is_dir() and (candidate / "guest").is_dir():
            return candidate
    raise SandboxUnavailable(f"the sandbox guest sources are missing (looked in {packaged} and {checkout})")


def cache_root() -> Path:
    """`$CODEMODE_CACHE_DIR`, or the user cache directory."""
    env = os.environ.get("CODEMODE_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("codemode"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _source_files(src: Path) -> list[Path]:
    files = [p for sub in ("wit", "guest") for p in (src / sub).rglob("*") if p.is_file()]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def build_key(src: Path | None = None) -> str:
    src = src or guest_source_dir()
    digest = hashlib.sha256()
    for path in _source_files(src):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for part in (
        _version("componentize-py"),
        _version("wasmtime"),
        _version("tzdata"),
        platform.machine(),
        sys.implementation.cache_tag,
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:24]


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class GuestArtifacts:
    directory: Path

    @property
    def wasm(self) -> Path:
        return self.directory / "sandbox.wasm"

    @property
    def cwasm(self) -> Path:
        return self.directory / "sandbox.cwasm"

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"

    def read_manifest(self) -> dict[str, str]:
        try:
            data = json.loads(self.manifest.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def record(self, name: str, path: Path) -> None:
        manifest = self.read_manifest()
        manifest[name] = _sha256(path)
        _write_atomic(self.manifest, json.dumps(manifest, indent=2).encode())

    def verified(self, name: str, path: Path) -> bool:
        """True if `path` exists and matches the sha256 the manifest holds for it."""
        expected = self.read_manifest().get(name)
        return bool(expected) and path.is_file() and _sha256(path) == expected


def _tzdata_module() -> str:
    """Python source holding the IANA time zone database (from the `tzdata`
    package): the guest has no filesystem, so `zoneinfo` reads it from here.
    One zlib stream over every zone (72 KB instead of 350 KB) plus an index, so
    the snapshot, which every fresh instance maps, stays small."""
    import importlib.resources
    import zlib

    root = importlib.resources.files("tzdata").joinpath("zoneinfo")
    zones: list[tuple[str, bytes]] = []

    def walk(node: importlib.resources.abc.Traversable, prefix: str) -> None:
        for entry in sorted(node.iterdir(), key=lambda e: e.name):
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("_") and "." not in entry.name:
                zones.append((prefix + entry.name, entry.read_bytes()))

    walk(root, "")
    index: dict[str, tuple[int, int]] = {}
    offset = 0
    for key, data in zones:
        index[key] = (offset, len(data))
        offset += len(data)
    blob = zlib.compress(b"".join(data for _, data in zones), 9)
    return f'"""Generated at build time from the tzdata package; not in git."""\nINDEX = {index!r}\nBLOB = {blob!r}\n'


def _componentize(src: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="codemode-guest-") as tmp:
        guest = Path(tmp) / "guest"
        shutil.copytree(src / "guest", guest, ignore=shutil.ignore_patterns("__pycache__"))
        (guest / "_tzdata.py").write_text(_tzdata_module())
        _run_componentize(src, guest, out)


def _run_componentize(src: Path, guest: Path, out: Path) -> None:
    args = [
        "componentize-py",
        "-q",
        "-d",
        str(src / "wit"),
        "-w",
        WORLD,
        "componentize",
        "app",
        "-p",
        str(guest),
        "-o",
        str(out),
    ]
    script = "import sys, componentize_py; sys.argv = sys.argv[1:]; componentize_py.script()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, cwd=src
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"building the sandbox guest failed: {exc}") from exc
    if proc.returncode != 0 or not out.is_file():
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        hint = " (is componentize-py installed? pip install componentize-py)" if "No module named" in detail else ""
        raise SandboxUnavailable(f"building the sandbox guest failed{hint}:\n{detail}")


@contextmanager
def _build_lock(directory: Path, progress: Progress, timeout_s: float) -> Iterator[None]:
    """Hold the build's lock file, shared by every process using this cache.
    The operating system drops the lock when its holder exits, so a crashed
    build never leaves the others waiting beyond it.

    Raises `SandboxUnavailable` if the lock is not free within `timeout_s`."""
    path = directory / "build.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SandboxUnavailable(f"cannot create the lock file {path}: {exc}") from exc
    try:
        deadline, told = time.monotonic() + timeout_s, False
        while not _try_lock(fd):
            if not told:
                progress("waiting for another process to build the sandbox guest…")
                told = True
            if time.monotonic() > deadline:
                raise SandboxUnavailable(f"another process held {path} for over {timeout_s:.0f} s")
            time.sleep(0.1)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def ensure_built(
    *, compile_wasm: Callable[[bytes], bytes], progress: Progress | None = None, force: bool = False
) -> GuestArtifacts:
    """Make sure the component and its compiled form are in the cache, building
    what is missing, stale or corrupt. `compile_wasm` turns the component's
    bytes into wasmtime's serialized form.

    Raises `SandboxUnavailable` if the guest cannot be built."""
    progress = progress or _stderr
    src = guest_source_dir()
    artifacts = GuestArtifacts(cache_root() / "sandbox" / build_key(src))
    with _lock:
        try:
            artifacts.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SandboxUnavailable(f"cannot create the cache directory {artifacts.directory}: {exc}") from exc
        if not force and artifacts.verified("cwasm", artifacts.cwasm):
            return artifacts
        # Build and compile are bounded by their own timeouts; the wait covers both.
        with _build_lock(artifacts.directory, progress, timeout_s=_BUILD_TIMEOUT_S + 120):
            if not force and artifacts.verified("cwasm", artifacts.cwasm):
                return artifacts  # another process built it while this one waited
            return _build(src, artifacts, compile_wasm, progress, force)


def _build(
    src: Path, artifacts: GuestArtifacts, compile_wasm: Callable[[bytes], bytes], progress: Progress, force: bool
) -> GuestArtifacts:
    """Build what is missing or stale, then compile it; the caller holds the build lock."""
    if force or not artifacts.verified("wasm", artifacts.wasm):
        if artifacts.wasm.exists() and not force:
            progress(f"the cached sandbox guest in {artifacts.directory} is corrupt; rebuilding it")
        progress("building the sandbox guest (first use; about 15 s)…")
        t0 = time.monotonic()
        tmp = artifacts.directory / f"build-{os.getpid()}.wasm"
        try:
            _componentize(src, tmp)
            os.replace(tmp, artifacts.wasm)
        finally:
            tmp.unlink(missing_ok=True)
        artifacts.record("wasm", artifacts.wasm)
        progress(f"built the sandbox guest in {time.monotonic() - t0:.1f} s")
    progress("compiling the sandbox guest…")
    t0 = time.monotonic()
    try:
        serialized = compile_wasm(artifacts.wasm.read_bytes())
    except Exception as exc:  # wasmtime rejected the component: rebuild next time
        artifacts.wasm.unlink(missing_ok=True)
        raise SandboxUnavailable(f"compiling the sandbox guest failed: {exc}") from exc
    _write_atomic(artifacts.cwasm, serialized)
    artifacts.record("cwasm", artifacts.cwasm)
    progress(f"compiled the sandbox guest in {time.monotonic() - t0:.1f} s; cached in {artifacts.directory}")
    return artifacts
