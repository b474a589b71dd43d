"""Tokens and latency: direct tool calling vs code mode, on real MCP servers.

    python -m benchmarks.tokens [--quick] [--out DIR] [--repeat N] [--task NAME ...]
                                [--ttft S] [--prefill-tps N] [--decode-tps N]
    python -m benchmarks.tokens --model anthropic:MODEL [--out DIR] [--task NAME ...]

Runs every task in `_workloads` three times, once per scripted agent
(`_agents`: direct with the best strategy per task, direct naive with one call
per turn, code mode), against the pinned reference servers and the fixture
shop server; counts the tokens each conversation costs (`_tokens`); checks
every answer; writes tokens.md, tokens.json and tokens.png to --out (default
benchmarks/results/, or a new temporary directory with --quick, so a quick run
never overwrites the committed results). Exits 1 if any answer is wrong or the
agents disagree.

With `--model`, a real model drives both agents instead of the scripts
(`_model`; key from ANTHROPIC_API_KEY, endpoint from ANTHROPIC_BASE_URL) and
its reported usage, time to first token, success and retries go to
tokens_model.md and tokens_model.json. Off unless asked for; never in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from benchmarks._agents import AgentRun, BenchmarkError, run_code_mode, run_direct
from benchmarks._report import render_markdown, write_chart, write_json
from benchmarks._tokens import CACHE_READ_PRICE, CACHE_WRITE_PRICE, ENCODING, ModelTiming
from benchmarks._workloads import TASKS, UNTYPED_SERVERS, Task, Workspace, server_config
from codemode import Config, Hub, Sandbox
from tests.reference_servers import Unavailable, installed

RESULTS = Path(__file__).resolve().parent / "results"
AGENTS = ("direct", "direct_naive", "code_mode")
# Modelled latency under other assumptions: time to first token (s) x prefill rate (input tokens/s).
SENSITIVITY = ((0.5, 5_000.0), (0.5, 50_000.0), (1.8, 5_000.0), (1.8, 50_000.0))
KEYS = ("input_tokens", "output_tokens", "total_tokens", "tool_calls", "model_turns", "measured_s", "modelled_s")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    """A fixed directory (`$TMPDIR/codemode-bench`), so the paths in every
    request, and so the token counts, repeat exactly from run to run. Another
    run holding it (a lock, never waited on) sends this one to a fresh
    temporary directory, whose path changes the counts by a few tokens."""
    fixed = Path(tempfile.gettempdir()) / "codemode-bench"
    fixed.mkdir(exist_ok=True)
    with open(fixed / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(
                f"note: another run holds {fixed}; this one works in a temporary directory, "
                "so its token counts differ from the committed results by a few tokens",
                file=sys.stderr,
            )
            with tempfile.TemporaryDirectory(prefix="codemode-bench-") as tmp:
                yield Path(tmp)
            return
        for child in fixed.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        yield fixed


def _workspace(tmp: Path, needed: set[str]) -> tuple[Workspace, Config]:
    """A fresh workspace under `tmp` (a git repository and a database only if a
    task needs them) and the server config pointing at it."""
    ws = Workspace(tmp / "workspace", tmp / "memory.jsonl")
    if "git" in needed:
        ws.make_repo()
    if "sqlite" in needed:
        ws.make_db()
    config = server_config(
        ws.root,
        ws.memory_file,
        repo=ws.repo if "git" in needed else None,
        db=ws.db if "sqlite" in needed else None,
    )
    return ws, config


def _savings(tasks: list[dict[str, Any]], base: str) -> dict[str, Any]:
    """Code mode's token saving against `base`: over the sum of all tasks, the
    median task, and the sum without the two tasks where `base` costs most
    (so that no single big task carries the figure)."""

    def saving(code: float, other: float) -> float:
        return round((other - code) / other, 4) if other else 0.0

    per_task = [saving(t["code_mode"]["total_tokens"], t[base]["total_tokens"]) for t in tasks]
    biggest = sorted(tasks, key=lambda t: t[base]["total_tokens"], reverse=True)[:2]
    rest = [t for t in tasks if t not in biggest]
    return {
        "sum": saving(sum(t["code_mode"]["total_tokens"] for t in tasks), sum(t[base]["total_tokens"] for t in tasks)),
        "median_task": round(statistics.median(per_task), 4) if per_task else 0.0,
        "sum_without_two_biggest": saving(
            sum(t["code_mode"]["total_tokens"] for t in rest), sum(t[base]["total_tokens"] for t in rest)
        ),
        "two_biggest": [t["name"] for t in biggest],
        "per_task": {t["name"]: s for t, s in zip(tasks, per_task, strict=True)},
    }


def task_calls(task: dict[str, Any]) -> int:
    """The upstream calls a task takes, as the naive agent makes them one per turn
    (the best direct strategy may take fewer, by a shortcut; code mode's probes are not counted)."""
    calls: int = task["direct_naive"]["tool_calls"]
    return calls


def sensitivity(tasks: list[dict[str, Any]], decode_tps: float) -> list[dict[str, Any]]:
    """Total seconds (modelled model time + measured tool time) over all tasks, per agent, for
    each time to first token and prefill rate in `SENSITIVITY`; `cached`: prefilling only
    what the cache does not hold."""
    rows = []
    for ttft, prefill in SENSITIVITY:
        timing = ModelTiming(ttft_s=ttft, prefill_tps=prefill, decode_tps=decode_tps)
        row: dict[str, Any] = {"ttft_s": ttft, "prefill_tps": prefill}
        for agent in AGENTS:
            plain = cached = 0.0
            for t in tasks:
                turns = t[agent]["turns"]
                plain += t[agent]["measured_s"] + sum(
                    timing.turn_s(u["input_tokens"], u["output_tokens"]) for u in turns
                )
                cached += t[agent]["measured_s"] + sum(
                    timing.turn_s(u["input_tokens"] - u["cached_input_tokens"], u["output_tokens"]) for u in turns
                )
            row[agent] = {"total_s": round(plain, 2), "total_s_cached": round(cached, 2)}
        rows.append(row)
    return rows


def targets(tasks: list[dict[str, Any]], savings: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against the best direct strategy: each met or not, and by how much missed."""
    sv = savings["direct"]
    out = []
    for label, value, threshold in (
        ("aggregate token saving >= 70%", sv["sum"], 0.70),
        ("per-task median saving >= 50%", sv["median_task"], 0.50),
        ("saving without the two biggest tasks >= 50%", sv["sum_without_two_biggest"], 0.50),
    ):
        out.append(
            {
                "target": label,
                "met": value >= threshold,
                "value": f"{value:.1%}",
                "missed_by": "" if value >= threshold else f"{(threshold - value) * 100:.1f} points",
            }
        )
    many = [t for t in tasks if task_calls(t) >= 3]
    worse = [t for t in many if t["code_mode"]["total_tokens"] > t["direct"]["total_tokens"]]
    out.append(
        {
            "target": "no task of >= 3 upstream calls uses more tokens than direct",
            "met": not worse,
            "value": f"{len(many) - len(worse)} of {len(many)} tasks",
            "missed_by": ", ".join(
                f"{t['name']} {t['code_mode']['total_tokens'] / t['direct']['total_tokens'] - 1:+.0%}" for t in worse
            ),
        }
    )

    def speedup(t: dict[str, Any]) -> float:
        return float(t["direct"]["total_s"] / t["code_mode"]["total_s"])

    chains = [t for t in tasks if task_calls(t) >= 5]
    slow = [t for t in chains if speedup(t) < 2]
    out.append(
        {
            "target": "modelled time >= 2x faster on tasks of >= 5 calls",
            "met": not slow,
            "value": ", ".join(f"{t['name']} {speedup(t):.1f}x" for t in chains),
            "missed_by": ", ".join(f"{t['name']} ({speedup(t):.1f}x)" for t in slow),
        }
    )
    slower = [t for t in many if t["code_mode"]["total_s"] > t["direct"]["total_s"]]
    out.append(
        {
            "target": "never slower on tasks of >= 3 calls",
            "met": not slower,
            "value": f"{len(many) - len(slower)} of {len(many)} tasks not slower",
            "missed_by": ", ".join(f"{t['name']} ({_pct_change(t)})" for t in slower),
        }
    )
    return out


def _pct_change(t: dict[str, Any]) -> str:
    return f"{t['code_mode']['total_s'] / t['direct']['total_s'] - 1:+.0%}"


def summarize(runs: list[AgentRun], timing: ModelTiming) -> dict[str, Any]:
    """One agent on one task: tokens of the last run (they repeat), measured time as the median of all."""
    turns = runs[-1].conversation.turns
    input_tokens = sum(t.input_tokens for t in turns)
    output_tokens = sum(t.output_tokens for t in turns)
    billed = sum(t.billed_input_cached for t in turns)
    billed_write = sum(t.billed_input_cached_write for t in turns)
    measured = statistics.median(r.measured_s for r in runs)
    modelled = sum(timing.turn_s(t.input_tokens, t.output_tokens) for t in turns)
    # With caching, only the tokens not read from the cache need prefilling.
    modelled_cached = sum(timing.turn_s(t.input_tokens - t.cached_input_tokens, t.output_tokens) for t in turns)
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "tool_calls": runs[-1].upstream_calls,
        "model_turns": len(turns),
        "measured_s": round(measured, 4),
        "modelled_s": round(modelled, 3),
        "total_s": round(measured + modelled, 3),
        "cached_input_tokens": sum(t.cached_input_tokens for t in turns),
        "input_tokens_billed_cached": round(billed, 1),
        "total_tokens_billed_cached": round(billed + output_tokens, 1),
        "total_tokens_billed_cached_write": round(billed_write + output_tokens, 1),
        "measured_runs_s": [round(r.measured_s, 4) for r in runs],
        "input_tokens_per_run": [sum(t.input_tokens for t in r.conversation.turns) for r in runs],
        "modelled_s_cached": round(modelled_cached, 3),
        "upstream_call_durations_s": [round(d, 5) for d in runs[-1].call_durations_s],
        "sandbox": runs[-1].sandbox,
        "turns": [t.to_dict() for t in turns],
    }


async def _run_agent(
    kind: str, task: Task, ws: Workspace, hub: Hub, sandbox: Sandbox, repeat: int
) -> tuple[list[AgentRun], list[str]]:
    """`kind`: "direct" (best strategy), "naive" (direct, one call per turn) or "code_mode"."""
    tools = [t for t in hub.tools() if t.namespace in task.servers]
    runs, problems = [], []
    for _ in range(repeat):
        if task.setup is not None:
            await task.setup(ws)
        before = task.expected(ws) if task.live else None
        if kind == "code_mode":
            run = await run_code_mode(task, ws, tools, sandbox)
        else:
            run = await run_direct(task, ws, hub, tools, naive=kind == "naive")
        expected = [task.expected(ws)] + ([before] if task.live else [])
        if run.answer not in expected:
            problems.append(f"{kind} answered {run.answer!r}, expected {expected[0]!r}")
        if task.verify is not None and (problem := await task.verify(ws)):
            problems.append(f"{kind}: {problem}")
        runs.append(run)
    return runs, problems


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    timing = ModelTiming(ttft_s=args.ttft, prefill_tps=args.prefill_tps, decode_tps=args.decode_tps)
    tasks = [t for t in TASKS if not args.task or t.name in args.task]
    skipped = []
    if args.quick:  # a quick run never installs the untyped servers' venvs (the full run does, once)
        absent = {ns for ns in UNTYPED_SERVERS if not installed(f"venv-{ns}")}
        skipped = [t.name for t in tasks if absent & set(t.servers)]
        if skipped:
            print(
                f"tokens: skipping {', '.join(skipped)}: {', '.join(sorted(absent))} not installed "
                "(python -m tests.reference_servers --untyped)",
                file=sys.stderr,
            )
        tasks = [t for t in tasks if t.name not in skipped]
    needed = {ns for t in tasks for ns in t.servers}
    with _workdir() as tmp:
        ws, config = _workspace(tmp, needed)
        t0 = time.perf_counter()
        async with Hub(config) as hub:
            if hub.failures:
                raise BenchmarkError(
                    "servers unavailable: " + "; ".join(f"{ns}: {f.message}" for ns, f in hub.failures.items())
                )
            ws.hub = hub
            sandbox = Sandbox()
            await sandbox.load()
            startup_s = time.perf_counter() - t0
            out_tasks = []
            for task in tasks:
                print(f"tokens: {task.name} …", file=sys.stderr, flush=True)
                direct, direct_problems = await _run_agent("direct", task, ws, hub, sandbox, args.repeat)
                naive, naive_problems = await _run_agent("naive", task, ws, hub, sandbox, args.repeat)
                code, code_problems = await _run_agent("code_mode", task, ws, hub, sandbox, args.repeat)
                problems = direct_problems + naive_problems + code_problems
                if not direct[-1].answer == naive[-1].answer == code[-1].answer:
                    problems.append(
                        f"the agents disagree: direct {direct[-1].answer!r}, naive {naive[-1].answer!r}, "
                        f"code mode {code[-1].answer!r}"
                    )
                out_tasks.append(
                    {
                        "name": task.name,
                        "shape": task.shape,
                        "servers": list(task.servers),
                        "tools_offered": sum(1 for t in hub.tools() if t.namespace in task.servers),
                        "probe": task.probe is not None,
                        "answer": direct[-1].answer,
                        "passed": not problems,
                        "problems": problems,
                        "direct": summarize(direct, timing),
                        "direct_naive": summarize(naive, timing),
                        "code_mode": {
                            **summarize(code, timing),
                            "codemode_tool_calls": code[-1].codemode_calls,
                            "tools_offered": code[-1].tools_offered,
                        },
                    }
                )
    aggregate = {
        agent: {
            key: round(sum(t[agent][key] for t in out_tasks), 4)
            for key in (*KEYS, "total_s", "total_tokens_billed_cached", "total_tokens_billed_cached_write")
        }
        for agent in AGENTS
    }
    savings = {base: _savings(out_tasks, base) for base in ("direct", "direct_naive")}
    return {
        "quick": args.quick,
        "skipped": skipped,
        "method": {
            "tokenizer": f"{ENCODING} BPE via bpe-openai 0.1.4 (offline, embedded vocabulary)",
            "serialization": "Each turn's request is the JSON of an Anthropic-style Messages body "
            '({"tools": [...], "system": ..., "messages": [...]}; tools as name, description, '
            "input_schema; results as tool_result blocks) and its tokens are counted.",
            "output_tokens": "what the model generates: each tool call's name and JSON input, and the answer text.",
            "caching": f"each turn, the prefix shared with the previous turn's request is billed at "
            f"{CACHE_READ_PRICE:.0%} (cache read), the rest at 100% (no cache-write premium) or, in the "
            f"write-premium figures, at {CACHE_WRITE_PRICE:.0%} (written to the cache); every task starts "
            "with a cold cache.",
            "model_timing": {
                **timing.to_dict(),
                "modelled_s_cached": "the same, prefilling only the input tokens not read from the cache",
            },
            "measured_runs": args.repeat,
            "startup_s": round(startup_s, 2),
            "direct_tool_results": "the text an MCP client forwards to the model: the text of the result's content "
            "blocks, as the server sent them",
            "task_calls": "the calls the naive agent makes, one per turn",
        },
        "tasks": out_tasks,
        "aggregate": aggregate,
        "savings": savings,
        "sensitivity": sensitivity(out_tasks, args.decode_tps),
        "targets": targets(out_tasks, savings),
        "checks_passed": all(t["passed"] for t in out_tasks),
        "expectation_met": all(
            t["code_mode"]["total_tokens"] < t["direct"]["total_tokens"] for t in out_tasks if task_calls(t) >= 3
        ),
    }


async def measure_model(args: argparse.Namespace) -> dict[str, Any]:
    """Both agents on each task, driven by the real model `args.model`."""
    from benchmarks._model import ModelClient, parse_model, run_code_mode_model, run_direct_model

    provider, model = parse_model(args.model)
    tasks = [t for t in TASKS if not args.task or t.name in args.task]
    needed = {ns for t in tasks for ns in t.servers}
    out_tasks = []
    with _workdir() as tmp:
        ws, config = _workspace(tmp, needed)
        async with Hub(config) as hub, ModelClient(model) as client:
            if hub.failures:
                raise BenchmarkError(
                    "servers unavailable: " + "; ".join(f"{ns}: {f.message}" for ns, f in hub.failures.items())
                )
            ws.hub = hub
            sandbox = Sandbox()
            await sandbox.load()
            for task in tasks:
                print(f"tokens ({args.model}): {task.name} …", file=sys.stderr, flush=True)
                tools = [t for t in hub.tools() if t.namespace in task.servers]
                row: dict[str, Any] = {"name": task.name, "servers": list(task.servers)}
                for agent in ("direct", "code_mode"):
                    if task.setup is not None:
                        await task.setup(ws)
                    before = task.expected(ws) if task.live else None
                    if agent == "direct":
                        run = await run_direct_model(task, ws, hub, tools, client)
                    else:
                        run = await run_code_mode_model(task, ws, tools, sandbox, client)
                    run.success = run.answer in [task.expected(ws)] + ([before] if task.live else [])
                    if task.verify is not None and (problem := await task.verify(ws)):
                        run.success, run.problem = False, problem
                    row[agent] = run.to_dict()
                out_tasks.append(row)
    return {
        "provider": provider,
        "model": model,
        "method": "each agent's usage as the API reported it (input includes cache reads and writes); ttft: "
        "from sending a request to its first streamed content event; success: the answer equals ground truth "
        "and side effects check out; tool_errors: tool results that were errors; http_retries: retried requests",
        "tasks": out_tasks,
    }


def render_model(data: dict[str, Any]) -> str:
    lines = [
        f"# codemode token benchmark, real model ({data['provider']}:{data['model']})",
        "",
        data["method"] + ".",
        "",
        "| task | success (direct / code mode) | model turns | input tokens | output tokens | cache read / write "
        "(direct; code mode) | median ttft s | model s | tool errors | HTTP retries |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in data["tasks"]:
        d, c = t["direct"], t["code_mode"]

        def pair(key: str, d: dict[str, Any] = d, c: dict[str, Any] = c) -> str:
            return f"{d[key]} / {c[key]}"

        lines.append(
            f"| {t['name']} | {pair('success')} | {pair('model_turns')} | {pair('input_tokens')} | "
            f"{pair('output_tokens')} | {d['cache_read_input_tokens']}/{d['cache_creation_input_tokens']}; "
            f"{c['cache_read_input_tokens']}/{c['cache_creation_input_tokens']} | {pair('ttft_s_median')} | "
            f"{pair('model_s')} | {pair('tool_errors')} | {pair('http_retries')} |"
        )
    return "\n".join(lines) + "\n"


def _main_model(args: argparse.Namespace) -> int:
    from benchmarks._model import ModelError

    try:
        data = anyio.run(measure_model, args)
    except (BenchmarkError, Unavailable, ModelError) as exc:
        print(f"tokens benchmark failed: {exc}", file=sys.stderr)
        return 1
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    report = render_model(data)
    (out / "tokens_model.md").write_text(report)
    write_json(data, out / "tokens_model.json")
    print(report)
    print(f"wrote {out / 'tokens_model.md'}, tokens_model.json")
    return 0 if all(t[a]["success"] for t in data["tasks"] for a in ("direct", "code_mode")) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per agent and task (proves it works)")
    parser.add_argument(
        "--out",
        type=Path,
        help="where tokens.md/.json/.png go (default benchmarks/results/; with --quick, a new temporary directory)",
    )
    parser.add_argument("--repeat", type=int, help="runs per agent and task for measured times (default 5; 1 quick)")
    parser.add_argument("--task", action="append", choices=[t.name for t in TASKS], help="only these tasks")
    parser.add_argument("--ttft", type=float, default=ModelTiming.ttft_s, help="modelled time to first token, s")
    parser.add_argument(
        "--prefill-tps", type=float, default=ModelTiming.prefill_tps, help="modelled input tokens per second"
    )
    parser.add_argument(
        "--decode-tps", type=float, default=ModelTiming.decode_tps, help="modelled output tokens per second"
    )
    parser.add_argument(
        "--model",
        help="anthropic:MODEL: drive both agents with this real model (key from ANTHROPIC_API_KEY, endpoint "
        "from ANTHROPIC_BASE_URL); writes tokens_model.md/.json",
    )
    args = parser.parse_args(argv)
    if args.model:
        return _main_model(args)
    args.repeat = args.repeat or (1 if args.quick else 5)
    if args.out is None:  # quick figures are rough: keep them away from the committed ones
        args.out = Path(tempfile.mkdtemp(prefix="codemode-bench-tokens-")) if args.quick else RESULTS
    try:
        data = anyio.run(measure, args)
    except (BenchmarkError, Unavailable) as exc:
        print(f"tokens benchmark failed: {exc}", file=sys.stderr)
        return 1
    report = render_markdown(data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tokens.md").write_text(report)
    write_json(data, args.out / "tokens.json")
    try:
        write_chart(data, args.out / "tokens.png")
    except ImportError:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
    print(report)
    print(f"wrote {args.out / 'tokens.md'}, tokens.json, tokens.png")
    return 0 if data["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
