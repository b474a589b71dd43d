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
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
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
    p.add_argument(
        "--backend",
        choices=["wasm", "restricted"],
        default="wasm",
        help="wasm (default): fresh WebAssembly instance per run; restricted: in-process, NOT a security boundary",
    )
    _add_run_limits(p)
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--trace", action="store_true", help="the tool-call log: in the JSON with --json, else on stderr")


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: a finite number above zero. argparse names the flag the
    user typed in its message (`argument --timeout: ...`) and exits 2."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(
                f"must be a positive {'whole ' if kind is int else ''}number, got {text!r}"
            )
        return value

    return parse


def _env(text: str, field: str, env: bool) -> str:
    """Help text that names the flag's environment variable (serve and mcp read them)."""
    return f"{text} [env CODEMODE_{field.upper()}]" if env else text


def _add_run_limits(p: argparse.ArgumentParser, *, env: bool = False) -> None:
    # With env=True the defaults are None: the settings object then knows a flag
    # was not given and takes the variable, else its own default (the same values).
    d = Limits()
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=None if env else d.timeout,
        help=_env(f"seconds for the whole run (default {d.timeout:g})", "timeout", env),
    )
    p.add_argument(
        "--memory-mb",
        type=_positive(int),
        default=None if env else d.memory // (1024 * 1024),
        help=_env(f"guest memory cap in MiB (default {d.memory // (1024 * 1024)})", "memory_mb", env),
    )
    p.add_argument(
        "--max-tool-calls",
        type=_positive(int),
        default=None if env else d.max_tool_calls,
        help=_env(f"tool calls per run (default {d.max_tool_calls})", "max_tool_calls", env),
    )
    p.add_argument(
        "--pool-warm",
        type=int,
        default=None,
        metavar="N",
        help="sandbox instances kept resident between runs, ~17 MiB each; 0: all on demand "
        "(default $CODEMODE_POOL_WARM, else 3)",
    )
    p.add_argument(
        "--pool-max",
        type=int,
        default=None,
        metavar="N",
        help="sandbox instances alive at once (default $CODEMODE_POOL_MAX, else 256)",
    )


def _add_config_flag(p: argparse.ArgumentParser, *, required: bool = False, env: bool = False) -> None:
    p.add_argument(
        "--config",
        "-c",
        required=required,
        metavar="PATH",
        help=_env("an mcpServers JSON file (as used by Claude Desktop, Cursor, VS Code)", "config", env),
    )
    p.add_argument(
        "--observe-shapes",
        action="store_true",
        default=None if env else False,
        help=_env(
            "record result shapes of tools without an output schema (codemode.observed.json beside "
            "the config) and show them as observed return types in the stubs",
            "observe_shapes",
            env,
        ),
    )
    p.add_argument(
        "--stubs-budget",
        type=int,
        default=None,
        metavar="TOKENS",
        help=_env(
            "put every tool's stubs in the prompt and execute_code's description when they fit this many "
            "tokens, else an index (default 4000; 0: always the index)",
            "stubs_budget",
            True,
        ),
    )


def _add_network_flags(p: argparse.ArgumentParser, *, port: int) -> None:
    # Only serve and mcp have these, and both read the environment too.
    p.add_argument(
        "--host", help=_env("address to bind (default 127.0.0.1; anything else needs --token)", "host", True)
    )
    p.add_argument("--port", type=int, help=_env(f"port (default {port}; 0 picks a free one)", "port", True))
    p.add_argument("--token", help=_env("require `Authorization: Bearer TOKEN`", "token", True))
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help=_env(
            "a browser Origin allowed to call (repeatable; comma-separated in the variable; default: none but "
            "localhost)",
            "allow_origin",
            True,
        ),
    )


def _add_fleet_flags(p: argparse.ArgumentParser, *, holds: str, prefix: str) -> None:
    """`--store`, `--replica-id` and `--lease`: where `holds` live, and this replica in a fleet."""
    p.add_argument(
        "--store",
        metavar="URL",
        help=_env(
            f"{prefix}where {holds} live: 'memory' (this process, the default) or redis://HOST:PORT/DB, shared "
            "by every replica of a fleet (needs pip install 'codemode[redis]')",
            "store",
            True,
        ),
    )
    p.add_argument(
        "--replica-id", help=_env("this replica's name in a fleet (default hostname-pid)", "replica_id", True)
    )
    p.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help=_env(
            f"with --store redis: a replica silent this long is taken for dead; its running {holds.split()[-1]} "
            "fail with replica_lost (default 5)",
            "lease",
            True,
        ),
    )


def _add_backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=["wasm", "restricted"], help=_env("sandbox backend (default wasm)", "backend", True)
    )


def _apply_pool_flags(args: argparse.Namespace) -> None:
    """`--pool-warm` and `--pool-max` become this process's `$CODEMODE_POOL_*`,
    which every Sandbox it makes reads."""
    from ._sandbox.pooling import PoolSettings

    warm, most = getattr(args, "pool_warm", None), getattr(args, "pool_max", None)
    if warm is None and most is None:
        return
    try:
        pool = PoolSettings.resolve(warm=warm, max=most)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    os.environ["CODEMODE_POOL_WARM"] = str(pool.warm)
    os.environ["CODEMODE_POOL_MAX"] = str(pool.max)


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

    demo = sub.add_parser(
        "demo",
        help="run a demo program against built-in demo tools",
        description="Run a demo program (with a concurrent gather) against built-in demo tools.",
    )
    _add_limit_flags(demo)

    demo_server = sub.add_parser(
        "demo-server",
        help="serve one of the demo's MCP servers over stdio",
        description="Serve a bundled demo MCP server over stdio, e.g. from a config: "
        '{"command": "codemode", "args": ["demo-server", "weather"]}.',
    )
    demo_server.add_argument("name", choices=["weather", "notes"], help="which server")

    run = sub.add_parser(
        "run",
        help="run a program (file or stdin) in the sandbox",
        description="Run a program in the sandbox and print its result (the value of its last expression).",
    )
    run.add_argument("program", nargs="?", default="-", help="a Python file, or - for stdin (default)")
    _add_config_flag(run)
    _add_limit_flags(run)

    stubs = sub.add_parser(
        "stubs",
        help="print the typed stubs of the configured tools",
        description="Print the typed Python stubs a model reads (all tools, or the named ones).",
    )
    _add_config_flag(stubs, required=True)
    stubs.add_argument("tools", nargs="*", metavar="NAMESPACE.TOOL", help="only these tools (default: all)")

    search = sub.add_parser(
        "search",
        help="search the configured tools",
        description="Rank the configured tools by how well they match a query (BM25).",
    )
    _add_config_flag(search, required=True)
    search.add_argument("query", help="what the tool should do, in words")
    search.add_argument("--limit", type=_positive(int), default=10, help="at most this many hits (default 10)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")

    pin = sub.add_parser(
        "pin",
        help="pin (or re-approve) the configured tool definitions",
        description="Record a hash of every tool definition in codemode.lock.json beside the config. "
        "Changed definitions are refused until re-approved with --update.",
    )
    _add_config_flag(pin, required=True)
    pin.add_argument("--update", action="store_true", help="re-approve changed definitions and forget removed tools")

    env_note = "Every flag can also be set by the CODEMODE_* variable named in its help; a flag given wins."
    serve = sub.add_parser(
        "serve",
        help="serve code mode over HTTP (FastAPI)",
        description="Serve /v1/execute, /v1/runs, /v1/tools/search, /v1/stubs, /healthz, /metrics.",
        epilog=env_note,
    )
    _add_config_flag(serve, env=True)
    _add_network_flags(serve, port=8000)
    serve.add_argument(
        "--tokens-file",
        metavar="PATH",
        help=_env(
            "accept each token in PATH (one a line: TOKEN [NAME]); a run is seen only by the token that started it",
            "tokens_file",
            True,
        ),
    )
    serve.add_argument(
        "--max-store-mb",
        type=float,
        help=_env(
            "memory for background runs' results and events; the oldest finished runs are forgotten beyond it "
            "(default 256)",
            "max_store_mb",
            True,
        ),
    )
    serve.add_argument(
        "--max-listeners",
        type=int,
        help=_env(
            "event streams (SSE) open at once over all runs, at most 16 per run; more get 429 (default 1024)",
            "max_listeners",
            True,
        ),
    )
    serve.add_argument(
        "--max-concurrency", type=int, help=_env("runs executing at once (default 4)", "max_concurrency", True)
    )
    serve.add_argument(
        "--queue", type=int, help=_env("runs waiting beyond those; more get 429 (default 16)", "queue", True)
    )
    serve.add_argument(
        "--max-body-bytes", type=int, help=_env("request body limit (default 1000000)", "max_body_bytes", True)
    )
    _add_backend_flag(serve)
    _add_fleet_flags(serve, holds="background runs", prefix="")
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        help=_env(
            "seconds runs in flight may take to finish after SIGTERM before they are answered 503 (default 10)",
            "shutdown_grace",
            True,
        ),
    )
    _add_run_limits(serve, env=True)

    mcp = sub.add_parser(
        "mcp",
        help="serve code mode as an MCP server (stdio, or --http)",
        description="Serve the tools search_tools, get_tool_stubs and execute_code over MCP.",
        epilog=env_note,
    )
    _add_config_flag(mcp, env=True)
    mcp.add_argument(
        "--http", action="store_true", default=None, help=_env("serve Streamable HTTP instead of stdio", "http", True)
    )
    _add_network_flags(mcp, port=8765)
    mcp.add_argument(
        "--max-sessions",
        type=int,
        help=_env("with --http: sessions open at once; more get 503 (default 1000)", "max_sessions", True),
    )
    mcp.add_argument(
        "--session-idle",
        type=float,
        metavar="SECONDS",
        help=_env(
            "with --http: a session without a request for this long is closed (default 600)", "session_idle", True
        ),
    )
    mcp.add_argument(
        "--tokens-file",
        metavar="PATH",
        help=_env(
            "with --http: accept each token in PATH (one a line: TOKEN [NAME]); a task is seen only by the token "
            "that started it",
            "tokens_file",
            True,
        ),
    )
    _add_fleet_flags(mcp, holds="execute_code tasks", prefix="with --http: ")
    _add_backend_flag(mcp)
    _add_run_limits(mcp, env=True)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark (tokens | sandbox) from benchmarks/",
        description="Run `python -m benchmarks.NAME ARGS...` from the source checkout. "
        "Pass --quick for a short run; --help after NAME lists its options.",
    )
    bench.add_argument("name", choices=["tokens", "sandbox"], help="which benchmark")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to the benchmark")

    sandbox = sub.add_parser("sandbox", help="manage the sandbox guest", description="Manage the sandbox guest.")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    build = sandbox_sub.add_parser(
        "build",
        help="build and cache the guest now (otherwise done on first use)",
        description="Build the WebAssembly guest and cache its compiled form.",
    )
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
    if args.trace:
        for call in result.tool_calls:
            status = "ok" if call.ok else f"failed [{call.error_code}]: {call.error_message}"
            arguments = json.dumps(call.arguments, ensure_ascii=False, default=repr)
            print(
                f"[batch {call.batch}] {call.namespace}.{call.tool}({arguments}) {status} "
                f"at {call.started_s:.3f} s, took {call.duration_s:.3f} s",
                file=sys.stderr,
            )
    if result.error is not None:
        print(f"error [{result.error.code}]: {result.error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    value = result.value
    print(value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False))
    return EXIT_OK


async def _run(code: bytes | str, args: argparse.Namespace, tools: list[Any]) -> RunResult:
    cm = _code_mode(args, tools=tools, backend=args.backend, limits=_limits(args))
    async with cm:
        result: RunResult = await cm.execute(code)
        return result


def _code_mode(args: argparse.Namespace, **kwargs: Any) -> Any:
    from ._core import CodeMode

    if getattr(args, "observe_shapes", False):
        kwargs["observe_shapes"] = True
    kwargs.setdefault("stubs_budget", getattr(args, "stubs_budget", None))
    if getattr(args, "config", None):
        return CodeMode.from_config(args.config, **kwargs)
    return CodeMode(**kwargs)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._core import CodeMode
    from ._demo import DEMO_PROGRAM, demo_config
    from ._upstream.config import parse_config

    async def go() -> RunResult:
        async with CodeMode(
            config=parse_config(demo_config(), source="<built-in demo>"), backend=args.backend, limits=_limits(args)
        ) as cm:
            if not args.json:
                print("# stubs the model reads (two MCP servers, started over stdio):", file=sys.stderr)
                print(cm.stubs(), file=sys.stderr)
                print("# the model's program:", file=sys.stderr)
                print(DEMO_PROGRAM, file=sys.stderr)
            return await cm.execute(DEMO_PROGRAM)

    result = anyio.run(go)
    code = _print_result(result, args)
    if not args.json:
        batches = len({c.batch for c in result.tool_calls})
        print(
            f"# {len(result.tool_calls)} tool calls in {batches} host crossings; "
            f"run took {result.timings.total_s:.3f} s ({result.backend} backend)",
            file=sys.stderr,
        )
    return code


def _cmd_demo_server(args: argparse.Namespace) -> int:
    from ._demo_server import main as serve

    return serve([args.name])


def _cmd_run(args: argparse.Namespace) -> int:
    return _print_result(anyio.run(_run, _read_program(args.program), args, []), args)


def _cmd_stubs(args: argparse.Namespace) -> int:
    from ._discovery import ToolNotFound

    async def go() -> str:
        async with _code_mode(args) as cm:
            try:
                return str(cm.stubs(args.tools or None))
            except ToolNotFound as exc:  # the names the user typed
                raise _UsageError(str(exc)) from exc

    print(anyio.run(go), end="")
    return EXIT_OK


def _cmd_search(args: argparse.Namespace) -> int:
    async def go() -> list[Any]:
        async with _code_mode(args) as cm:
            return list(cm.search_tools(args.query, limit=args.limit))

    hits = anyio.run(go)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": h.qualified_name,
                        "score": round(h.score, 4),
                        "signature": h.signature,
                        "summary": h.summary,
                    }
                    for h in hits
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        for hit in hits:
            print(hit.line)
        if not hits:
            print("no tool matches", file=sys.stderr)
    return EXIT_OK


def _cmd_pin(args: argparse.Namespace) -> int:
    from ._pinning import LOCK_FILE_NAME, PinStore, ToolRef
    from ._upstream.config import load_config
    from ._upstream.hub import Hub

    lock = Path(args.config).parent / LOCK_FILE_NAME

    async def go() -> Any:
        async with Hub(load_config(args.config)) as hub:
            store, tools = PinStore.load(lock), hub.tools()
            store.python_names(tools)  # names for pins from an older lock file, before any new tool's
            if args.update:
                report = store.update(tools)
            else:  # pin what is new; what changed stays refused until --update
                report = store.check(tools)
                new = set(report.new)
                store.approve([t for t in tools if ToolRef(server=t.namespace, tool=t.name) in new])
            store.save()
            return report

    report = anyio.run(go)
    for ref in report.new:
        print(f"pinned new   {ref.server}.{ref.tool}")
    for change in report.changed:
        verb = "re-approved" if args.update else "CHANGED    "
        print(f"{verb}  {change.server}.{change.tool} ({', '.join(change.fields)})")
    for ref in report.removed:
        print(f"{'forgot' if args.update else 'removed':<11}  {ref.server}.{ref.tool}")
    print(f"codemode: {len(report.unchanged)} unchanged; lock file {lock}", file=sys.stderr)
    if report.changed and not args.update:
        print(
            "codemode: changed definitions stay refused; review them, then run `codemode pin --update`", file=sys.stderr
        )
        return EXIT_RUN_FAILED
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._serve.app import cli_main
    from ._serve.settings import ServeSettings, SettingsError

    try:
        settings = ServeSettings.load(vars(args), os.environ)
    except SettingsError as exc:
        raise _UsageError(str(exc)) from exc
    return cli_main(settings)


def _cmd_mcp(args: argparse.Namespace) -> int:
    from ._serve.mcp_server import cli_main
    from ._serve.settings import McpSettings, SettingsError

    try:
        settings = McpSettings.load(vars(args), os.environ)
    except SettingsError as exc:
        raise _UsageError(str(exc)) from exc
    return cli_main(settings)


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / f"{args.name}.py").is_file():
        raise _UsageError(
            "the benchmarks ship with the source checkout: clone the repository and `pip install -e '.[dev]'` there"
        )
    return subprocess.call([sys.executable, "-m", f"benchmarks.{args.name}", *args.bench_args], cwd=root)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from ._sandbox.wasm import WasmBackend

    WasmBackend().load(force_build=args.force)
    print("codemode: the sandbox guest is built and cached", file=sys.stderr)
    return EXIT_OK


def _configure_logging() -> None:
    # The library reports what the user should see (a server that failed to
    # start, ...) as warnings on the `codemode` logger; this shows them once, on
    # stderr (stdout is the result, or `codemode mcp`'s protocol).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("codemode: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging()
    handlers = {
        "demo": _cmd_demo,
        "demo-server": _cmd_demo_server,
        "run": _cmd_run,
        "stubs": _cmd_stubs,
        "search": _cmd_search,
        "pin": _cmd_pin,
        "serve": _cmd_serve,
        "mcp": _cmd_mcp,
        "bench": _cmd_bench,
        "sandbox": _cmd_sandbox,
    }
    try:
        _apply_pool_flags(args)
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
