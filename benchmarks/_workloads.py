"""The token benchmark's tasks: multi-step work over real MCP servers.

The servers are the pinned public reference servers (filesystem over a
generated tree, memory, everything, time) plus `fixtures/shop_server.py` for
the shapes they lack. Every task carries two scripts, written as a competent
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

import csv
import io
import json
import random
import re
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
from tests.reference_servers import npm_bin, time_server

__all__ = ["ALL_SERVERS", "TASKS", "Calls", "Task", "Workspace", "server_config"]

SEED = 1121
ALL_SERVERS = ("filesystem", "memory", "everything", "time", "shop")
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

    def render(self, text: str, ws: Workspace) -> str:
        return text.replace("{root}", str(ws.root))


def server_config(root: Path, memory_file: Path) -> Config:
    """An `mcpServers` config for every benchmark server."""
    time_cmd = time_server()
    return parse_config(
        {
            "mcpServers": {
                "filesystem": {"command": str(npm_bin("mcp-server-filesystem")), "args": [str(root)]},
                "memory": {"command": str(npm_bin("mcp-server-memory")), "env": {"MEMORY_FILE_PATH": str(memory_file)}},
                "everything": {"command": str(npm_bin("mcp-server-everything")), "args": ["stdio"]},
                "time": {"command": time_cmd[0], "args": time_cmd[1:]},
                "shop": {"command": sys.executable, "args": [str(_SHOP)]},
            }
        }
    )


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

    # -- ground truth --------------------------------------------------------------------------

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
