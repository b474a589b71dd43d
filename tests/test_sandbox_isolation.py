"""Abuse of the wasm sandbox: each is contained with a typed error, and the
sandbox still serves the next run."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.abc
import pytest

from codemode import (
    BatchLimitExceeded,
    Limits,
    MemoryLimitExceeded,
    RunTimeout,
    Sandbox,
    SandboxCrashed,
    Tool,
    ToolCallLimitExceeded,
    ToolResultTooLarge,
    UncaughtException,
    UnknownTool,
)

pytestmark = pytest.mark.anyio


async def _echo(x: Any = None) -> Any:
    return x


async def _huge(n: int) -> str:
    return "x" * n


async def _hang() -> None:
    await anyio.sleep(3600)


TOOLS = [
    Tool(name="echo", fn=_echo, input_schema={"type": "object", "properties": {"x": {}}}),
    Tool(name="huge", fn=_huge, input_schema={"type": "object", "properties": {"n": {"type": "integer"}}}),
    Tool(name="hang", fn=_hang),
]


async def run(code: str, **limits: Any):
    sandbox = Sandbox()
    result = await sandbox.run(code, tools=TOOLS, limits=Limits(**limits) if limits else None)
    # Whatever happened, the next run works and sees a fresh interpreter.
    healthy = await sandbox.run("await tools.echo(x=[1, 2])", tools=TOOLS)
    assert healthy.ok and healthy.value == [1, 2], healthy.error
    return result


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    pass",
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
        "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')",
        "x = 10 ** 10 ** 8\nlen(str(x))",
        "import time\ntime.sleep(3600)",
    ],
)
async def test_runaway_code_is_stopped_by_the_timeout(code: str) -> None:
    t0 = time.monotonic()
    result = await run(code, timeout=1.0)
    assert isinstance(result.error, RunTimeout), result.error
    assert result.error.code == "timeout"
    assert time.monotonic() - t0 < 4


async def test_a_hanging_tool_call_is_cut_by_the_deadline() -> None:
    t0 = time.monotonic()
    result = await run("await tools.hang()", timeout=1.0)
    assert isinstance(result.error, RunTimeout)
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(512 * 1024 ** 2)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10 * 1024 * 1024))",
    ],
)
async def test_a_memory_bomb_hits_the_memory_limit(code: str) -> None:
    result = await run(code, memory=64 * 1024 * 1024, timeout=10)
    assert isinstance(result.error, MemoryLimitExceeded), result.error
    assert result.error.code == "memory_limit"


async def test_deep_recursion_with_a_raised_limit_is_contained() -> None:
    code = "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)"
    result = await run(code, timeout=10)
    assert isinstance(result.error, (SandboxCrashed, UncaughtException)), result.error
    if isinstance(result.error, UncaughtException):
        assert result.error.exc_type in ("RecursionError", "MemoryError")


async def test_a_print_flood_is_truncated() -> None:
    result = await run("while True:\n    print('spam' * 1000)", timeout=1.0, max_stdout=10_000)
    assert isinstance(result.error, RunTimeout)
    assert len(result.stdout) < 11_000


async def test_a_huge_result_is_truncated() -> None:
    result = await run("['x' * 1000] * 100_000", max_result=10_000)
    assert result.ok and result.value_truncated
    assert len(result.value) < 11_000


async def test_host_files_env_network_and_processes_are_out_of_reach() -> None:
    code = (
        "import os\n"
        "out = {'env': dict(os.environ)}\n"
        "for path in ('/etc/passwd', '/proc/self/environ', os.path.expanduser('~/.ssh/id_rsa')):\n"
        "    try:\n"
        "        open(path).read()\n"
        "        out[path] = 'READ'\n"
        "    except OSError as e:\n"
        "        out[path] = type(e).__name__\n"
        "try:\n"
        "    out['listdir'] = os.listdir('/')\n"
        "except OSError as e:\n"
        "    out['listdir'] = type(e).__name__\n"
        "try:\n"
        "    import subprocess\n"
        "    out['subprocess'] = repr(subprocess.run(['id'], capture_output=True))\n"
        "except Exception as e:\n"
        "    out['subprocess'] = type(e).__name__\n"
        "for mod in ('ctypes', '_ctypes', 'multiprocessing'):\n"
        "    try:\n"
        "        __import__(mod)\n"
        "        out[mod] = 'imported'\n"
        "    except ImportError:\n"
        "        out[mod] = 'ImportError'\n"
        "for name in ('system', 'fork', 'execv', 'popen'):\n"
        "    try:\n"
        "        out[name] = repr(getattr(os, name)('true'))\n"
        "    except (AttributeError, OSError, TypeError) as e:\n"
        "        out[name] = type(e).__name__\n"
        "out"
    )
    result = await run(code)
    assert result.ok, result.error
    value = result.value
    assert value["env"] == {}
    assert all(value[p] != "READ" for p in ("/etc/passwd", "/proc/self/environ") if p in value)
    assert not any(v == "READ" for v in value.values())
    assert value["listdir"] in ("OSError", "FileNotFoundError", "PermissionError", [])
    for mod in ("ctypes", "_ctypes", "multiprocessing"):
        assert value[mod] == "ImportError", (mod, value[mod])
    assert value["subprocess"] in (
        "OSError",
        "ImportError",
        "RuntimeError",
        "AttributeError",
        "NotImplementedError",
        "PermissionError",
        "FileNotFoundError",
    ), value["subprocess"]
    for name in ("system", "fork", "execv", "popen"):
        assert value[name] in ("AttributeError", "OSError", "TypeError", "-1"), (name, value[name])


async def test_the_guest_cannot_open_a_connection_to_the_host() -> None:
    accepted: list[object] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve() -> None:
        async def handle(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)
            await stream.aclose()

        await listener.serve(handle)

    code = (
        "import socket\n"
        "out = []\n"
        "for family in (socket.AF_INET, socket.AF_INET6):\n"
        "    try:\n"
        "        s = socket.socket(family, socket.SOCK_STREAM)\n"
        f"        s.connect(('127.0.0.1' if family == socket.AF_INET else '::1', {port}))\n"
        "        out.append('connected')\n"
        "    except Exception as e:\n"
        "        out.append(type(e).__name__)\n"
        "try:\n"
        f"    socket.create_connection(('localhost', {port}), timeout=1)\n"
        "    out.append('connected')\n"
        "except Exception as e:\n"
        "    out.append(type(e).__name__)\n"
        "out"
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        result = await run(code)
        tg.cancel_scope.cancel()
    assert result.ok, result.error
    assert "connected" not in result.value
    assert accepted == []


async def test_introspection_walks_gain_nothing() -> None:
    code = (
        "import sys\n"
        "found = {}\n"
        "for cls in ().__class__.__base__.__subclasses__():\n"
        "    init = getattr(cls, '__init__', None)\n"
        "    g = getattr(init, '__globals__', None)\n"
        "    if isinstance(g, dict):\n"
        "        for key in ('system', 'popen', 'open'):\n"
        "            if key in g:\n"
        "                found[cls.__name__ + '.' + key] = g[key]\n"
        "results = []\n"
        "for name, fn in list(found.items())[:20]:\n"
        "    try:\n"
        "        if name.endswith('open'):\n"
        "            fn('/etc/passwd').read()\n"
        "            results.append(name + ' READ')\n"
        "        else:\n"
        "            results.append(name + ' ' + repr(fn('id')))\n"
        "    except Exception as e:\n"
        "        results.append(name + ' ' + type(e).__name__)\n"
        "frames = []\n"
        "f = sys._getframe()\n"
        "while f is not None:\n"
        "    frames.append(f.f_code.co_filename)\n"
        "    f = f.f_back\n"
        "def gen():\n"
        "    yield 1\n"
        "g = gen()\n"
        "frames.append(g.gi_frame.f_code.co_filename)\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError as e:\n"
        "    tb = e.__traceback__\n"
        "    while tb is not None:\n"
        "        frames.append(tb.tb_frame.f_code.co_filename)\n"
        "        tb = tb.tb_next\n"
        "{'results': results, 'frames': frames}"
    )
    result = await run(code)
    assert result.ok, result.error
    assert not [r for r in result.value["results"] if r.endswith("READ") or r.endswith(" 0")]
    # Walking frames only ever reaches the guest's own runtime, never the host.
    assert all(not name.startswith("/work") and "site-packages/codemode" not in name for name in result.value["frames"])


async def test_patching_the_guest_runtime_cannot_reach_tools_not_given() -> None:
    code = (
        "import sys\n"
        "rt = sys.modules['runtime']\n"
        "loop_cls = rt.HostLoop\n"
        "await rt._call_tool('tools', 'delete_everything', {})\n"
    )
    result = await run(code)
    assert isinstance(result.error, UnknownTool)


async def test_state_from_one_run_is_invisible_to_the_next() -> None:
    sandbox = Sandbox()
    first = await sandbox.run(
        "import builtins, json, sys\n"
        "builtins.leak = 'secret'\n"
        "json.dumps = lambda *a, **k: 'patched'\n"
        "sys.modules['math'].pi = 3\n"
        "class Ghost:\n"
        "    def __del__(self):\n"
        "        print('ghost')\n"
        "keep = Ghost()\n"
        "sys.modules['runtime'].ToolError = None\n"
        "'set'",
        tools=TOOLS,
    )
    assert first.value == "set"
    second = await sandbox.run(
        "import builtins, json, math\n"
        "[getattr(builtins, 'leak', None), json.dumps([1]), math.pi > 3.14, 'keep' in globals()]",
        tools=TOOLS,
    )
    assert second.value == [None, "[1]", True, False]
    assert "ghost" not in second.stdout


@pytest.mark.parametrize(
    "ending, expected",
    [
        ("41 + 1", 42),
        ("1 / 0", ZeroDivisionError),
    ],
)
async def test_builtins_broken_by_the_code_do_not_break_its_answer(ending: str, expected: object) -> None:
    # The runtime puts the answer together after the model's code, with the
    # builtins that code may have replaced or deleted.
    code = (
        "import builtins\n"
        "print('still here')\n"
        "for name in ('len', 'isinstance', 'str', 'repr', 'type', 'dict', 'list', 'getattr', 'hasattr'):\n"
        "    setattr(builtins, name, None)\n"
        "del builtins.min\n" + ending
    )
    result = await run(code)
    assert result.stdout == "still here\n", result
    if expected is ZeroDivisionError:
        assert isinstance(result.error, UncaughtException), result.error
        assert result.error.exc_type == "ZeroDivisionError"
    else:
        assert result.ok and result.value == expected, result.error


async def test_too_many_tool_calls_end_the_run() -> None:
    code = "for i in range(100):\n    await tools.echo(x=i)"
    result = await run(code, max_tool_calls=10)
    assert isinstance(result.error, ToolCallLimitExceeded)
    assert len(result.tool_calls) == 10


async def test_a_batch_over_the_limit_ends_the_run() -> None:
    code = "import asyncio\nawait asyncio.gather(*[tools.echo(x=i) for i in range(50)])"
    result = await run(code, max_batch=20)
    assert isinstance(result.error, BatchLimitExceeded)
    assert result.tool_calls == []


async def test_a_limit_cannot_be_caught_by_the_model() -> None:
    code = (
        "n = 0\n"
        "for i in range(100):\n"
        "    try:\n"
        "        await tools.echo(x=i)\n"
        "    except BaseException:\n"
        "        n += 1\n"
        "n"
    )
    result = await run(code, max_tool_calls=5)
    assert isinstance(result.error, ToolCallLimitExceeded)


async def test_an_oversized_tool_result_is_a_catchable_tool_error() -> None:
    code = "try:\n    await tools.huge(n=5_000_000)\nexcept ToolError as e:\n    r = e.code\nr"
    result = await run(code, max_tool_result_bytes=100_000)
    assert result.value == "tool_result_too_large"
    uncaught = await run("await tools.huge(n=5_000_000)", max_tool_result_bytes=100_000)
    assert isinstance(uncaught.error, ToolResultTooLarge)


async def test_runs_do_not_block_each_other() -> None:
    sandbox = Sandbox()
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append((await sandbox.run(f"await tools.echo(x={i})", tools=TOOLS)).value)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: sandbox.run("while True:\n    pass", tools=TOOLS, limits=Limits(timeout=2)))
            for i in range(6):
                tg.start_soon(one, i)
    assert sorted(results) == list(range(6))


@pytest.mark.parametrize("kind", ["wasm", "restricted"])
async def test_cancelling_a_run_stops_a_spinning_guest_within_a_tick(kind: str) -> None:
    import threading

    from codemode._sandbox.runner import _backend

    inner = _backend(kind)
    entered, returned = threading.Event(), threading.Event()

    class Recording:
        name = inner.name

        def load(self) -> None:
            inner.load()

        def execute(self, *args: Any) -> Any:
            entered.set()
            try:
                return inner.execute(*args)
            finally:
                returned.set()

    sandbox = Sandbox(backend=Recording())
    await sandbox.load()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: sandbox.run("while True:\n    pass", limits=Limits(timeout=30)))
        with anyio.fail_after(10):
            while not entered.is_set():
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    with anyio.fail_after(2):
        while not returned.is_set():
            await anyio.sleep(0.01)
