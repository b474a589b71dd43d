"""The `codemode` command.

Exit codes, for scripts:
    0  the run succeeded (or the command did what it was asked)
    1  the code ran and failed (its error is printed, or in the JSON)
    2  usage error: bad arguments, unreadable input file
    3  codemode could not do its part: sandbox unavailable, bad configuration
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ._errors import CodemodeError, ConfigError, SandboxUnavailable
from ._limits import Limits
from ._result import RunResult

__all__ = ["main"]

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class _UsageError(Exception):
    pass


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    d = Limits()
    p.add_argument("--backend", choices=["wasm", "restricted"], default="wasm",
                   help="wasm (default): fresh WebAssembly instance per run; restricted: in-process, NOT a security boundary")
    p.add_argument("--timeout", type=float, default=d.timeout, help=f"seconds for the whole run (default {d.timeout:g})")
    p.add_argument("--memory-mb", type=int, default=d.memory // (1024 * 1024),
                   help=f"guest memory cap in MiB (default {d.memory // (1024 * 1024)})")
    p.add_argument("--max-tool-calls", type=int, default=d.max_tool_calls,
                   help=f"tool calls per run (default {d.max_tool_calls})")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--trace", action="store_true", help="with --json: include the tool-call log")


def _limits(args: argparse.Namespace) -> Limits:
    try:
        return Limits(timeout=args.timeout, memory=args.memory_mb * 1024 * 1024, max_tool_calls=args.max_tool_calls)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codemode",
        description="Run model-written Python that composes tools, in a WebAssembly sandbox.",
        epilog="Exit codes: 0 ok, 1 the code failed, 2 usage error, 3 sandbox or configuration unavailable.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="run a demo program against built-in demo tools",
                          description="Run a demo program (with a concurrent gather) against built-in demo tools.")
    _add_limit_flags(demo)

    run = sub.add_parser("run", help="run a program (file or stdin) in the sandbox",
                         description="Run a program in the sandbox and print its result (the value of its last expression).")
    run.add_argument("program", nargs="?", default="-", help="a Python file, or - for stdin (default)")
    run.add_argument("--demo-tools", action="store_true", help="give the program the built-in demo tools as `tools`")
    _add_limit_flags(run)

    sandbox = sub.add_parser("sandbox", help="manage the sandbox guest", description="Manage the sandbox guest.")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    build = sandbox_sub.add_parser("build", help="build and cache the guest now (otherwise done on first use)",
                                   description="Build the WebAssembly guest and cache its compiled form.")
    build.add_argument("--force", action="store_true", help="rebuild even if a valid cached build exists")
    return parser


def _read_program(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _print_result(result: RunResult, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(result.to_dict(trace=args.trace), indent=2, ensure_ascii=False))
        return EXIT_OK if result.ok else EXIT_RUN_FAILED
    if result.stdout:
        sys.stderr.write(result.stdout if result.stdout.endswith("\n") else result.stdout + "\n")
    if result.error is not None:
        print(f"error [{result.error.code}]: {result.error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    value = result.value
    print(value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False))
    return EXIT_OK


async def _run(code: bytes | str, args: argparse.Namespace, tools: list[Any]) -> RunResult:
    from ._sandbox import Sandbox

    async with Sandbox(backend=args.backend, limits=_limits(args)) as sandbox:
        return await sandbox.run(code, tools=tools)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import DEMO_PROGRAM, demo_tools

    if not args.json:
        print("# program (tools: tools.list_cities, tools.forecast; each call takes 0.2 s)", file=sys.stderr)
        print(DEMO_PROGRAM, file=sys.stderr)
    result = anyio.run(_run, DEMO_PROGRAM, args, demo_tools())
    code = _print_result(result, args)
    if not args.json:
        batches = len({c.batch for c in result.tool_calls})
        print(f"# {len(result.tool_calls)} tool calls in {batches} host crossings; "
              f"run took {result.timings.total_s:.3f} s ({result.backend} backend)", file=sys.stderr)
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    tools: list[Any] = []
    if args.demo_tools:
        from ._demo import demo_tools

        tools = demo_tools()
    return _print_result(anyio.run(_run, _read_program(args.program), args, tools), args)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from ._wasm import WasmBackend

    WasmBackend().load(force_build=args.force)
    print("codemode: the sandbox guest is built and cached", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"demo": _cmd_demo, "run": _cmd_run, "sandbox": _cmd_sandbox}
    try:
        return handlers[args.command](args)
    except _UsageError as exc:
        print(f"codemode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SandboxUnavailable, ConfigError) as exc:
        print(f"codemode: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except CodemodeError as exc:
        print(f"codemode: [{exc.code}] {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
