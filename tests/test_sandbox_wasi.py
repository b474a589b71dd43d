"""A guest blocked in a WASI wait ends at its deadline or its cancellation, and
gives back its worker thread: the host serves the guest's WASI itself
(codemode/_sandbox/wasi.py), so every wait is clamped on the host. Real wasm,
through `Sandbox.run`, and through the real HTTP service."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from test_http import serving
from wasmtime import Engine
from wasmtime.component import Component

from codemode import CodeMode, Limits, RunCancelled, RunTimeout, Sandbox, SandboxCrashed
from codemode._sandbox import wasi
from codemode._sandbox.epoch import RunGuard
from codemode._sandbox.runner import _backend
from codemode._sandbox.wasm import WasmTrap

pytestmark = pytest.mark.anyio

# Each waits 6 s, far past the 1 s timeout the tests give it.
BLOCKING = {
    "select.select": "import select\nselect.select([], [], [], 6)",
    "select.poll": "import select\nselect.poll().poll(6000)",
    "selectors": "import selectors\nselectors.DefaultSelector().select(6)",
    "time.sleep": "import time\ntime.sleep(6)",
    "the runtime's saved sleep": "import runtime\nruntime._real_sleep(6)",
    "time.sleep, the runtime's deadline field cleared": (
        "import runtime, time\nruntime._run_state.deadline = None\ntime.sleep(6)"
    ),
    "asyncio.sleep": "import asyncio\nawait asyncio.sleep(6)",
}


class Watched:
    """The process's wasm backend, noting when each `execute` returns: the
    moment its worker thread is free again. (`Sandbox.run` itself may answer
    earlier: it abandons a thread a grace period after the deadline.)"""

    name = "wasm"

    def __init__(self) -> None:
        self.inner = _backend("wasm")
        self.returned = threading.Event()
        self.errors: list[Exception] = []

    def load(self) -> None:
        self.inner.load()

    def execute(self, request_json: str, host_call: Any, limits: Limits, guard: RunGuard) -> tuple[str, float]:
        try:
            return self.inner.execute(request_json, host_call, limits, guard)
        except WasmTrap as exc:
            self.errors.append(exc.error)
            raise
        finally:
            self.returned.set()


@pytest.mark.parametrize("code", BLOCKING.values(), ids=BLOCKING.keys())
async def test_a_blocked_guest_ends_at_its_deadline_and_frees_its_thread(code: str) -> None:
    backend = Watched()
    async with Sandbox(backend=backend) as sandbox:
        # Before the host owned these waits, the run answered only at its
        # deadline plus the 1 s grace, and the thread stayed in the guest for 6 s.
        with anyio.fail_after(1.8):
            result = await sandbox.run(code, limits=Limits(timeout=1))
        assert isinstance(result.error, RunTimeout), result.error
        assert backend.returned.is_set()  # the thread was free when the run answered
        assert [type(e) for e in backend.errors] == [RunTimeout]


@pytest.mark.parametrize("code", BLOCKING.values(), ids=BLOCKING.keys())
async def test_cancelling_the_caller_frees_the_thread_of_a_blocked_guest(code: str) -> None:
    backend = Watched()
    async with Sandbox(backend=backend) as sandbox:
        with anyio.move_on_after(0.3) as scope:
            await sandbox.run(code, limits=Limits(timeout=30))
        assert scope.cancelled_caught
        with anyio.fail_after(1):
            while not backend.returned.is_set():
                await anyio.sleep(0.005)
        assert [type(e) for e in backend.errors] == [RunCancelled]


async def test_ordinary_programs_see_clocks_randomness_and_nothing_else() -> None:
    code = (
        "import asyncio, datetime, os, random, socket, sys, time, uuid\n"
        "print('hello')\n"
        "written = os.write(1, b'raw stdout\\n')\n"
        "t0 = time.monotonic()\n"
        "await asyncio.gather(*(asyncio.sleep(0.05) for _ in range(10)))\n"
        "waited = time.monotonic() - t0\n"
        "try:\n"
        "    open('/etc/passwd')\n"
        "    opened = 'read'\n"
        "except FileNotFoundError:\n"
        "    opened = 'FileNotFoundError'\n"
        "try:\n"
        "    socket.socket()\n"
        "    sock = 'created'\n"
        "except OSError as exc:\n"
        "    sock = type(exc).__name__\n"
        "{\n"
        "    'year': datetime.datetime.now().year, 'epoch': time.time() > 1.7e9,\n"
        "    'random': 0 <= random.random() < 1, 'uuid': len({uuid.uuid4() for _ in range(3)}),\n"
        "    'urandom': len(set(os.urandom(64))), 'waited': 0.05 <= waited < 0.5,\n"
        "    'open': opened, 'socket': sock, 'environ': dict(os.environ),\n"
        "    'written': written, 'stdin': sys.stdin.read(),\n"
        "}"
    )
    async with Sandbox() as sandbox:
        result = await sandbox.run(code)
    assert result.ok, result.error
    assert result.stdout == "hello\n"
    value = result.value
    assert value["year"] >= 2025 and value["epoch"] and value["random"] and value["waited"]
    assert value["uuid"] == 3 and value["urandom"] > 32  # 64 random bytes: about 57 distinct
    assert value["open"] == "FileNotFoundError" and value["socket"] == "PermissionError"
    assert value["environ"] == {} and value["stdin"] == ""
    assert value["written"] == 11  # accepted, and discarded: not in stdout


async def test_a_guest_that_exits_the_process_says_so() -> None:
    result = await Sandbox().run("import os\nos._exit(3)")
    assert isinstance(result.error, SandboxCrashed)
    assert wasi.EXIT_TRAP in result.error.message, result.error.message


def test_the_guest_imports_only_what_the_host_serves() -> None:
    backend = _backend("wasm")
    backend.load()
    for tier in backend._tiers:  # type: ignore[attr-defined]
        loaded = tier.loaded
        assert wasi.check_imports(loaded.component, loaded.engine, host_functions=frozenset({"call-tools"})) == []


def test_a_component_needing_another_wasi_or_more_of_it_is_refused() -> None:
    engine = Engine()
    component = Component(
        engine,
        """(component
             (import "wasi:io/poll@0.2.10" (instance (export "poll" (func))))
             (import "wasi:cli/environment@0.2.9" (instance (export "get-initial-cwd" (func))))
             (import "wasi:filesystem/types@0.2.9" (instance
               (export "descriptor" (type (sub resource)))
               (export "[method]descriptor.stat" (func (param "self" (borrow 0))))
               (export "[static]descriptor.open" (func))))
             (import "sneaky" (func)))""",
    )
    # A method of a descriptor is unreachable (the guest never gets one): left
    # to a trap. A function reachable without a handle is not.
    assert wasi.check_imports(component, engine, host_functions=frozenset({"call-tools"})) == [
        "wasi:io/poll@0.2.10 (this host serves WASI 0.2.9)",
        "wasi:cli/environment@0.2.9#get-initial-cwd",
        "wasi:filesystem/types@0.2.9#[static]descriptor.open",
        "sneaky",
    ]


class ServeLike(CodeMode):
    """As `codemode serve` makes it: the sandbox's gate matches the service's
    16 running slots, so every admitted run enters the guest."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(sandbox=Sandbox(max_concurrency=16), **kwargs)


async def test_a_flood_of_blocked_runs_over_http_leaves_the_service_answering() -> None:
    """256 runs blocked in `select` with a 0.2 s timeout: each gives back its
    thread and slot at its deadline, so `1 + 1` is answered at once after them.
    (Before, each kept its thread and one of the 256 pool slots for 240 s: the
    flood took minutes, and `1 + 1` then waited for a slot until it timed out.)"""
    flood = {"code": "import select\nselect.select([], [], [], 240)", "limits": {"timeout": 0.2}}
    async with serving(cls=ServeLike, max_concurrency=16, queue=256) as client:
        answers: list[dict[str, Any]] = []

        async def post() -> None:
            response = await client.post("/v1/execute", json=flood)
            assert response.status_code == 200, response.text
            answers.append(response.json())

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(256):
                    tg.start_soon(post)
        with anyio.fail_after(5):
            after = (await client.post("/v1/execute", json={"code": "1 + 1"})).json()

    assert len(answers) == 256
    assert all(a["ok"] is False and a["error"]["code"] == "timeout" for a in answers), answers[:3]
    assert after["ok"] is True and after["value"] == 2
