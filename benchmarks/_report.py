"""The token benchmark's outputs: a Markdown report, JSON, and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["render_markdown", "write_chart", "write_json"]

AGENTS = ("direct", "direct_naive", "code_mode")


def _pct(code: float, direct: float) -> str:
    if direct == 0:
        return "n/a"
    return f"{(code - direct) / direct * 100:+.0f}%"


def _pays_off(task: dict[str, Any]) -> str:
    d, c = task["direct"]["total_tokens"], task["code_mode"]["total_tokens"]
    return f"yes ({_pct(c, d)})" if c < d else f"**no** ({_pct(c, d)})"


def render_markdown(data: dict[str, Any]) -> str:
    method, tasks, agg = data["method"], data["tasks"], data["aggregate"]
    timing = method["model_timing"]
    runs = method["measured_runs"]
    lines = [
        f"# codemode token and latency benchmark ({'quick' if data['quick'] else 'full'} run)",
        "",
        "Three scripted agents (no model is called; the scripts are what a competent model would emit) do each task "
        "for real against the same MCP servers, and every answer is checked against ground truth: **direct** "
        "(the best strategy a good model would use calling tools itself: independent calls in parallel, one call "
        "where one does the job), **naive** (direct, one call per turn) and **code mode** (execute_code at once "
        "when the stubs fit its budget, else search_tools first; where a stub says `Content`, a probe program "
        "first, to see the text the tool returns).",
        "",
        "How the figures are made:",
        f"- **Tokens are counted**, not estimated: {method['tokenizer']}. {method['serialization']}",
        f"- **Direct tool results** are {method['direct_tool_results']}.",
        f"- **Input tokens** are summed over all model turns (the history is re-read each turn). "
        f"**Output tokens**: {method['output_tokens']}",
        f"- **With prompt caching**: {method['caching']}",
        f"- **Measured** seconds: wall time of every tool call (parallel calls: the turn's wall time) and of every "
        f"codemode call (search, stubs, the sandbox run with its tool calls), median of {runs} run(s) per agent "
        "and task, on this machine.",
        f"- **Modelled** seconds: model time per turn = {timing['formula']}, with ttft_s={timing['ttft_s']:g}, "
        f"prefill_tps={timing['prefill_tps']:g}, decode_tps={timing['decode_tps']:g} (flags --ttft, --prefill-tps, "
        "--decode-tps). Sources: " + "; ".join(f"{k}: {v}" for k, v in timing["sources"].items()) + ".",
        "",
        "## Tokens per task (counted)",
        "",
        "| task | what it exercises | tools offered (direct / code mode) | upstream tool calls (direct / code mode) "
        "| model turns (direct / naive / code mode) | input tokens (direct / code mode) | output tokens "
        "(direct / code mode) | total tokens (direct / naive / code mode) | code mode vs direct | code mode vs "
        "naive | total, billed with caching (direct / code mode) | code mode pays off (vs direct)? |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in tasks:
        d, n, c = t["direct"], t["direct_naive"], t["code_mode"]
        lines.append(
            f"| {t['name']} | {t['shape']} | {t['tools_offered']} / {c.get('tools_offered', 3)} | "
            f"{d['tool_calls']} / {c['tool_calls']} | "
            f"{d['model_turns']} / {n['model_turns']} / {c['model_turns']} | {d['input_tokens']:,} / "
            f"{c['input_tokens']:,} | {d['output_tokens']:,} / {c['output_tokens']:,} | {d['total_tokens']:,} / "
            f"{n['total_tokens']:,} / {c['total_tokens']:,} | {_pct(c['total_tokens'], d['total_tokens'])} | "
            f"{_pct(c['total_tokens'], n['total_tokens'])} | {d['total_tokens_billed_cached']:,.0f} / "
            f"{c['total_tokens_billed_cached']:,.0f} | {_pays_off(t)} |"
        )
    ad, an, ac = agg["direct"], agg["direct_naive"], agg["code_mode"]
    lines.append(
        f"| **all tasks** | | | {ad['tool_calls']} / {ac['tool_calls']} | {ad['model_turns']} / "
        f"{an['model_turns']} / {ac['model_turns']} | {ad['input_tokens']:,} / {ac['input_tokens']:,} | "
        f"{ad['output_tokens']:,} / {ac['output_tokens']:,} | {ad['total_tokens']:,} / {an['total_tokens']:,} / "
        f"{ac['total_tokens']:,} | {_pct(ac['total_tokens'], ad['total_tokens'])} | "
        f"{_pct(ac['total_tokens'], an['total_tokens'])} | {ad['total_tokens_billed_cached']:,.0f} / "
        f"{ac['total_tokens_billed_cached']:,.0f} | |"
    )
    lines += [
        "",
        "## Code mode's token saving, three ways",
        "",
        "| against | sum of all tasks | median task | sum without the two biggest tasks (which) |",
        "|---|---:|---:|---|",
    ]
    for base, label in (("direct", "direct, best strategy"), ("direct_naive", "direct, naive")):
        sv = data["savings"][base]
        lines.append(
            f"| {label} | {sv['sum']:.0%} | {sv['median_task']:.0%} | {sv['sum_without_two_biggest']:.0%} "
            f"({', '.join(sv['two_biggest'])}) |"
        )
    lines += [
        "",
        f"## Latency per task (measured: median of {runs} run(s); modelled: from the token counts)",
        "",
        "| task | model round trips (direct / code mode) | measured tool + sandbox s (direct / code mode) | "
        "modelled model s (direct / code mode) | total s (direct / code mode) | code mode vs direct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in tasks:
        d, c = t["direct"], t["code_mode"]
        lines.append(
            f"| {t['name']} | {d['model_turns']} / {c['model_turns']} | {d['measured_s']:.3f} / {c['measured_s']:.3f} "
            f"| {d['modelled_s']:.1f} / {c['modelled_s']:.1f} | {d['total_s']:.1f} / {c['total_s']:.1f} | "
            f"{_pct(c['total_s'], d['total_s'])} |"
        )
    lines.append(
        f"| **all tasks** | {ad['model_turns']} / {ac['model_turns']} | {ad['measured_s']:.3f} / "
        f"{ac['measured_s']:.3f} | {ad['modelled_s']:.1f} / {ac['modelled_s']:.1f} | {ad['total_s']:.1f} / "
        f"{ac['total_s']:.1f} | {_pct(ac['total_s'], ad['total_s'])} |"
    )
    lines += [
        "",
        "## Sensitivity: modelled time under other model speeds",
        "",
        "Total seconds over all tasks (modelled model time + measured tool time); *cached*: prefilling only the "
        "input tokens not read from the cache.",
        "",
        "| time to first token | prefill | direct | naive | code mode | code mode vs direct | cached: direct / "
        "code mode | cached: code mode vs direct |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["sensitivity"]:
        d, n, c = row["direct"], row["direct_naive"], row["code_mode"]
        lines.append(
            f"| {row['ttft_s']:g} s | {row['prefill_tps']:,.0f} tok/s | {d['total_s']:.1f} s | {n['total_s']:.1f} s | "
            f"{c['total_s']:.1f} s | {_pct(c['total_s'], d['total_s'])} | {d['total_s_cached']:.1f} / "
            f"{c['total_s_cached']:.1f} s | {_pct(c['total_s_cached'], d['total_s_cached'])} |"
        )
    lines += [
        "",
        "## Billed tokens with prompt caching, all tasks",
        "",
        "| agent | no caching | cache reads at 10%, no write premium | cache reads at 10%, writes at 125% |",
        "|---|---:|---:|---:|",
    ]
    for agent, label in (("direct", "direct"), ("direct_naive", "naive"), ("code_mode", "code mode")):
        a = agg[agent]
        lines.append(
            f"| {label} | {a['total_tokens']:,} | {a['total_tokens_billed_cached']:,.0f} | "
            f"{a['total_tokens_billed_cached_write']:,.0f} |"
        )
    lines += [
        "",
        "## Targets (against the best direct strategy)",
        "",
        f"A task's upstream calls: {method['task_calls']}. Time is modelled model time plus measured tool time.",
        "",
        "| target | met? | figure | missed by |",
        "|---|---|---|---|",
    ]
    for t in data["targets"]:
        lines.append(f"| {t['target']} | {'yes' if t['met'] else '**no**'} | {t['value']} | {t['missed_by']} |")
    if data.get("skipped"):
        lines += ["", f"Skipped in this quick run (their servers are not installed): {', '.join(data['skipped'])}."]
    lines += ["", "## Checks", ""]
    for t in tasks:
        status = "pass" if t["passed"] else "**FAIL**"
        problems = "; ".join(t["problems"]) if t["problems"] else "all three answers equal and correct"
        lines.append(f"- {t['name']}: {status} ({problems})")
    lines += ["", "## Where code mode does not pay off", ""]
    for t in tasks:
        d, c = t["direct"], t["code_mode"]
        if c["total_tokens"] >= d["total_tokens"]:
            lines.append(
                f"- Tokens, {t['name']} ({d['tool_calls']} upstream call(s), {t['tools_offered']} tools "
                f"offered): {c['total_tokens']:,} in code mode vs {d['total_tokens']:,} direct. The code "
                "contract, the stubs and the program cost more than the calls they save."
            )
        if c["total_s"] >= d["total_s"]:
            lines.append(
                f"- Time, {t['name']}: {c['total_s']:.1f} s in code mode vs {d['total_s']:.1f} s direct "
                f"({c['model_turns']} model round trips vs {d['model_turns']}; each costs a time to first "
                "token)."
            )
    if not any(
        t["code_mode"]["total_tokens"] >= t["direct"]["total_tokens"]
        or t["code_mode"]["total_s"] >= t["direct"]["total_s"]
        for t in tasks
    ):
        lines.append("- Code mode used fewer tokens and less time on every task.")
    return "\n".join(lines) + "\n"


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = data["tasks"]
    names = [t["name"] for t in tasks]
    x = range(len(names))
    width = 0.27
    colors = {"direct": "#c0504d", "direct_naive": "#e6a19f", "code_mode": "#4f81bd"}
    labels = {"direct": "direct, best strategy", "direct_naive": "direct, one call per turn", "code_mode": "code mode"}
    fig, (ax_tokens, ax_time) = plt.subplots(2, 1, figsize=(12, 9), constrained_layout=True)
    for i, agent in enumerate(AGENTS):
        offset = [p + (i - 1) * width for p in x]
        ax_tokens.bar(
            offset, [t[agent]["total_tokens"] for t in tasks], width, label=labels[agent], color=colors[agent]
        )
        measured = [t[agent]["measured_s"] for t in tasks]
        modelled = [t[agent]["modelled_s"] for t in tasks]
        ax_time.bar(offset, modelled, width, color=colors[agent], label=f"{labels[agent]}: model (modelled)")
        ax_time.bar(
            offset,
            measured,
            width,
            bottom=modelled,
            color=colors[agent],
            alpha=0.45,
            hatch="//",
            label=f"{labels[agent]}: tools + sandbox (measured)",
        )
    ax_tokens.set_yscale("log")
    ax_tokens.set_ylabel("total tokens (input over all turns + output), log scale")
    ax_tokens.set_title("Tokens per task (counted, o200k_base)")
    ax_time.set_ylabel("seconds")
    ax_time.set_title(
        f"Time per task: modelled model time + measured tool/sandbox time "
        f"(median of {data['method']['measured_runs']} run(s))"
    )
    for ax in (ax_tokens, ax_time):
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
