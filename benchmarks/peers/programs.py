"""The programs every system runs, and what they must return.

Expected values come from running the same source in this host's CPython, so
a system that returns something else (or cannot run it) is reported as such.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["COVERAGE", "CPU", "CPU_ITERATIONS", "TRIVIAL", "chain_program", "expected", "run_last_expression"]

TRIVIAL = "1 + 1"
CPU_ITERATIONS = 200_000
CPU = f"total = 0\nfor i in range({CPU_ITERATIONS}):\n    total = (total + i * i) % 1_000_003\ntotal"


def chain_program(calls: int, call: str) -> str:
    """`calls` sequential external calls, each taking the previous result; `call`
    is the system's spelling of one call with argument `i`, e.g. `await tools.noop(x=i)`."""
    return f"x = 0\nfor i in range({calls}):\n    x = {call}\nx"


# Everyday model code: each ends in a str or int expression, so any system can return it.
COVERAGE: dict[str, str] = {
    "dataclass, re, Counter, json": """\
import json, re
from collections import Counter
from dataclasses import dataclass

@dataclass
class Row:
    name: str
    score: int

rows = [Row(n, int(s)) for n, s in re.findall(r"(\\w+)=(\\d+)", "a=3 b=5 a=4 c=1")]
counts = Counter(r.name for r in rows)
json.dumps({"top": counts.most_common(1)[0][0], "total": sum(r.score for r in rows)})""",
    "classes: inheritance, super(), __repr__": """\
class Shape:
    def __init__(self, name):
        self.name = name
    def __repr__(self):
        return f"{type(self).__name__}({self.name}, {self.area():.2f})"

class Square(Shape):
    def __init__(self, side):
        super().__init__("square")
        self.side = side
    def area(self):
        return self.side ** 2

repr(sorted([Square(3), Square(1.5)], key=lambda s: s.area()))""",
    "generators, itertools.groupby, sorted(key=)": """\
import itertools
def evens(n):
    for i in range(n):
        if i % 2 == 0:
            yield i
words = sorted(["apple", "avocado", "banana", "blueberry", "cherry"], key=lambda w: (w[0], -len(w)))
groups = {k: list(g) for k, g in itertools.groupby(words, key=lambda w: w[0])}
str((sum(evens(50)), groups))""",
    "statistics, decimal, fractions": """\
import statistics
from decimal import Decimal
from fractions import Fraction
str((statistics.median([3, 1, 4, 1, 5, 9, 2]), statistics.mean([1, 2, 3, 4]), Decimal("0.1") + Decimal("0.2"),
     Fraction(1, 3) + Fraction(1, 6)))""",
    "match statement": """\
def kind(v):
    match v:
        case {"type": "point", "x": x, "y": y}:
            return f"point {x},{y}"
        case [first, *rest]:
            return f"list of {1 + len(rest)} starting {first}"
        case _:
            return "other"
"; ".join(kind(v) for v in [{"type": "point", "x": 1, "y": 2}, [7, 8, 9], 42])""",
    "exceptions: custom class, try/except/finally": """\
class QuotaError(Exception):
    pass

log = []
def spend(n):
    try:
        if n > 3:
            raise QuotaError(f"over quota: {n}")
        log.append(n)
    except QuotaError as exc:
        log.append(str(exc))
    finally:
        log.append("done")

for n in (1, 5):
    spend(n)
str(log)""",
    "datetime arithmetic": """\
from datetime import date, datetime, timedelta
start = datetime(2026, 1, 31, 22, 30)
str(((start + timedelta(hours=3)).isoformat(), (date(2026, 3, 1) - date(2026, 2, 1)).days,
     (start + timedelta(days=30)).strftime("%A %d %B")))""",
    "async def + asyncio.gather": """\
import asyncio
async def double(x):
    await asyncio.sleep(0)
    return x * 2
async def main():
    return sum(await asyncio.gather(*(double(i) for i in range(10))))
asyncio.run(main())""",
}


def run_last_expression(source: str, namespace: dict[str, Any] | None = None) -> Any:
    """Run `source` in CPython and return the value of its last expression statement."""
    tree = ast.parse(source)
    namespace = {} if namespace is None else namespace
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        exec(compile(tree, "<program>", "exec"), namespace)
        return None
    tree.body.pop()
    exec(compile(tree, "<program>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<program>", "eval"), namespace)


def expected() -> dict[str, Any]:
    return {name: run_last_expression(code) for name, code in COVERAGE.items()}
