"""The token benchmark's tasks: multi-step work over real MCP servers.

The servers are the pinned public reference servers (filesystem over a
generated tree, memory, everything, time; git over a generated history and
sqlite over a generated sales table, both untyped) plus
`fixtures/shop_server.py` for the shapes they lack. Every task carries two scripts, written as a competent
model would act: `direct` is the strongest strategy a good model would use
calling tools itself (independent calls in parallel, in one turn; the shortcut
where one call does the job, such as listing a directory and reading it with
`read_multiple_files`), deriving each call's arguments, and its answer, from
the real results it got; `naive` (default: `direct` with one call per turn) is
the weaker agent, kept for comparison; `program` is the one program code mode runs. The
answer is checked against ground truth computed from the generated data, not
from any tool.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from benchmarks.fixtures import shop_server
from codemode import Config, Hub, parse_config
from tests.reference_servers import git_server, npm_bin, sqlite_server, time_server

__all__ = ["ALL_SERVERS", "EVERY_SERVER", "TASKS", "UNTYPED_SERVERS", "Calls", "Task", "Workspace", "server_config"]

SEED = 1121
ALL_SERVERS = ("filesystem", "memory", "everything", "time", "shop")
# Servers without output schemas, each in its own venv (mcp-server-sqlite needs `mcp<2`).
UNTYPED_SERVERS = ("git", "sqlite")
EVERY_SERVER = ALL_SERVERS + UNTYPED_SERVERS
_SHOP = Path(shop_server.__file__).resolve()


class Calls(Protocol):
    """What a direct script can do: one tool call per model turn, or several
    independent calls in one turn."""

    async def call(self, namespace: str, tool: str, arguments: dict[str, Any]) -> Any: ...

    async def parallel(self, calls: list[tuple[str, str, dict[str, Any]]]) -> list[Any]: ...


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    shape: str
    """What the task exercises, for the report."""
    servers: tuple[str, ...]
    """The servers connected while it runs: every tool of each is offered."""
    prompt: str
    direct: Callable[[Calls, Workspace], Awaitable[Any]]
    search: str
    """The code-mode agent's search_tools query."""
    stubs: tuple[str, ...]
    """The tools whose stubs it then reads."""
    program: str
    """Its execute_code program; `{root}` is the workspace path."""
    expected: Callable[[Workspace], Any]
    setup: Callable[[Workspace], Awaitable[None]] | None = None
    verify: Callable[[Workspace], Awaitable[str | None]] | None = None
    """Checks side effects (files written, graph stored) after a run."""
    live: bool = False
    """The answer depends on the clock: `expected` is evaluated right after the run."""
    naive: Callable[[Calls, Workspace], Awaitable[Any]] | None = None
    """The naive direct script, run one call per turn; None: `direct`, one call per turn."""
    probe: str | None = None
    """An execute_code program code mode runs first, to see what a tool whose stub
    says `Content` returns (the format its real program then parses)."""
    answer_from_text: Callable[[str], Any] | None = None
    """Set where code mode's best strategy is to return what the tool said and
    answer from that text in its final turn, as the direct agent does (one call
    whose result needs no parsing in code, so no probe): derives the answer from
    the text execute_code returned."""

    def render(self, text: str, ws: Workspace) -> str:
        return text.replace("{root}", str(ws.root))


def server_config(root: Path, memory_file: Path, *, repo: Path | None = None, db: Path | None = None) -> Config:
    """An `mcpServers` config for every benchmark server (git with `repo`, sqlite with `db`)."""
    time_cmd = time_server()
    servers: dict[str, Any] = {
        "filesystem": {"command": str(npm_bin("mcp-server-filesystem")), "args": [str(root)]},
        "memory": {"command": str(npm_bin("mcp-server-memory")), "env": {"MEMORY_FILE_PATH": str(memory_file)}},
        "everything": {"command": str(npm_bin("mcp-server-everything")), "args": ["stdio"]},
        "time": {"command": time_cmd[0], "args": time_cmd[1:]},
        "shop": {"command": sys.executable, "args": [str(_SHOP)]},
    }
    if repo is not None:
        git_cmd = git_server(repo)
        servers["git"] = {"command": git_cmd[0], "args": git_cmd[1:]}
    if db is not None:
        sqlite_cmd = sqlite_server(db)
        servers["sqlite"] = {"command": sqlite_cmd[0], "args": sqlite_cmd[1:]}
    return parse_config({"mcpServers": servers})


# -- generated data ------------------------------------------------------------------------------

_WORDS = (
    "amber",
    "birch",
    "cobalt",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lagoon",
    "meadow",
    "nimbus",
    "onyx",
    "prairie",
    "quartz",
    "raven",
    "sierra",
    "tundra",
)
_COMPONENTS = ("api", "auth", "billing", "cache", "db", "queue", "scheduler", "search")
_LEVELS = ("DEBUG",) * 3 + ("INFO",) * 8 + ("WARN",) * 2 + ("ERROR",)
# Zones without daylight saving time, so conversions do not depend on the date.
_ZONES = (
    "Asia/Kolkata",
    "Asia/Dubai",
    "Asia/Singapore",
    "Africa/Nairobi",
    "America/Bogota",
    "Asia/Karachi",
    "Asia/Jakarta",
    "Australia/Brisbane",
    "Pacific/Honolulu",
    "UTC",
    "America/Phoenix",
    "Africa/Lagos",
)
_ROLES = ("engineer", "designer", "analyst", "writer", "researcher")
_FIRST = (
    "Ada",
    "Ben",
    "Cleo",
    "Dev",
    "Eli",
    "Fay",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lea",
    "Mo",
    "Nia",
    "Otto",
    "Pia",
    "Quin",
    "Ravi",
)
_STATUSES = ("active", "paused", "done")
_AUTHORS = ("Ada Byron", "Ben Okafor", "Cleo Marsh", "Dev Patel", "Eli Novak")
_REGIONS = ("north", "south", "east", "west", "central")
_PRODUCTS = ("anvil", "bolt", "crank", "dowel", "easel", "flange", "gasket", "hinge")
_OWNERS = ("alice", "bruno", "chen", "dara")


class Workspace:
    """The generated tree the filesystem server serves, the memory file, and the
    ground truth of every task. Deterministic for a seed."""

    def __init__(self, root: Path, memory_file: Path, *, seed: int = SEED, log_lines: int = 3000) -> None:
        self.root, self.memory_file = root, memory_file
        self.rng = random.Random(seed)
        self.hub: Hub | None = None
        self.chain_secret, self.chain_files = self._chain(12)
        self.log_truth = self._log(log_lines)
        self.meetings = self._meetings(24)
        self.team = self._team()
        self.projects = self._projects(30)
        (root / "reports").mkdir(parents=True, exist_ok=True)
        # The git repository and the sqlite database, made by `make_repo`/`make_db`
        # only when their servers are connected (their own rng: the data above stays as it was).
        self.repo, self.db = root / "repo", root.parent / "sales.sqlite"
        self.commits: list[dict[str, Any]] = []
        self.sales: list[tuple[int, str, str, str, int, int]] = []

    def _write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def _filler(self, lines: int) -> str:
        return "\n".join(f"note {i}: " + " ".join(self.rng.choice(_WORDS) for _ in range(9)) for i in range(lines))

    def _chain(self, length: int) -> tuple[str, int]:
        names = ["chain/start.txt"] + [
            f"chain/{self.rng.choice(_WORDS)}-{self.rng.randrange(16**6):06x}.txt" for _ in range(length - 1)
        ]
        secret = f"{self.rng.choice(_WORDS)}-{self.rng.randrange(10**6):06d}"
        for i, name in enumerate(names):
            last = i == len(names) - 1
            tail = f"secret: {secret}" if last else f"next: {names[i + 1]}"
            self._write(name, f"# hop {i + 1}\n{self._filler(6)}\n{tail}\n")
        # Decoys that a shortcut (listing the directory) would have to tell apart.
        for _ in range(4):
            self._write(
                f"chain/{self.rng.choice(_WORDS)}-{self.rng.randrange(16**6):06x}.txt",
                f"{self._filler(6)}\nsecret: {self.rng.choice(_WORDS)}-decoy\n",
            )
        return secret, length

    def _log(self, lines: int) -> dict[str, Any]:
        start = datetime(2026, 11, 2, 6, 0, 0)
        rows, errors = [], Counter[str]()
        for i in range(lines):
            level, component = self.rng.choice(_LEVELS), self.rng.choice(_COMPONENTS)
            if level == "ERROR":
                errors[component] += 1
            stamp = (start + timedelta(seconds=7 * i)).isoformat() + "Z"
            rows.append(
                f"{stamp} {level:<5} {component:<9} req={self.rng.randrange(16**8):08x} "
                f"took={self.rng.randrange(1, 900)}ms {' '.join(self.rng.choice(_WORDS) for _ in range(3))}"
            )
        self._write("logs/app.log", "\n".join(rows) + "\n")
        ((component, n),) = errors.most_common(1)
        return {"component": component, "errors": n, "total_errors": sum(errors.values())}

    def _meetings(self, n: int) -> list[dict[str, str]]:
        meetings = [
            {
                "id": f"m{i + 1:02d}",
                "time": f"{self.rng.randrange(6, 20):02d}:{self.rng.choice((0, 15, 30, 45)):02d}",
                "timezone": self.rng.choice(_ZONES),
            }
            for i in range(n)
        ]
        self._write("meetings/schedule.json", json.dumps(meetings, indent=2))
        return meetings

    def _team(self) -> list[dict[str, str]]:
        people = [{"name": name, "role": self.rng.choice(_ROLES), "manager": ""} for name in _FIRST]
        for i, person in enumerate(people[1:], start=1):
            person["manager"] = people[self.rng.randrange(0, min(i, 5))]["name"]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["name", "role", "manager"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(people)
        self._write("team/team.csv", text.getvalue())
        return people

    def _projects(self, n: int) -> list[dict[str, Any]]:
        names = sorted({f"{self.rng.choice(_WORDS)}-{self.rng.choice(_WORDS)}" for _ in range(n * 2)})[:n]
        return [
            {
                "name": name,
                "status": self.rng.choice(_STATUSES),
                "owner": self.rng.choice(_OWNERS),
                "budget_keur": self.rng.randrange(10, 400),
            }
            for name in names
        ]

    def make_repo(self, n: int = 60) -> None:
        """A git history of `n` commits with fixed authors and dates (so fixed
        hashes), written with one `git fast-import`."""
        rng = random.Random(SEED + 1)
        files: dict[str, str] = {"config.toml": '[service]\nname = "bench"\n'}
        stream = []
        start = datetime(2026, 10, 1, 9, 0, 0)
        for i in range(1, n + 1):
            author = rng.choice(_AUTHORS)
            component = rng.choice(_COMPONENTS)
            changed = [f"src/{component}.py"]
            files[changed[0]] = files.get(changed[0], "") + "".join(
                f"def {component}_{rng.choice(_WORDS)}_{i}_{k}():\n    return {rng.randrange(1000)}\n"
                for k in range(rng.randrange(1, 4))
            )
            config_lines = 0
            if i == 1 or rng.random() < 0.3:
                config_lines = rng.randrange(1, 5)
                files["config.toml"] += "".join(
                    f"{component}_{rng.choice(_WORDS)}_{i}_{k} = {rng.randrange(100)}\n" for k in range(config_lines)
                )
                changed.append("config.toml")
            message = f"c{i:03d}: {rng.choice(('tune', 'fix', 'extend', 'clean up'))} {component}"
            stamp = int((start + timedelta(hours=5 * i)).replace(tzinfo=ZoneInfo("UTC")).timestamp())
            ident = f"{author} <{author.split()[0].lower()}@example.org> {stamp} +0000"
            stream.append(f"commit refs/heads/main\nmark :{i}\nauthor {ident}\ncommitter {ident}\n")
            stream.append(f"data {len(message.encode())}\n{message}\n")
            if i > 1:
                stream.append(f"from :{i - 1}\n")
            for path in changed:
                body = files[path].encode()
                stream.append(f"M 100644 inline {path}\ndata {len(body)}\n{files[path]}\n")
            self.commits.append({"author": author, "message": message, "config_lines": config_lines})
        if self.repo.exists():
            shutil.rmtree(self.repo)
        self.repo.mkdir(parents=True)
        git = ["git", "-C", str(self.repo)]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "fast-import", "--quiet"], input="".join(stream).encode(), check=True)
        subprocess.run([*git, "reset", "-q", "--hard"], check=True)

    def make_db(self, rows: int = 3000) -> None:
        """A `sales` table of `rows` rows (prices in integer cents, so sums are exact)."""
        rng = random.Random(SEED + 2)
        start = datetime(2026, 1, 1)
        self.sales = [
            (
                i + 1,
                (start + timedelta(days=rng.randrange(365))).date().isoformat(),
                rng.choice(_REGIONS),
                rng.choice(_PRODUCTS),
                rng.randrange(1, 20),
                rng.randrange(199, 9999),
            )
            for i in range(rows)
        ]
        self.db.unlink(missing_ok=True)
        with sqlite3.connect(self.db) as conn:
            conn.execute(
                "CREATE TABLE sales (id INTEGER PRIMARY KEY, day TEXT, region TEXT, product TEXT, "
                "qty INTEGER, unit_price_cents INTEGER)"
            )
            conn.executemany("INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?)", self.sales)
        conn.close()

    # -- ground truth --------------------------------------------------------------------------

    def authors_truth(self, last: int = 50) -> dict[str, Any]:
        ((author, n),) = Counter(c["author"] for c in self.commits[-last:]).most_common(1)
        return {"author": author, "commits": n}

    def config_truth(self, last: int = 12) -> dict[str, Any]:
        touched = [c for c in self.commits[-last:] if c["config_lines"]]
        return {
            "commits": sorted(c["message"] for c in touched),
            "lines_added": sum(c["config_lines"] for c in touched),
        }

    def october_truth(self) -> dict[str, Any]:
        revenue: Counter[str] = Counter()
        for _, day, region, _, qty, price in self.sales:
            if day.startswith("2026-10"):
                revenue[region] += qty * price
        ((best, _),) = revenue.most_common(1)
        return {"revenue_cents": dict(sorted(revenue.items())), "best_region": best}

    def monthly_rows(self) -> list[tuple[str, str, int]]:
        revenue: Counter[tuple[str, str]] = Counter()
        for _, day, region, _, qty, price in self.sales:
            revenue[(day[:7], region)] += qty * price
        return [(month, region, cents) for (month, region), cents in sorted(revenue.items())]

    def monthly_truth(self) -> dict[str, Any]:
        by_month: Counter[str] = Counter()
        for month, _, cents in self.monthly_rows():
            by_month[month] += cents
        ((best, _),) = by_month.most_common(1)
        return {"rows": len(self.monthly_rows()), "best_month": best}

    def meetings_truth(self) -> dict[str, Any]:
        ids = []
        for m in self.meetings:
            hour, minute = map(int, m["time"].split(":"))
            local = datetime(2026, 1, 15, hour, minute, tzinfo=ZoneInfo(m["timezone"]))
            if 9 <= local.astimezone(ZoneInfo("Asia/Tokyo")).hour < 18:
                ids.append(m["id"])
        return {"ids": sorted(ids), "count": len(ids)}

    def team_truth(self) -> dict[str, Any]:
        reports = Counter(p["manager"] for p in self.team if p["manager"])
        ((manager, n),) = reports.most_common(1)
        return {
            "manager": manager,
            "direct_reports": n,
            "entities": len(self.team),
            "relations": sum(1 for p in self.team if p["manager"]),
        }

    def projects_report(self) -> str:
        by_status: dict[str, list[str]] = defaultdict(list)
        for p in self.projects:
            by_status[p["status"]].append(p["name"])
        return "".join(f"{s}: {len(by_status[s])} - {', '.join(sorted(by_status[s]))}\n" for s in sorted(by_status))

    def projects_truth(self) -> dict[str, Any]:
        active = [p for p in self.projects if p["status"] == "active"]
        return {"active": len(active), "active_budget_keur": sum(p["budget_keur"] for p in active)}

    # -- state resets (through the hub; not counted) -------------------------------------------

    async def clear_memory(self) -> None:
        assert self.hub is not None
        graph = await self.hub.call_tool("memory", "read_graph", {})
        names = [e["name"] for e in graph.get("entities", [])]
        if names:
            await self.hub.call_tool("memory", "delete_entities", {"entityNames": names})

    async def seed_projects(self) -> None:
        assert self.hub is not None
        await self.clear_memory()
        (self.root / "reports" / "projects.md").unlink(missing_ok=True)
        await self.hub.call_tool(
            "memory",
            "create_entities",
            {
                "entities": [
                    {
                        "name": p["name"],
                        "entityType": "project",
                        "observations": [
                            f"status: {p['status']}",
                            f"owner: {p['owner']}",
                            f"budget_keur: {p['budget_keur']}",
                        ],
                    }
                    for p in self.projects
                ]
            },
        )
        names = [p["name"] for p in self.projects]
        await self.hub.call_tool(
            "memory",
            "create_relations",
            {
                "relations": [
                    {"from": names[i], "to": names[(i * 7 + 3) % len(names)], "relationType": "depends_on"}
                    for i in range(0, len(names), 2)
                ]
            },
        )


def shop_restock_truth() -> dict[str, Any]:
    low = [p for p in shop_server.catalog().values() if p["stock"] < p["reorder_level"]]
    cost = sum((2 * p["reorder_level"] - p["stock"]) * p["unit_price"] for p in low)
    return {"skus": sorted(p["sku"] for p in low), "restock_cost": round(cost, 2)}


def shop_refunds_truth() -> dict[str, Any]:
    by_region: dict[str, float] = defaultdict(float)
    refunded = [o for o in shop_server.orders() if o["status"] == "refunded"]
    for o in refunded:
        by_region[o["region"]] += o["total"]
    return {
        "refunded_by_region": {r: round(v, 2) for r, v in sorted(by_region.items())},
        "refunded_orders": len(refunded),
    }


def weekday_now(zone: str) -> str:
    return datetime.now(ZoneInfo(zone)).strftime("%A")


# -- direct scripts: what a model calling tools one turn at a time would do ----------------------


async def chain_direct(calls: Calls, ws: Workspace) -> Any:
    path, files = f"{ws.root}/chain/start.txt", 0
    while True:
        text = (await calls.call("filesystem", "read_text_file", {"path": path}))["content"]
        files += 1
        if secret := re.search(r"^secret: (\S+)", text, re.M):
            return {"secret": secret.group(1), "files": files}
        path = f"{ws.root}/" + re.search(r"^next: (\S+)", text, re.M).group(1)  # type: ignore[union-attr]


async def chain_best(calls: Calls, ws: Workspace) -> Any:
    """List the directory, read every file in one call, follow the chain in context."""
    listing = (await calls.call("filesystem", "list_directory", {"path": f"{ws.root}/chain"}))["content"]
    names = [line.split("] ", 1)[1] for line in listing.splitlines() if line.startswith("[FILE]")]
    paths = [f"{ws.root}/chain/{n}" for n in names]
    text = (await calls.call("filesystem", "read_multiple_files", {"paths": paths}))["content"]
    files = {}
    for block in text.split("\n---\n"):
        path, _, body = block.strip().partition(":\n")
        files[path] = body
    path, count = f"{ws.root}/chain/start.txt", 0
    while True:
        count += 1
        if secret := re.search(r"^secret: (\S+)", files[path], re.M):
            return {"secret": secret.group(1), "files": count}
        path = f"{ws.root}/" + re.search(r"^next: (\S+)", files[path], re.M).group(1)  # type: ignore[union-attr]


async def log_direct(calls: Calls, ws: Workspace) -> Any:
    text = (await calls.call("filesystem", "read_text_file", {"path": f"{ws.root}/logs/app.log"}))["content"]
    errors = Counter(line.split()[2] for line in text.splitlines() if line.split()[1:2] == ["ERROR"])
    ((component, n),) = errors.most_common(1)
    return {"component": component, "errors": n, "total_errors": sum(errors.values())}


async def meetings_direct(calls: Calls, ws: Workspace) -> Any:
    text = (await calls.call("filesystem", "read_text_file", {"path": f"{ws.root}/meetings/schedule.json"}))["content"]
    meetings = json.loads(text)
    converted = await calls.parallel(
        [
            (
                "time",
                "convert_time",
                {"source_timezone": m["timezone"], "time": m["time"], "target_timezone": "Asia/Tokyo"},
            )
            for m in meetings
        ]
    )
    ids = [m["id"] for m, c in zip(meetings, converted, strict=True) if 9 <= int(c["target"]["datetime"][11:13]) < 18]
    return {"ids": sorted(ids), "count": len(ids)}


async def restock_direct(calls: Calls, ws: Workspace) -> Any:
    skus = [p["sku"] for p in await calls.call("shop", "list_products", {})]
    products = await calls.parallel([("shop", "get_product", {"sku": sku}) for sku in skus])
    low = [p for p in products if p["stock"] < p["reorder_level"]]
    cost = sum((2 * p["reorder_level"] - p["stock"]) * p["unit_price"] for p in low)
    return {"skus": sorted(p["sku"] for p in low), "restock_cost": round(cost, 2)}


async def refunds_direct(calls: Calls, ws: Workspace) -> Any:
    totals: dict[str, float] = defaultdict(float)
    count, cursor = 0, None
    while True:
        page = await calls.call("shop", "list_orders", {"cursor": cursor} if cursor else {})
        for order in page["orders"]:
            if order["status"] == "refunded":
                totals[order["region"]] += order["total"]
                count += 1
        cursor = page["next_cursor"]
        if not cursor:
            return {"refunded_by_region": {r: round(v, 2) for r, v in sorted(totals.items())}, "refunded_orders": count}


async def team_direct(calls: Calls, ws: Workspace) -> Any:
    text = (await calls.call("filesystem", "read_text_file", {"path": f"{ws.root}/team/team.csv"}))["content"]
    people = list(csv.DictReader(io.StringIO(text)))
    await calls.call(
        "memory",
        "create_entities",
        {
            "entities": [
                {"name": p["name"], "entityType": "person", "observations": [f"role: {p['role']}"]} for p in people
            ]
        },
    )
    relations = [{"from": p["name"], "to": p["manager"], "relationType": "reports_to"} for p in people if p["manager"]]
    await calls.call("memory", "create_relations", {"relations": relations})
    ((manager, n),) = Counter(r["to"] for r in relations).most_common(1)
    return {"manager": manager, "direct_reports": n, "entities": len(people), "relations": len(relations)}


def _projects_from_graph(graph: dict[str, Any]) -> list[dict[str, Any]]:
    projects = []
    for entity in graph["entities"]:
        if entity["entityType"] == "project":
            fields = dict(o.split(": ", 1) for o in entity["observations"])
            projects.append({"name": entity["name"], "status": fields["status"], "budget": int(fields["budget_keur"])})
    return projects


async def projects_direct(calls: Calls, ws: Workspace) -> Any:
    projects = _projects_from_graph(await calls.call("memory", "read_graph", {}))
    by_status: dict[str, list[str]] = defaultdict(list)
    for p in projects:
        by_status[p["status"]].append(p["name"])
    report = "".join(f"{s}: {len(by_status[s])} - {', '.join(sorted(by_status[s]))}\n" for s in sorted(by_status))
    await calls.call("filesystem", "write_file", {"path": f"{ws.root}/reports/projects.md", "content": report})
    active = [p for p in projects if p["status"] == "active"]
    return {"active": len(active), "active_budget_keur": sum(p["budget"] for p in active)}


async def weekday_direct(calls: Calls, ws: Workspace) -> Any:
    now = await calls.call("time", "get_current_time", {"timezone": "Pacific/Kiritimati"})
    return {"day_of_week": now["day_of_week"]}


# -- code mode programs ----------------------------------------------------------------------------

CHAIN_PROGRAM = """\
import re
path, files = "{root}/chain/start.txt", 0
while True:
    text = (await filesystem.read_text_file(path=path))["content"]
    files += 1
    if secret := re.search(r"^secret: (\\S+)", text, re.M):
        break
    path = "{root}/" + re.search(r"^next: (\\S+)", text, re.M).group(1)
{"secret": secret.group(1), "files": files}
"""

LOG_PROGRAM = """\
from collections import Counter
text = (await filesystem.read_text_file(path="{root}/logs/app.log"))["content"]
errors = Counter(line.split()[2] for line in text.splitlines() if line.split()[1:2] == ["ERROR"])
component, n = errors.most_common(1)[0]
{"component": component, "errors": n, "total_errors": sum(errors.values())}
"""

MEETINGS_PROGRAM = """\
import asyncio, json
meetings = json.loads((await filesystem.read_text_file(path="{root}/meetings/schedule.json"))["content"])
converted = await asyncio.gather(*(
    time.convert_time(source_timezone=m["timezone"], time=m["time"], target_timezone="Asia/Tokyo")
    for m in meetings))
ids = sorted(m["id"] for m, c in zip(meetings, converted) if 9 <= int(c["target"]["datetime"][11:13]) < 18)
{"ids": ids, "count": len(ids)}
"""

RESTOCK_PROGRAM = """\
import asyncio
products = await asyncio.gather(*(shop.get_product(sku=p["sku"]) for p in await shop.list_products()))
low = [p for p in products if p["stock"] < p["reorder_level"]]
cost = sum((2 * p["reorder_level"] - p["stock"]) * p["unit_price"] for p in low)
{"skus": sorted(p["sku"] for p in low), "restock_cost": round(cost, 2)}
"""

REFUNDS_PROGRAM = """\
from collections import defaultdict
totals, count, cursor = defaultdict(float), 0, None
while True:
    page = await shop.list_orders(cursor=cursor)
    for order in page["orders"]:
        if order["status"] == "refunded":
            totals[order["region"]] += order["total"]
            count += 1
    cursor = page["next_cursor"]
    if not cursor:
        break
{"refunded_by_region": {r: round(v, 2) for r, v in sorted(totals.items())}, "refunded_orders": count}
"""

TEAM_PROGRAM = """\
import csv, io
from collections import Counter
text = (await filesystem.read_text_file(path="{root}/team/team.csv"))["content"]
people = list(csv.DictReader(io.StringIO(text)))
await memory.create_entities(entities=[
    {"name": p["name"], "entityType": "person", "observations": [f"role: {p['role']}"]} for p in people])
relations = [{"from": p["name"], "to": p["manager"], "relationType": "reports_to"} for p in people if p["manager"]]
await memory.create_relations(relations=relations)
manager, n = Counter(r["to"] for r in relations).most_common(1)[0]
{"manager": manager, "direct_reports": n, "entities": len(people), "relations": len(relations)}
"""

PROJECTS_PROGRAM = """\
from collections import defaultdict
graph = await memory.read_graph()
by_status, active_budget = defaultdict(list), 0
for e in graph["entities"]:
    if e["entityType"] == "project":
        fields = dict(o.split(": ", 1) for o in e["observations"])
        by_status[fields["status"]].append(e["name"])
        if fields["status"] == "active":
            active_budget += int(fields["budget_keur"])
report = "".join(f"{s}: {len(by_status[s])} - {', '.join(sorted(by_status[s]))}\\n" for s in sorted(by_status))
await filesystem.write_file(path="{root}/reports/projects.md", content=report)
{"active": len(by_status["active"]), "active_budget_keur": active_budget}
"""

WEEKDAY_PROGRAM = """\
now = await time.get_current_time(timezone="Pacific/Kiritimati")
{"day_of_week": now["day_of_week"]}
"""


async def _verify_team(ws: Workspace) -> str | None:
    assert ws.hub is not None
    graph = await ws.hub.call_tool("memory", "read_graph", {})
    people = sorted(e["name"] for e in graph["entities"] if e["entityType"] == "person")
    relations = sorted((r["from"], r["to"]) for r in graph["relations"] if r["relationType"] == "reports_to")
    want = sorted((p["name"], p["manager"]) for p in ws.team if p["manager"])
    if people != sorted(p["name"] for p in ws.team) or relations != want:
        return f"memory graph holds {len(people)} people / {len(relations)} relations, not the team"
    return None


async def _verify_report(ws: Workspace) -> str | None:
    path = ws.root / "reports" / "projects.md"
    if not path.exists():
        return "reports/projects.md was not written"
    if path.read_text() != ws.projects_report():
        return "reports/projects.md does not hold the expected report"
    return None


_WEEKDAY_PROMPT = "What day of the week is it right now in the Pacific/Kiritimati time zone?"

TASKS: tuple[Task, ...] = (
    Task(
        name="file_chain",
        shape="long chain: 12 reads, each path comes from the previous file",
        servers=("filesystem",),
        prompt="Start at {root}/chain/start.txt. Each file names the next one on its `next:` line (a path "
        "relative to {root}); the last file has a `secret:` line instead. Follow the chain and return "
        'JSON {"secret": ..., "files": <number of files in the chain>}.',
        direct=chain_best,
        naive=chain_direct,
        search="read a text file",
        stubs=("filesystem.read_text_file",),
        program=CHAIN_PROGRAM,
        expected=lambda ws: {"secret": ws.chain_secret, "files": ws.chain_files},
    ),
    Task(
        name="log_errors",
        shape="large intermediate result: a 3,000-line log, only a count is needed",
        servers=("filesystem",),
        prompt="Which component logged the most ERROR lines in {root}/logs/app.log (format: timestamp, level, "
        'component, ...), and how many? Return JSON {"component": ..., "errors": ..., "total_errors": '
        "<ERROR lines in all>}.",
        direct=log_direct,
        search="read a text file",
        stubs=("filesystem.read_text_file",),
        program=LOG_PROGRAM,
        expected=lambda ws: ws.log_truth,
    ),
    Task(
        name="meetings_tokyo",
        shape="cross-server fan-out: 1 file read, then 24 independent time conversions",
        servers=("filesystem", "time"),
        prompt="{root}/meetings/schedule.json lists meetings with a local start time and IANA time zone. Convert "
        "each start time to Asia/Tokyo with the time tools and return the ids of the meetings that start "
        'between 09:00 and 17:59 Tokyo time: JSON {"ids": [sorted ids], "count": ...}.',
        direct=meetings_direct,
        search="convert a time between time zones; read a file",
        stubs=("filesystem.read_text_file", "time.convert_time"),
        program=MEETINGS_PROGRAM,
        expected=lambda ws: ws.meetings_truth(),
    ),
    Task(
        name="shop_restock",
        shape="fan-out: list 40 products, then 40 independent lookups",
        servers=("shop",),
        prompt="Find every shop product whose stock is below its reorder level. Return JSON "
        '{"skus": [sorted SKUs], "restock_cost": <EUR, rounded to cents, to bring each up to twice its '
        "reorder level at its unit price>}.",
        direct=restock_direct,
        search="product stock and reorder level",
        stubs=("shop.list_products", "shop.get_product"),
        program=RESTOCK_PROGRAM,
        expected=lambda ws: shop_restock_truth(),
    ),
    Task(
        name="shop_refunds",
        shape="paginated chain: 10 pages, each cursor comes from the previous page",
        servers=("shop",),
        prompt="Go through every shop order (list_orders is paginated: follow next_cursor until it is null) and "
        'return JSON {"refunded_by_region": {region: EUR total rounded to cents}, "refunded_orders": '
        "<count>} for orders with status refunded.",
        direct=refunds_direct,
        search="list orders",
        stubs=("shop.list_orders",),
        program=REFUNDS_PROGRAM,
        expected=lambda ws: shop_refunds_truth(),
    ),
    Task(
        name="team_to_memory",
        shape="cross-server write: read a CSV, store 18 entities + 17 relations in memory",
        servers=("filesystem", "memory"),
        prompt="Record the team in {root}/team/team.csv (name, role, manager) in the memory knowledge graph: one "
        'entity per person (entityType "person", one observation "role: <role>") and a "reports_to" '
        "relation from each person to their manager. Then return JSON "
        '{"manager": <who has the most direct reports>, "direct_reports": ..., "entities": <stored>, '
        '"relations": <stored>}.',
        direct=team_direct,
        search="create entities and relations in the knowledge graph; read a file",
        stubs=("filesystem.read_text_file", "memory.create_entities", "memory.create_relations"),
        program=TEAM_PROGRAM,
        expected=lambda ws: ws.team_truth(),
        setup=lambda ws: ws.clear_memory(),
        verify=_verify_team,
    ),
    Task(
        name="graph_report",
        shape="cross-server: read the memory graph, write a report file",
        servers=("filesystem", "memory"),
        prompt="The memory knowledge graph holds projects (observations `status: ...`, `owner: ...`, "
        "`budget_keur: ...`). Write {root}/reports/projects.md with one line per status, sorted: "
        "`<status>: <count> - <project names, sorted, comma-separated>`. Return JSON "
        '{"active": <active projects>, "active_budget_keur": <their total budget>}.',
        direct=projects_direct,
        search="read the knowledge graph; write a file",
        stubs=("memory.read_graph", "filesystem.write_file"),
        program=PROJECTS_PROGRAM,
        expected=lambda ws: ws.projects_truth(),
        setup=lambda ws: ws.seed_projects(),
        verify=_verify_report,
    ),
    Task(
        name="weekday_41_tools",
        shape="one call, small result, 41 tools connected (all five servers)",
        servers=ALL_SERVERS,
        prompt=_WEEKDAY_PROMPT + ' Return JSON {"day_of_week": ...}.',
        direct=weekday_direct,
        search="current time in a time zone",
        stubs=("time.get_current_time",),
        program=WEEKDAY_PROGRAM,
        expected=lambda ws: {"day_of_week": weekday_now("Pacific/Kiritimati")},
        live=True,
    ),
    Task(
        name="weekday_2_tools",
        shape="one call, small result, 2 tools connected (time server only)",
        servers=("time",),
        prompt=_WEEKDAY_PROMPT + ' Return JSON {"day_of_week": ...}.',
        direct=weekday_direct,
        search="current time in a time zone",
        stubs=("time.get_current_time",),
        program=WEEKDAY_PROGRAM,
        expected=lambda ws: {"day_of_week": weekday_now("Pacific/Kiritimati")},
        live=True,
    ),
)


# -- untyped servers (git, sqlite), server-side SQL, every server at once -------------------------
# Their tools declare no output schema: the stubs say `Content`, so code mode
# first runs a probe to see the text a tool returns, then the program that
# parses it. The direct scripts read the same text, as the model would.


def _git_config_changes(commits: list[tuple[str, str]], shows: list[str]) -> dict[str, Any]:
    touched, added = [], 0
    for (_, message), show in zip(commits, shows, strict=True):
        if diff := re.search(r"^\+\+\+ b/config\.toml\n(.*?)(?=^--- |\Z)", show, re.M | re.S):
            touched.append(message)
            added += sum(1 for line in diff.group(1).splitlines() if line.startswith("+"))
    return {"commits": sorted(touched), "lines_added": added}


async def authors_direct(calls: Calls, ws: Workspace) -> Any:
    log = await calls.call("git", "git_log", {"repo_path": str(ws.repo), "max_count": 50})
    ((author, n),) = Counter(re.findall(r"^Author: (.+)$", log, re.M)).most_common(1)
    return {"author": author, "commits": n}


async def config_direct(calls: Calls, ws: Workspace) -> Any:
    log = await calls.call("git", "git_log", {"repo_path": str(ws.repo), "max_count": 12})
    commits = re.findall(r"^Commit: (\w+)\n.*?^Message: (.+?)$", log, re.M | re.S)
    shows = await calls.parallel([("git", "git_show", {"repo_path": str(ws.repo), "revision": c}) for c, _ in commits])
    return _git_config_changes(commits, shows)


def _rows(text: str) -> list[dict[str, Any]]:
    # The model reads the server's text (a Python repr of the rows) as it is.
    rows: list[dict[str, Any]] = ast.literal_eval(text)
    return rows


_OCTOBER_SQL = (
    "SELECT region, SUM(qty * unit_price_cents) AS cents FROM sales WHERE day LIKE '2026-10%' "
    "GROUP BY region ORDER BY region"
)
_MONTHLY_SQL = (
    "SELECT substr(day, 1, 7) AS month, region, SUM(qty * unit_price_cents) AS cents FROM sales "
    "GROUP BY month, region ORDER BY month, region"
)
_BEST_MONTH_SQL = (
    "SELECT substr(day, 1, 7) AS month FROM sales GROUP BY month ORDER BY SUM(qty * unit_price_cents) DESC LIMIT 1"
)


def _october_answer(text: str) -> Any:
    """The answer a model writes from the GROUP BY's rows, as the server gave them."""
    revenue = {r["region"]: r["cents"] for r in _rows(text)}
    return {"revenue_cents": revenue, "best_region": max(revenue, key=lambda r: revenue[r])}


async def october_direct(calls: Calls, ws: Workspace) -> Any:
    return _october_answer(await calls.call("sqlite", "read_query", {"query": _OCTOBER_SQL}))


async def october_naive(calls: Calls, ws: Workspace) -> Any:
    """Fetches October's rows and sums them in context, instead of asking SQL to."""
    query = "SELECT region, qty, unit_price_cents FROM sales WHERE day LIKE '2026-10%'"
    revenue: Counter[str] = Counter()
    for r in _rows(await calls.call("sqlite", "read_query", {"query": query})):
        revenue[r["region"]] += r["qty"] * r["unit_price_cents"]
    return {"revenue_cents": dict(sorted(revenue.items())), "best_region": revenue.most_common(1)[0][0]}


async def monthly_direct(calls: Calls, ws: Workspace) -> Any:
    monthly, best = await calls.parallel(
        [("sqlite", "read_query", {"query": _MONTHLY_SQL}), ("sqlite", "read_query", {"query": _BEST_MONTH_SQL})]
    )
    rows = _rows(monthly)
    report = "month,region,revenue_cents\n" + "".join(f"{r['month']},{r['region']},{r['cents']}\n" for r in rows)
    await calls.call("filesystem", "write_file", {"path": f"{ws.root}/reports/sales_by_month.csv", "content": report})
    return {"rows": len(rows), "best_month": _rows(best)[0]["month"]}


async def restock_sql_direct(calls: Calls, ws: Workspace) -> Any:
    skus = [p["sku"] for p in await calls.call("shop", "list_products", {})]
    products = await calls.parallel([("shop", "get_product", {"sku": sku}) for sku in skus])
    low = sorted((p["sku"], 2 * p["reorder_level"] - p["stock"]) for p in products if p["stock"] < p["reorder_level"])
    values = ", ".join(f"('{sku}', {qty})" for sku, qty in low)
    await calls.call("sqlite", "write_query", {"query": f"INSERT INTO restock (sku, qty) VALUES {values}"})
    return {"skus": [sku for sku, _ in low], "units": sum(qty for _, qty in low)}


GIT_PROBE = """\
await git.git_log(repo_path="{root}/repo", max_count=2)
"""

AUTHORS_PROGRAM = """\
import re
from collections import Counter
log = await git.git_log(repo_path="{root}/repo", max_count=50)
author, n = Counter(re.findall(r"^Author: (.+)$", log, re.M)).most_common(1)[0]
{"author": author, "commits": n}
"""

CONFIG_PROBE = """\
[await git.git_log(repo_path="{root}/repo", max_count=1), await git.git_show(repo_path="{root}/repo", revision="HEAD")]
"""

CONFIG_PROGRAM = """\
import asyncio, re
repo = "{root}/repo"
log = await git.git_log(repo_path=repo, max_count=12)
commits = re.findall(r"^Commit: (\\w+)\\n.*?^Message: (.+?)$", log, re.M | re.S)
shows = await asyncio.gather(*(git.git_show(repo_path=repo, revision=sha) for sha, _ in commits))
touched, added = [], 0
for (sha, message), show in zip(commits, shows):
    if diff := re.search(r"^\\+\\+\\+ b/config\\.toml\\n(.*?)(?=^--- |\\Z)", show, re.M | re.S):
        touched.append(message)
        added += sum(1 for line in diff.group(1).splitlines() if line.startswith("+"))
{"commits": sorted(touched), "lines_added": added}
"""

SQL_PROBE = """\
await sqlite.read_query(query="SELECT day, region, qty, unit_price_cents FROM sales LIMIT 2")
"""

MONTHLY_PROGRAM = """\
import re
from collections import Counter
rows = re.findall(r"'month': '([^']*)', 'region': '([^']*)', 'cents': (\\d+)", await sqlite.read_query(query="SQL"))
report = "month,region,revenue_cents\\n" + "".join(f"{m},{r},{c}\\n" for m, r, c in rows)
await filesystem.write_file(path="{root}/reports/sales_by_month.csv", content=report)
by_month = Counter()
for m, _, c in rows:
    by_month[m] += int(c)
{"rows": len(rows), "best_month": by_month.most_common(1)[0][0]}
""".replace('"SQL"', f'"{_MONTHLY_SQL}"')

RESTOCK_SQL_PROGRAM = """\
import asyncio
products = await asyncio.gather(*(shop.get_product(sku=p["sku"]) for p in await shop.list_products()))
low = sorted((p["sku"], 2 * p["reorder_level"] - p["stock"]) for p in products if p["stock"] < p["reorder_level"])
values = ", ".join(f"('{sku}', {qty})" for sku, qty in low)
await sqlite.write_query(query=f"INSERT INTO restock (sku, qty) VALUES {values}")
{"skus": [sku for sku, _ in low], "units": sum(qty for _, qty in low)}
"""


def restock_sql_truth() -> dict[str, Any]:
    low = sorted(
        (p["sku"], 2 * p["reorder_level"] - p["stock"])
        for p in shop_server.catalog().values()
        if p["stock"] < p["reorder_level"]
    )
    return {"skus": [sku for sku, _ in low], "units": sum(qty for _, qty in low)}


async def _empty_restock(ws: Workspace) -> None:
    with sqlite3.connect(ws.db) as conn:
        conn.execute("DROP TABLE IF EXISTS restock")
        conn.execute("CREATE TABLE restock (sku TEXT, qty INTEGER)")
    conn.close()


async def _verify_restock(ws: Workspace) -> str | None:
    with sqlite3.connect(ws.db) as conn:
        rows = sorted(conn.execute("SELECT sku, qty FROM restock").fetchall())
    conn.close()
    truth = restock_sql_truth()
    if [sku for sku, _ in rows] != truth["skus"] or sum(q for _, q in rows) != truth["units"]:
        return f"the restock table holds {len(rows)} rows, not the low-stock products"
    return None


async def _clear_monthly(ws: Workspace) -> None:
    (ws.root / "reports" / "sales_by_month.csv").unlink(missing_ok=True)


async def _verify_monthly(ws: Workspace) -> str | None:
    path = ws.root / "reports" / "sales_by_month.csv"
    want = "month,region,revenue_cents\n" + "".join(f"{m},{r},{c}\n" for m, r, c in ws.monthly_rows())
    if not path.exists() or path.read_text() != want:
        return "reports/sales_by_month.csv does not hold the expected report"
    return None


_SALES_SCHEMA = (
    "The sqlite database has a table sales(id INTEGER, day TEXT 'YYYY-MM-DD', region TEXT, product TEXT, "
    "qty INTEGER, unit_price_cents INTEGER); revenue is qty * unit_price_cents."
)

TASKS += (
    Task(
        name="git_authors",
        shape="untyped server (git): one log of 50 commits, count authors",
        servers=("git",),
        prompt="In the git repository {root}/repo, who authored the most of the last 50 commits, and how many? "
        'Return JSON {"author": <name>, "commits": ...}.',
        direct=authors_direct,
        search="git commit log",
        stubs=("git.git_log",),
        probe=GIT_PROBE,
        program=AUTHORS_PROGRAM,
        expected=lambda ws: ws.authors_truth(),
    ),
    Task(
        name="git_config_changes",
        shape="untyped server (git): log, then 12 independent shows with diffs",
        servers=("git",),
        prompt="In the git repository {root}/repo, which of the last 12 commits changed config.toml, and how many "
        'lines did they add to it in all? Return JSON {"commits": [their messages, sorted], "lines_added": ...}.',
        direct=config_direct,
        search="git commit log; show a commit",
        stubs=("git.git_log", "git.git_show"),
        probe=CONFIG_PROBE,
        program=CONFIG_PROGRAM,
        expected=lambda ws: ws.config_truth(),
    ),
    Task(
        name="sql_october",
        shape="server-side SQL does the work: one GROUP BY query (naive: fetch the rows)",
        servers=("sqlite",),
        prompt=_SALES_SCHEMA + " What was the revenue per region in October 2026? Return JSON "
        '{"revenue_cents": {region: cents}, "best_region": <region with the most>}.',
        direct=october_direct,
        naive=october_naive,
        search="run a SQL select query",
        stubs=("sqlite.read_query",),
        # One call whose rows the model reads as direct does: no probe, no parsing in code.
        program=f'await sqlite.read_query(query="{_OCTOBER_SQL}")',
        answer_from_text=_october_answer,
        expected=lambda ws: ws.october_truth(),
    ),
    Task(
        name="sql_monthly_report",
        shape="server-side SQL, then a file: 2 queries, write a 60-row CSV",
        servers=("sqlite", "filesystem"),
        prompt=_SALES_SCHEMA + " Write {root}/reports/sales_by_month.csv with the header "
        "`month,region,revenue_cents` and one line per month (YYYY-MM) and region, sorted by month then region. "
        'Return JSON {"rows": <data lines>, "best_month": <month with the highest total revenue>}.',
        direct=monthly_direct,
        search="run a SQL select query; write a file",
        stubs=("sqlite.read_query", "filesystem.write_file"),
        probe=SQL_PROBE,
        program=MONTHLY_PROGRAM,
        expected=lambda ws: ws.monthly_truth(),
        setup=_clear_monthly,
        verify=_verify_monthly,
    ),
    Task(
        name="restock_every_server",
        shape="every server connected (all seven): 40 lookups, one SQL insert",
        servers=EVERY_SERVER,
        prompt="Find every shop product whose stock is below its reorder level and record each in the sqlite "
        "table restock(sku TEXT, qty INTEGER) (it exists and is empty), with qty = 2 × reorder level − stock, "
        'in one INSERT. Return JSON {"skus": [sorted SKUs], "units": <total qty>}.',
        direct=restock_sql_direct,
        search="product stock and reorder level; insert rows with a SQL query",
        stubs=("shop.list_products", "shop.get_product", "sqlite.write_query"),
        program=RESTOCK_SQL_PROGRAM,
        expected=lambda ws: restock_sql_truth(),
        setup=_empty_restock,
        verify=_verify_restock,
    ),
)
