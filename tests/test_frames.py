"""Tool-call frames from a hostile guest: the guest calls the host import
`call-tools` itself (as crafted bytecode or a patched runtime could), with
frames of the wrong shape or size. Real wasm; the memory test runs in its own
process and measures its peak RSS."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import anyio
import pytest

from codemode import BatchLimitExceeded, Limits, MalformedToolCalls, Sandbox, Tool

pytestmark = pytest.mark.anyio


_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "text": {"type": "string"}}}


def _counting_tool() -> tuple[Tool, list[int]]:
    calls: list[int] = []

    def count(n: int = 0, text: str = "") -> int:
        calls.append(n)
        return len(calls)

    return Tool(name="count", fn=count, input_schema=_SCHEMA), calls


def _send(frame: object) -> str:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return f"import wit_world\nwit_world.call_tools({text!r})"


_GOOD_CALL = {"ns": "tools", "tool": "count", "args": {"n": 1}}


@pytest.mark.parametrize(
    "frame",
    [
        [{"id": "1", "call": _GOOD_CALL}],  # a string id
        [{"id": 1, "call": _GOOD_CALL}, {"id": 1, "call": _GOOD_CALL}],  # repeated ids
        [{"id": 1.5, "call": _GOOD_CALL}],
        [{"id": True, "call": _GOOD_CALL}],
        [{"id": 1, "call": {**_GOOD_CALL, "tool": ["count"]}}],
        [{"id": 1, "call": {**_GOOD_CALL, "args": [1]}}],
        [{"id": 1, "call": _GOOD_CALL}, "junk"],
        {"id": 1, "call": _GOOD_CALL},
        [],
        "[{not json",
        "[" * 5000 + "]" * 5000,
    ],
)
async def test_a_malformed_frame_runs_nothing_and_ends_the_run_with_one_log_line(
    frame: object, caplog: pytest.LogCaptureFixture
) -> None:
    from codemode._sandbox import frames

    frames._bad_frames._next = 0.0  # a fresh rate-limit window for this test
    tool, calls = _counting_tool()
    with caplog.at_level(logging.WARNING, logger="codemode"):
        result = await Sandbox().run(_send(frame), tools=[tool])
    assert isinstance(result.error, MalformedToolCalls), result.error
    assert result.error.code == "malformed_tool_calls"
    assert calls == []
    records = [r for r in caplog.records if r.name == "codemode"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()


async def test_bad_frames_log_at_most_a_line_a_second(caplog: pytest.LogCaptureFixture) -> None:
    from codemode._sandbox import frames

    frames._bad_frames._next = 0.0
    code = "import wit_world, time\nt0 = time.monotonic()\nfor _ in range(500):\n    wit_world.call_tools('[1]')\n"
    code += "time.monotonic() - t0"
    with caplog.at_level(logging.WARNING, logger="codemode"):
        t0 = anyio.current_time()
        result = await Sandbox().run(code)
        elapsed = anyio.current_time() - t0
    assert isinstance(result.error, MalformedToolCalls), result.error
    lines = [r.getMessage() for r in caplog.records if r.name == "codemode"]
    assert 1 <= len(lines) <= 1 + int(elapsed), lines
    # The next line after a quiet second says how many were left out.
    frames._bad_frames._next = 0.0
    with caplog.at_level(logging.WARNING, logger="codemode"):
        await Sandbox().run(_send("[1]"))
    assert "more since the last line" in caplog.records[-1].getMessage()


async def test_a_frame_over_its_size_limit_is_refused_before_anything_runs() -> None:
    tool, calls = _counting_tool()
    frame = [{"id": 1, "call": {**_GOOD_CALL, "args": {"n": 1, "text": "x" * 5000}}}]
    result = await Sandbox().run(_send(frame), tools=[tool], limits=Limits(max_batch_bytes=4000))
    assert isinstance(result.error, BatchLimitExceeded), result.error
    assert calls == []
    # The same call under a larger limit runs.
    ok = await Sandbox().run(_send(frame), tools=[tool], limits=Limits(max_batch_bytes=100_000))
    assert ok.error is None and calls == [1], ok.error


async def test_ordinary_tool_calls_still_run_near_the_frame_limit() -> None:
    # An honest gather whose arguments are one big string passes; the check
    # counts what parsing costs, not the characters inside strings.
    seen: list[int] = []

    def size(text: str) -> int:
        seen.append(len(text))
        return len(text)

    tools = [Tool(name="size", fn=size, input_schema={"type": "object", "properties": {"text": {"type": "string"}}})]
    code = (
        "import asyncio, json\n"
        "doc = json.dumps([{'k': [i, i, i]} for i in range(60000)])\n"
        "await asyncio.gather(tools.size(text=doc), tools.size(text='x'))"
    )
    result = await Sandbox().run(code, tools=tools, limits=Limits(max_batch_bytes=2_000_000))
    assert result.error is None, result.error
    assert result.value[1] == 1 and result.value[0] > 1_000_000


_PEAK = textwrap.dedent("""
    import resource, sys, anyio
    from codemode import Limits, Sandbox

    SHAPES = {
        "lists": "'[' + '[],' * (SIZE // 3) + '[]]'",
        "deep": "'[' * SIZE",
        "dicts": "'[' + '{\\"\\":0},' * (SIZE // 7) + '{}]'",
        "args": "'[{\\"id\\":1,\\"call\\":{\\"ns\\":\\"t\\",\\"tool\\":\\"f\\",\\"args\\":{\\"a\\":[' + '1,' * (SIZE // 2 - 40) + '1]}}}]'",
        "wide": "'[{\\"id\\":1,\\"call\\":{\\"ns\\":\\"t\\",\\"tool\\":\\"f\\",\\"args\\":{\\"a\\":\\"\\U0001F600' + 'a' * (SIZE - 80) + '\\"}}}]'",
    }

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def main(shape, size, cap):
        # No resident slots: every run's guest memory is faulted in afresh, so
        # the baseline and the measured run cost the guest the same.
        sandbox = Sandbox(pool_warm=0, pool_max=4)
        limits = Limits(memory=1 << 30, timeout=120, max_batch_bytes=cap)
        build = f"SIZE = {size}\\ns = {SHAPES[shape]}\\nimport wit_world\\n"
        # Baseline: the guest builds the frame and sends it under a tiny cap, so
        # its own memory and the copy wasmtime makes of the frame are in it.
        # Over the cap, it builds the frame and does not send it.
        send = "wit_world.call_tools(s)[:200]"
        baseline = build + (send if size <= cap else "len(s)")
        for _ in range(2):
            base = await sandbox.run(baseline, limits=limits.replace(max_batch_bytes=1000))
            assert base.error is None or base.error.code == "batch_limit", base.error
        before = peak_mib()
        sent = await sandbox.run(build + send, limits=limits)
        print(round(peak_mib() - before, 2), getattr(sent.error, "code", None))

    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
""")


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ("lists", 70_000_000),
        ("lists", 3_900_000),
        ("deep", 3_900_000),
        ("dicts", 3_900_000),
        ("args", 3_900_000),
        ("wide", 1_000_000),
        ("wide", 3_900_000),
    ],
)
def test_host_memory_for_any_frame_stays_under_three_times_the_cap(shape: str, size: int) -> None:
    # Before the checks, a 70 MB frame of `[],` cost the host 1.75 GB and a
    # 3.9 MB one 114 MB. Now a frame over the cap costs the guest's copy to send
    # it and the one wasmtime makes out of the guest before the host sees it
    # (the guest's memory limit bounds both), and any frame within the cap at
    # most 3x the cap in all (wasmtime's copy included), parsed or refused.
    cap = 4_000_000
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _PEAK, shape, str(size), str(cap)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    added_mib, code = done.stdout.split()
    frame_mib, cap_mib = size / 2**20, cap / 2**20
    if size > cap:
        assert float(added_mib) < 2 * frame_mib + 3 * cap_mib, (shape, size, added_mib, code)
    else:
        assert float(added_mib) + frame_mib < 3 * cap_mib, (shape, size, added_mib, code)
    assert code in {"batch_limit", "None"}, code
