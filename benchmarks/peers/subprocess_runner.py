"""`python -c` as a sandbox: a fresh interpreter process per program.

Its external-function mechanism is a pipe: the program's `noop(x=...)` writes a
JSON request line to stdout and blocks on a JSON reply line from stdin, which
is what a process-per-run sandbox does for tool calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RUNNER", "run"]

RUNNER = r"""
import ast, json, sys
def _call(name, **kwargs):
    sys.stdout.write(json.dumps({"call": name, "args": kwargs}) + "\n")
    sys.stdout.flush()
    return json.loads(sys.stdin.readline())["result"]
def noop(x=0):
    return _call("noop", x=x)
tree = ast.parse(sys.argv[1])
last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
ns = {"noop": noop, "__name__": "__main__"}
exec(compile(tree, "<program>", "exec"), ns)
value = eval(compile(ast.Expression(last.value), "<program>", "eval"), ns) if last else None
try:
    peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
except (OSError, StopIteration, ValueError):
    peak = None
sys.stdout.write(json.dumps({"result": value, "peak_rss_kb": peak}, default=repr) + "\n")
"""


def run(program: str, tools: dict[str, Callable[..., Any]] | None = None) -> tuple[Any, float, int | None]:
    """Run `program` in a fresh `python -c` process; its value, the wall time
    (process start to exit) and the child's peak RSS in kB (VmHWM: see
    memprobe.py for why not `ru_maxrss`).

    Raises `RuntimeError` with the child's last stderr line if it fails."""
    tools = tools or {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    value, peak, done = None, None, False
    for line in proc.stdout:
        message = json.loads(line)
        if "call" in message:
            proc.stdin.write(json.dumps({"result": tools[message["call"]](**message["args"])}) + "\n")
            proc.stdin.flush()
        else:
            value, peak, done = message["result"], message.get("peak_rss_kb"), True
            break
    proc.stdin.close()
    stderr = proc.stderr.read()
    proc.wait()
    elapsed = time.perf_counter() - t0
    proc.stdout.close()
    proc.stderr.close()
    if not done or proc.returncode != 0:
        raise RuntimeError((stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    return value, elapsed, peak
