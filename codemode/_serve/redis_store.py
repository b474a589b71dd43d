"""Runs kept in Redis, so that any replica of a fleet answers for any run.

Every replica of `codemode serve --store redis://…` is equal: it enqueues the
runs it is sent, carries out runs it takes from the shared queue, and reads,
streams and cancels any run. One Redis (or Valkey) holds, under `prefix`:

    run:{id}        hash     owner, status, code until it ran, limits, times, error, replica
    ev:{id}         stream   the run's events; entry ids are 0-1, 0-2, … (the running replica
                             numbers them; the end entry is `XADD 0-*`), so the
                             SSE `id:` and `Last-Event-ID` stay the small integers they are in
                             memory; the last entry ({end: 1, result, status, …}) says the run
                             finished and holds its result, so a subscriber reads nothing more
    queue           list     ids of runs no replica has taken
    taken:{replica} list     ids a replica took (`BLMOVE` from `queue`): running or about to
    lease:{replica} string   set with a TTL of `lease_s`, renewed three times a lease
    replicas        set      replicas that hold or held a lease
    finished        zset     finished run ids by finish time (server clock): retention
    bytes, sizes    int/hash what all runs hold, and what each holds: the byte budget
    gone:{id}       string   owner and why a forgotten run is gone (kept 24 h)
    cancel          channel  ids of runs to cancel

The queue is the "reliable queue" pattern (`BLMOVE` into a per-replica list),
not a stream consumer group: a consumer group's pending list is built to
re-deliver unacknowledged work (at-least-once), and a run's tool calls have
side effects, so a run must never be carried out twice. With one list per
replica, whoever finds a dead replica decides, in one Lua script, run by run:
a run it had started fails with `replica_lost`; a run it had only taken goes
back to the queue. A replica takes a run only when it has a free slot, so runs
wait in the shared queue, where any replica with room takes them; `POST
/v1/runs` answers 429 only when that queue holds `max_queued` runs. A run sent
to a replica that has a free slot while nobody waits starts there at once,
skipping the queue (two round trips fewer). Task
engines (arq, rq, saq, taskiq) were not used: they retry or re-deliver on
worker loss, keep their own result format, and would add a dependency for a
queue that is three Redis commands here.

Every state change of a run is one Lua script, so two replicas never both
finish, reap or start the same run; a replica that was taken for dead (it
missed its lease) finds its runs no longer its own and stops them, and its
late result is not written.

The replica carrying out a run answers for it without asking Redis: its info
(running, or the end it wrote) and its event stream (events are read back only
when it wrote some the subscriber has not seen; the end, never). Redis holds
the same, since this replica is the only writer of a run it carries out; a run
that stops being its own (its lease lapsed, seen at the next renewal) is read
from Redis again. That leaves two round trips on a short run's path: the
submit and the end.

Cancel: `DELETE` on any replica marks the run and publishes its id; the
replica carrying it out cancels it on the message (sub-millisecond on a LAN),
and checks the mark at each lease renewal in case the message was missed.

Trust: Redis is trusted like this process's memory (anyone who can write to it
can run code with the fleet's tools); give it a password and a private network.
Times used for retention are Redis's clock, so replicas' clocks may differ.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from .._errors import CodemodeError, StoreUnavailable
from .._limits import Limits
from .runs import Admission, Busy, Executor, _json, _mb, _preview_event, _preview_result
from .store import Event

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised by installs without the extra
    raise ImportError(
        "a Redis run store needs the Redis client: pip install 'codemode[redis]' (or serve with --store memory)"
    ) from exc

__all__ = ["RedisRunStore"]

logger = logging.getLogger("codemode.http")

_GONE_TTL_S = 86_400
_FIELDS = ["owner", "status", "created_at", "started_at", "finished_at", "error", "replica"]
_BATCH = 200
_MAX_BLOCK_S = 2.0
"""Longest one blocking XREAD waits: well inside redis-py's socket timeout (5 s by
default in redis-py 8), past which the read fails instead of coming back empty."""

# Shared by the scripts below: finish run `id` (status, result and error as JSON
# text, "" for none) if it is `from_status` (and, if `owner_replica` is not "",
# carried out by that replica). Marks the end of its event stream, records it
# for retention and drops it from the replica's taken list.
_FINISH = """
local P = KEYS[1]
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function finish(id, status, result, err, held)
  local run = P .. 'run:' .. id
  local replica = redis.call('HGET', run, 'replica')
  local code = redis.call('HGET', run, 'code') or ''
  local at = now()
  redis.call('HSET', run, 'status', status, 'error', err, 'finished_at', tostring(at))
  redis.call('HDEL', run, 'code', 'limits')
  local delta = tonumber(held) - string.len(code)
  redis.call('HINCRBY', P .. 'sizes', id, delta)
  redis.call('INCRBY', P .. 'bytes', delta)
  redis.call('ZADD', P .. 'finished', at, id)
  -- The end entry holds the result (kept only here) and the rest of the run's info,
  -- so a subscriber has the whole answer without reading the run again.
  local entry = {P .. 'ev:' .. id, '0-*', 'end', '1', 'status', status, 'finished_at', tostring(at),
    'result', result, 'error', err}
  local rest = redis.call('HMGET', run, 'created_at', 'started_at', 'replica')
  for i, name in ipairs({'created_at', 'started_at', 'replica'}) do
    if rest[i] then table.insert(entry, name); table.insert(entry, rest[i]) end
  end
  redis.call('XADD', unpack(entry))
  if replica then redis.call('LREM', P .. 'taken:' .. replica, 0, id) end
  return at
end
"""

# Forget finished runs past `ttl`, then the oldest beyond `max_finished`, then the
# oldest while all runs hold more than `max_bytes`; at most 200 a call.
_PRUNE_FN = """
local function prune(ttl, max_finished, max_bytes, gone_ttl, why_ttl, why_count, why_bytes)
  local t = now()
  local n = 0
  while n < 200 do
    local first = redis.call('ZRANGE', P .. 'finished', 0, 0, 'WITHSCORES')
    if #first == 0 then break end
    local id, at = first[1], tonumber(first[2])
    local why
    if t - at > tonumber(ttl) then why = why_ttl
    elseif redis.call('ZCARD', P .. 'finished') > tonumber(max_finished) then why = why_count
    elseif tonumber(redis.call('GET', P .. 'bytes') or '0') > tonumber(max_bytes) then why = why_bytes
    else break end
    local run = P .. 'run:' .. id
    local owner = redis.call('HGET', run, 'owner')
    redis.call('DECRBY', P .. 'bytes', tonumber(redis.call('HGET', P .. 'sizes', id) or '0'))
    redis.call('HDEL', P .. 'sizes', id)
    redis.call('DEL', run, P .. 'ev:' .. id)
    redis.call('ZREM', P .. 'finished', id)
    if owner then redis.call('SET', P .. 'gone:' .. id, owner .. '\\n' .. why, 'EX', gone_ttl) end
    n = n + 1
  end
  return n
end
"""

# KEYS[1]=prefix; ARGV: id owner code limits trace created_at max_queued here -> 0 if the queue is
# full; 2 if started at once by replica `here` (it has room: "" if not) as nobody waits; else 1, queued
_SUBMIT = """
local P = KEYS[1]
local waiting = redis.call('LLEN', P .. 'queue')
local here = ARGV[8] ~= '' and waiting == 0
if not here and waiting >= tonumber(ARGV[7]) then return 0 end
local run = P .. 'run:' .. ARGV[1]
redis.call('HSET', run, 'owner', ARGV[2], 'status', 'queued', 'code', ARGV[3], 'limits', ARGV[4],
  'trace', ARGV[5], 'created_at', ARGV[6])
local size = string.len(ARGV[3])
redis.call('HSET', P .. 'sizes', ARGV[1], size)
redis.call('INCRBY', P .. 'bytes', size)
if here then
  redis.call('HSET', run, 'status', 'running', 'replica', ARGV[8], 'started_at', ARGV[6])
  redis.call('LPUSH', P .. 'taken:' .. ARGV[8], ARGV[1])
  return 2
end
redis.call('LPUSH', P .. 'queue', ARGV[1])
return 1
"""

# ARGV: id replica started_at -> {code, limits, trace, owner, created_at} if the run was queued (now running), else false
_CLAIM = """
local P = KEYS[1]
local run = P .. 'run:' .. ARGV[1]
if redis.call('HGET', run, 'status') ~= 'queued' then
  redis.call('LREM', P .. 'taken:' .. ARGV[2], 0, ARGV[1])
  return false
end
redis.call('HSET', run, 'status', 'running', 'replica', ARGV[2], 'started_at', ARGV[3])
return redis.call('HMGET', run, 'code', 'limits', 'trace', 'owner', 'created_at')
"""

# ARGV: id replica -> 1 if the queued run went back to the head of the queue
_GIVE_BACK = """
local P = KEYS[1]
if redis.call('HGET', P .. 'run:' .. ARGV[1], 'status') ~= 'queued' then return 0 end
redis.call('LREM', P .. 'taken:' .. ARGV[2], 0, ARGV[1])
redis.call('RPUSH', P .. 'queue', ARGV[1])
return 1
"""

# ARGV: id replica status result error held, then the seven of `prune` (run once the
# run is recorded: one round trip for both) -> {1, finished_at} if written, 0 if the run is no longer this replica's
_COMPLETE = (
    _FINISH
    + _PRUNE_FN
    + """
local run = P .. 'run:' .. ARGV[1]
if redis.call('HGET', run, 'status') ~= 'running' or redis.call('HGET', run, 'replica') ~= ARGV[2] then
  redis.call('LREM', P .. 'taken:' .. ARGV[2], 0, ARGV[1])
  return 0
end
local at = finish(ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
prune(unpack(ARGV, 7, 13))
return {1, tostring(at)}
"""
)

# ARGV: id -> the status before: a queued run is cancelled here; a running one is marked and announced
_CANCEL = (
    _FINISH
    + """
local run = P .. 'run:' .. ARGV[1]
local status = redis.call('HGET', run, 'status')
if status == 'queued' then
  redis.call('LREM', P .. 'queue', 0, ARGV[1])
  finish(ARGV[1], 'cancelled', '', '', 0)
elseif status == 'running' then
  redis.call('HSET', run, 'cancel', '1')
  redis.call('PUBLISH', P .. 'cancel', ARGV[1])
end
return status
"""
)

# ARGV: replica error-json -> runs failed, runs requeued; nothing if its lease is back
_REAP = (
    _FINISH
    + """
if redis.call('EXISTS', P .. 'lease:' .. ARGV[1]) == 1 then return {0, 0} end
local taken = P .. 'taken:' .. ARGV[1]
local lost, requeued = 0, 0
for _, id in ipairs(redis.call('LRANGE', taken, 0, -1)) do
  local run = P .. 'run:' .. id
  local status = redis.call('HGET', run, 'status')
  if status == 'running' and redis.call('HGET', run, 'replica') == ARGV[1] then
    finish(id, 'failed', '', ARGV[2], string.len(ARGV[2]))
    lost = lost + 1
  elseif status == 'queued' then
    redis.call('RPUSH', P .. 'queue', id)
    requeued = requeued + 1
  end
end
redis.call('DEL', taken)
redis.call('SREM', P .. 'replicas', ARGV[1])
return {lost, requeued}
"""
)

# ARGV: the seven arguments of `prune` -> runs forgotten
_PRUNE = _FINISH + _PRUNE_FN + "return prune(unpack(ARGV, 1, 7))\n"


def _problem(code: str, detail: str, status: int) -> dict[str, Any]:
    return {"code": code, "title": "The run could not be carried out", "detail": detail, "status": status}


@dataclass(eq=False)
class _Local:
    """A run this replica took: its cancel scope and the events not yet written."""

    id: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    cancelled_by_user: bool = False
    lost: bool = False
    pending: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    """(seq, event) not yet written; seq counts every event, written or not."""
    next_seq: int = 1
    flushing: bool = False
    """A task is writing its pending events (see `_drain`)."""
    write_error: StoreUnavailable | RedisError | None = None
    sizes: deque[int] = field(default_factory=deque)
    """Sizes of the events in Redis (the last `max_events`), for the byte budget."""
    held: int = 0
    writing: anyio.Lock = field(default_factory=anyio.Lock)
    """One batch of events in flight at a time, so they reach the stream in order."""
    owner: str = ""
    """Set once the run is running here, with its times as Redis holds them."""
    created_at: str = ""
    started_at: str = ""
    written: int = 0
    """The seq of the last event written to the stream."""
    changed: anyio.Event = field(default_factory=anyio.Event)
    """Set (and replaced) when events were written, and when the run ended."""
    done: bool = False
    """Set as the run ends, before its end is written."""
    closed: bool = False
    """Set once its end was written (or could not be): nothing more will change here."""
    end: dict[str, str] | None = None
    """The fields of the stream's end entry, once written: what a subscriber here is given."""

    def wake_subscribers(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class RedisRunStore:
    """A `store.Runs` in Redis, shared by every replica; an async context manager
    that, while open, renews this replica's lease, takes runs from the queue up
    to the local capacity, listens for cancels and finds dead replicas.

    Raises `StoreUnavailable` (on open, or from any method) if Redis cannot be reached."""

    def __init__(
        self,
        url: str,
        executor: Executor,
        admission: Admission,
        *,
        replica_id: str,
        ttl_s: float = 600.0,
        max_finished: int = 200,
        max_events: int = 1_000,
        max_bytes: int = 256 * 2**20,
        max_queued: int = 16,
        lease_s: float = 5.0,
        retry_after_s: int = 1,
        prefix: str = "codemode:",
    ) -> None:
        self.url = url
        self.executor = executor
        self.admission = admission
        self.replica_id = replica_id
        # This process's name in Redis: a restarted replica with the same id is another
        # incarnation, so its predecessor's runs are still found dead.
        self.me = f"{replica_id}~{secrets.token_hex(4)}"
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self.max_events = max_events
        self.max_bytes = max_bytes
        # Every run passes through the queue, so it holds at least one (`--queue 0` still serves).
        self.max_queued = max(1, max_queued)
        self.lease_s = lease_s
        self.retry_after_s = retry_after_s
        self.prefix = prefix
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, encoding_errors="surrogatepass", health_check_interval=30
        )
        self._scripts = {
            name: self.redis.register_script(text)
            for name, text in [
                ("submit", _SUBMIT),
                ("claim", _CLAIM),
                ("give_back", _GIVE_BACK),
                ("complete", _COMPLETE),
                ("cancel", _CANCEL),
                ("reap", _REAP),
                ("prune", _PRUNE),
            ]
        }
        self._local: dict[str, _Local] = {}
        self._dirty: dict[str, _Local] = {}
        """Runs with events to write and no writer yet (see `_publish`)."""
        self._dirty_wake = anyio.Event()
        self._intake = True
        self._room = anyio.Event()
        self._tg: TaskGroup | None = None
        self._runs_tg: TaskGroup | None = None

    def _key(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    async def _call(self, what: str, awaitable: Awaitable[Any]) -> Any:
        """The answer (as redis-py gives it: untyped), or `StoreUnavailable`."""
        try:
            return await awaitable
        except RedisError as exc:
            raise StoreUnavailable(f"the run store (Redis) failed to {what}: {exc}") from exc

    async def _script(self, name: str, *args: Any) -> Any:
        return await self._call(f"run {name}", self._scripts[name](keys=[self.prefix], args=list(args)))

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.ping()
        await self._renew()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._runs_tg = anyio.create_task_group()
        await self._runs_tg.__aenter__()
        self._tg.start_soon(self._keep_lease)
        self._tg.start_soon(self._listen_for_cancels)
        self._tg.start_soon(self._start_writers)
        self._tg.start_soon(self._take_runs)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        """Stop taking runs, stop those running here (they fail with `shutting_down`),
        hand back runs taken but not started, and give up the lease."""
        self._intake = False
        runs_tg, self._runs_tg = self._runs_tg, None
        tg, self._tg = self._tg, None
        if runs_tg is not None:
            runs_tg.cancel_scope.cancel()
            await runs_tg.__aexit__(None, None, None)
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self.redis.delete(self._key("lease:", self.me))
                await self._reap(self.me)
            except (RedisError, StoreUnavailable) as exc:
                logger.warning("could not hand back this replica's runs on stopping: %s", exc)
            await self.redis.aclose()
        return None

    async def ping(self) -> None:
        await self._call("answer a ping", self.redis.ping())

    def stop_intake(self) -> None:
        self._intake = False
        self._room.set()

    # -- the `store.Runs` seam ----------------------------------------------------------------------------------------

    async def submit(self, code: str, limits: Limits, *, trace: bool, owner: str) -> dict[str, Any]:
        run_id = "run_" + secrets.token_urlsafe(12)
        created = time.time()
        limits_json = json.dumps(dataclasses.asdict(limits))
        # With a free slot here and nobody waiting, the run starts here: two round trips fewer.
        runs_tg = self._runs_tg
        here = self._intake and runs_tg is not None and self.admission.has_room
        ticket = self.admission.reserve(queued_elsewhere=True) if here else None  # the slot, held from now
        local = self._local[run_id] = _Local(run_id)
        answer: Any = None
        try:
            answer = await self._script(
                "submit",
                run_id,
                owner,
                code,
                limits_json,
                "1" if trace else "",
                repr(created),
                self.max_queued,
                self.me if here else "",
            )
        finally:
            if ticket is not None and answer != 2:
                ticket.release()
                self._room.set()
            if answer != 2:
                self._local.pop(run_id, None)
        if not answer:
            raise Busy(self.retry_after_s)
        if answer == 2 and ticket is not None and runs_tg is not None:
            local.owner, local.created_at = owner, repr(created)
            local.started_at = local.created_at
            runs_tg.start_soon(self._drive, local, ticket, [code, limits_json, "1" if trace else ""])
        return {
            "id": run_id,
            "status": "running" if answer == 2 else "queued",
            "created_at": created,
            "started_at": created if answer == 2 else None,
            "finished_at": None,
            "result": None,
            "error": None,
            "replica": self.replica_id if answer == 2 else None,
        }

    async def info(self, run_id: str, owner: str) -> dict[str, Any] | None:
        local = self._here(run_id)
        if local is not None:  # what Redis holds for it, known without asking
            if local.owner != owner:
                return None
            if local.end is not None:
                return self._info(run_id, local.end)
            return self._info(
                run_id,
                {
                    "status": "running",
                    "created_at": local.created_at,
                    "started_at": local.started_at,
                    "replica": self.me,
                },
            )
        fields = await self._read(run_id)
        if not fields or fields.get("owner") != owner:
            return None
        return self._info(run_id, fields)

    def _here(self, run_id: str) -> _Local | None:
        """The run, if this replica carries it out and it is still its own (so
        what Redis holds for it is what this replica last wrote)."""
        local = self._local.get(run_id)
        return local if local is not None and local.owner and not local.lost else None

    async def _read(self, run_id: str) -> dict[str, str]:
        """The run's fields but its code, with the result from the end of its
        event stream (empty if the run is not kept)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._key("run:", run_id), _FIELDS)
            pipe.xrevrange(self._key("ev:", run_id), "+", "-", count=1)
            values, last = await self._call("read a run", pipe.execute())
        fields = {name: value for name, value in zip(_FIELDS, values) if value is not None}
        if fields and last and "end" in last[0][1]:
            fields["result"] = last[0][1].get("result", "")
        return fields

    @staticmethod
    def _info(run_id: str, fields: dict[str, str]) -> dict[str, Any]:
        def number(name: str) -> float | None:
            value = fields.get(name)
            return float(value) if value else None

        return {
            "id": run_id,
            "status": fields.get("status", "queued"),
            "created_at": number("created_at") or 0.0,
            "started_at": number("started_at"),
            "finished_at": number("finished_at"),
            "result": json.loads(fields["result"]) if fields.get("result") else None,
            "error": json.loads(fields["error"]) if fields.get("error") else None,
            "replica": fields.get("replica", "").split("~")[0] or None,
        }

    async def why_forgotten(self, run_id: str, owner: str) -> str | None:
        entry = await self._call("read a forgotten run", self.redis.get(self._key("gone:", run_id)))
        if not entry:
            return None
        who, _, why = entry.partition("\n")
        return why if who == owner else None

    async def events(self, run_id: str, after: int, ping_s: float) -> AsyncIterator[Event]:
        stream = self._key("ev:", run_id)
        first = True
        # A run carried out here is followed here (its end is known without reading it
        # back); held, not looked up again, since it leaves `_local` as it ends.
        local = self._here(run_id)
        quiet_since = anyio.current_time()
        while True:
            if local is not None and local.lost:
                local = None  # no longer this replica's: what Redis says is the truth
            if local is not None and local.written <= after:
                if local.end is not None:
                    yield "result", None, self._info(run_id, local.end)
                    return
                if local.closed:  # ended without writing its end here: read what Redis holds
                    local = None
                    continue
                if not await self._wait_here(local, ping_s):
                    yield "ping", None, None
                continue
            # Answers at once with what is there after `after`, else waits for it up to `ping_s`
            # (for a run carried out here there is something new: no need to wait).
            block = None if local is not None else max(1, int(min(ping_s, _MAX_BLOCK_S) * 1000))
            got = await self._call("read events", self.redis.xread({stream: f"0-{after}"}, count=_BATCH, block=block))
            entries = got[0][1] if got else []
            if not entries and local is not None:
                if not await self._wait_here(local, ping_s):
                    yield "ping", None, None
                continue
            if not entries:
                if anyio.current_time() - quiet_since < ping_s:
                    continue  # a read shorter than the ping interval came back empty: read again
                if not await self._call("read a run", self.redis.exists(self._key("run:", run_id))):
                    return  # forgotten while we waited
                quiet_since = anyio.current_time()
                yield "ping", None, None
                continue
            quiet_since = anyio.current_time()
            if first:
                lost = int(entries[0][0].split("-")[1]) - (after + 1)
                if lost > 0:
                    yield "events_dropped", None, {"count": lost}
                first = False
            for entry_id, data in entries:
                seq = int(entry_id.split("-")[1])
                after = seq
                if "end" in data:
                    yield "result", None, self._info(run_id, data)
                    return
                event = json.loads(data["e"])
                yield str(event.get("type", "event")), seq, event

    @staticmethod
    async def _wait_here(local: _Local, ping_s: float) -> bool:
        """Wait up to `ping_s` for a run carried out here to write events or end; False if it did neither."""
        changed = local.changed
        with anyio.move_on_after(ping_s) as waited:
            await changed.wait()
        return not waited.cancelled_caught

    async def decide(self, run_id: str, call_id: str, *, approved: bool, by: str, reason: str = "") -> bool:
        # A fleet's runs are given no approver (a decision would have to reach the replica
        # carrying the run out): a call that needs approval is refused at once, so none waits.
        return False

    async def cancel(self, run_id: str, wait_s: float) -> dict[str, Any] | None:
        await self._script("cancel", run_id)
        stream = self._key("ev:", run_id)
        with anyio.move_on_after(wait_s):
            while True:
                fields = await self._read(run_id)
                if not fields:
                    return None
                if fields.get("status") not in ("queued", "running"):
                    return self._info(run_id, fields)
                # Woken by the run's next event (its end, most likely), or in 0.1 s.
                await self._call("wait for a run", self.redis.xread({stream: "$"}, count=1, block=100))
        fields = await self._read(run_id)
        return self._info(run_id, fields) if fields else None

    # -- carrying out runs --------------------------------------------------------------------------------------------

    async def _take_runs(self) -> None:
        """Take a run from the queue whenever a local slot is free."""
        blocking = aioredis.Redis.from_url(self.url, decode_responses=True, encoding_errors="surrogatepass")
        try:
            while self._intake:
                if not self.admission.has_room:
                    self._room = anyio.Event()
                    with anyio.move_on_after(0.5):
                        await self._room.wait()
                    continue
                try:
                    run_id = await blocking.blmove(self._key("queue"), self._key("taken:", self.me), 1, "RIGHT", "LEFT")
                except RedisError as exc:
                    logger.warning("could not take runs from the store: %s; retrying", exc)
                    await anyio.sleep(1)
                    continue
                if run_id is None:
                    continue
                if not self._intake or self._runs_tg is None:
                    break  # left in our taken list: handed back when the store closes
                if not self.admission.has_room:
                    # A run submitted here took the slot while we waited: the run goes back, first in line.
                    try:
                        await self._script("give_back", str(run_id), self.me)
                    except StoreUnavailable as exc:  # left in our taken list: handed back when we stop
                        logger.error("could not hand back run %s: %s", run_id, exc)
                    continue
                local = self._local[str(run_id)] = _Local(str(run_id))
                # Started here, before the next BLMOVE, so that it starts at once.
                try:
                    started_at = repr(time.time())
                    claimed = await self._script("claim", local.id, self.me, started_at)
                except StoreUnavailable as exc:
                    # Left in our taken list: requeued (or failed, if it did start) when this replica stops.
                    logger.error("could not start run %s: %s", local.id, exc)
                    claimed = None
                if not claimed:  # cancelled while it waited in the queue
                    self._local.pop(local.id, None)
                    continue
                local.owner, local.created_at = str(claimed[3] or ""), str(claimed[4] or "")
                local.started_at = started_at
                ticket = self.admission.reserve(queued_elsewhere=True)
                self._runs_tg.start_soon(self._drive, local, ticket, claimed)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await blocking.aclose()

    async def _drive(self, local: _Local, ticket: Any, claimed: list[str]) -> None:
        """Carry out a run this replica has marked running, and record its end."""
        status, result_json, error_json = "cancelled", "", ""
        try:
            with local.scope:
                async with ticket:
                    code, limits_json, trace = claimed[:3]
                    limits = Limits(**json.loads(limits_json))
                    try:
                        result = await self.executor.run(code, limits, lambda e: self._publish(local, e))
                    finally:
                        await self._flush(local)
                    status = "succeeded" if result.ok else "failed"
                    result_json = _json(_preview_result(result).to_dict(trace=bool(trace)))
        except (StoreUnavailable, RedisError) as exc:
            logger.error("run %s: the run store failed: %s", local.id, exc)
            status, error_json = "failed", _json(_problem("store_unavailable", str(exc), 503))
        except Exception as exc:  # top level of a background task: becomes the run's typed failure
            logger.exception("run %s failed inside the service", local.id)
            if isinstance(exc, CodemodeError):
                problem = _problem(exc.code, exc.message, 503)
            else:
                problem = _problem("internal_error", "an unexpected error; see the server log", 500)
            status, error_json = "failed", _json(problem)
        finally:
            local.done = True
            ticket.release()
            self._room.set()
            if local.write_error is not None:
                logger.error("run %s: the run store failed: %s", local.id, local.write_error)
                status, error_json = "failed", _json(_problem("store_unavailable", str(local.write_error), 503))
            if not local.lost:
                if status == "cancelled" and not local.cancelled_by_user:
                    status = "failed"
                    error_json = _json(
                        _problem("shutting_down", "the replica carrying out the run stopped before it finished", 503)
                    )
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    try:
                        async with local.writing:  # an event write on its way lands before the end
                            held = len(result_json) + len(error_json) + local.held
                            written = await self._script(
                                "complete",
                                local.id,
                                self.me,
                                status,
                                result_json,
                                error_json,
                                held,
                                *self._prune_args(),
                            )
                        if not written:
                            logger.warning("run %s was taken from this replica (lease lost); result dropped", local.id)
                        else:
                            # What the end entry holds: subscribers here need not read it back.
                            local.end = {
                                "end": "1",
                                "status": status,
                                "finished_at": str(written[1]),
                                "result": result_json,
                                "error": error_json,
                                "created_at": local.created_at,
                                "started_at": local.started_at,
                                "replica": self.me,
                            }
                    except (StoreUnavailable, RedisError) as exc:
                        logger.error("run %s: could not record its end: %s", local.id, exc)
            local.closed = True
            self._local.pop(local.id, None)
            local.wake_subscribers()

    def _publish(self, local: _Local, event: dict[str, Any]) -> None:
        local.pending.append((local.next_seq, _preview_event(event)))
        local.next_seq += 1
        if len(local.pending) > self.max_events:
            # It would be trimmed from the stream anyway; its seq stays spent, so the
            # gap before the first event kept is what a late subscriber is told it missed.
            local.pending.popleft()
        if not local.flushing:
            # A writer only while there is something to write: a run without events starts none.
            # (Called from a loop callback, not a task, so the writer is started by `_start_writers`.)
            local.flushing = True
            self._dirty[local.id] = local
            self._dirty_wake.set()

    async def _start_writers(self) -> None:
        """Start `_drain` for each run `_publish` marked, as it marks them."""
        while True:
            await self._dirty_wake.wait()
            self._dirty_wake = anyio.Event()
            dirty = list(self._dirty.values())
            self._dirty.clear()
            for local in dirty:
                if self._runs_tg is None:
                    local.flushing = False  # stopping: `_drive` writes what is left
                else:
                    self._runs_tg.start_soon(self._drain, local)

    async def _drain(self, local: _Local) -> None:
        """Write a run's events as they come, until none is pending. A store that
        fails stops the run (it then fails with `store_unavailable`)."""
        try:
            while local.pending and local.write_error is None and not local.done:
                await self._flush(local)
        except (StoreUnavailable, RedisError) as exc:
            local.write_error = exc
            local.scope.cancel()
        finally:
            local.flushing = False

    async def _flush(self, local: _Local) -> None:
        """Write the pending events, in order, in one round trip."""
        async with local.writing:
            await self._write(local)

    async def _write(self, local: _Local) -> None:
        if not local.pending or local.done:
            return  # once the run ended, its end entry is the stream's last
        batch = list(local.pending)
        local.pending.clear()
        stream = self._key("ev:", local.id)
        delta = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for seq, event in batch:
                text = _json(event)
                pipe.xadd(stream, {"e": text}, id=f"0-{seq}", maxlen=self.max_events, approximate=False)
                local.sizes.append(len(text))
                delta += len(text)
                if len(local.sizes) > self.max_events:
                    delta -= local.sizes.popleft()
            pipe.hincrby(self._key("sizes"), local.id, delta)
            pipe.incrby(self._key("bytes"), delta)
            await self._call("write events", pipe.execute())
        local.held += delta
        local.written = batch[-1][0]
        local.wake_subscribers()

    # -- leases, cancels, retention -----------------------------------------------------------------------------------

    async def _renew(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("lease:", self.me), str(time.time()), px=max(1, int(self.lease_s * 1000)))
            pipe.sadd(self._key("replicas"), self.me)
            await self._call("renew the lease", pipe.execute())

    async def _keep_lease(self) -> None:
        """Renew the lease three times a lease; then reap dead replicas, check this
        replica's runs are still its own (and not cancelled), and prune."""
        while True:
            await anyio.sleep(self.lease_s / 3)
            try:
                await self._renew()
                replicas = await self._call("list replicas", self.redis.smembers(self._key("replicas")))
                for replica in replicas:
                    if replica != self.me:
                        await self._reap(replica)
                await self._check_local()
                await self._prune()
            except StoreUnavailable as exc:
                logger.warning("%s; retrying", exc)

    async def _reap(self, replica: str) -> None:
        lost = _json(
            _problem(
                "replica_lost",
                f"the replica carrying out the run ({replica}) stopped answering; the run was not retried, "
                "since its tool calls may have had effects",
                503,
            )
        )
        failed, requeued = await self._script("reap", replica, lost)
        if failed or requeued:
            logger.warning("replica %s is gone: %d runs failed, %d handed back to the queue", replica, failed, requeued)

    async def _check_local(self) -> None:
        ids = list(self._local)
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hmget(self._key("run:", run_id), ["status", "replica", "cancel"])
            rows = await self._call("check runs", pipe.execute())
        for run_id, (status, replica, cancel) in zip(ids, rows):
            local = self._local.get(run_id)
            if local is None or local.done or not local.owner or status == "queued":
                continue  # not started here yet (its submit or claim is on its way), or ended
            if status != "running" or replica != self.me:
                logger.warning("run %s is no longer this replica's (its lease lapsed); stopping it", run_id)
                local.lost = True
                local.scope.cancel()
            elif cancel:
                local.cancelled_by_user = True
                local.scope.cancel()

    async def _listen_for_cancels(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._key("cancel"))
                    async for message in pubsub.listen():
                        local = self._local.get(str(message.get("data")))
                        if local is not None:
                            local.cancelled_by_user = True
                            local.scope.cancel()
            except RedisError as exc:
                logger.warning("lost the cancel channel: %s; resubscribing", exc)
                await anyio.sleep(0.5)

    async def _prune(self) -> None:
        await self._script("prune", *self._prune_args())

    def _prune_args(self) -> list[Any]:
        return [
            self.ttl_s,
            self.max_finished,
            self.max_bytes,
            _GONE_TTL_S,
            f"finished runs are kept {self.ttl_s:g} s",
            f"only the {self.max_finished} most recent finished runs are kept",
            f"finished runs are forgotten, oldest first, to keep the run store within {_mb(self.max_bytes)}",
        ]
