"""The HTTP service: `create_app(cm, settings)` and the `codemode serve` command.

Endpoints (all through one `CodeMode`; nothing here re-implements it):

    POST   /v1/execute              run code and wait for the result
    POST   /v1/runs                 start a run in the background (202)
    GET    /v1/runs/{id}            its status, and result when done
    GET    /v1/runs/{id}/events     Server-Sent Events: each tool call, then the result
    DELETE /v1/runs/{id}            cancel it and its in-flight tool calls
    POST   /v1/runs/{id}/approvals  approve or refuse a tool call the run waits on
    GET    /v1/servers              the compact index of namespaces
    GET    /v1/tools/search         BM25 search over the tools
    GET    /v1/stubs                typed stubs (text/x-python)
    GET    /healthz, /metrics       health, Prometheus metrics
    GET    /docs                    OpenAPI docs

Safe by default: the shared `guards.Guard` checks Host, Origin, the bearer
token and the body (size and time) before anything else, as `codemode mcp
--http` does; then CORS for allowed origins; and a bounded queue answers 429
rather than letting requests pile up. Every error, from any layer, is one
problem shape with a stable `code` (`guards.problem_body`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Header, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from .._core import CodeMode
from .._discovery import ToolNotFound
from .._errors import CodemodeError, ConfigError, SandboxUnavailable, StoreUnavailable
from .._limits import Limits
from .._result import RunResult
from .._tracing import TraceContextMiddleware
from .guards import PROBLEM_TYPE, TITLES, Guard, GuardSettings, is_loopback, problem_body, read_tokens_file
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .models import (
    ApprovalIn,
    ApprovalOut,
    ExecuteRequest,
    ExecuteResponse,
    Health,
    LimitsIn,
    Problem,
    RunCreated,
    RunInfo,
    SearchResponse,
    ServersResponse,
)
from .runs import Admission, Busy, Executor, RunStore, Ticket
from .settings import ServeSettings
from .store import STORE_URL_PROBLEM, Runs, is_store_url

__all__ = ["HttpSettings", "cli_main", "create_app"]

logger = logging.getLogger("codemode.http")


EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 2, 3
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "busy",
    500: "internal_error",
    503: "unavailable",
}


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """How the service binds, whom it lets in and how much it takes on.

    `default_limits` (default: the sandbox's) apply to runs that do not say;
    `max_limits` (default: `default_limits`) cap what a request may ask for.
    Finished runs are kept `run_ttl_s` seconds, at most `max_finished_runs` of
    them, and all runs together within `max_store_bytes` (oldest finished runs
    forgotten first); each keeps its last `max_events_per_run` events, with
    tool-call arguments as previews."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)
    """More tokens, each with its client's name (`--tokens-file`); `token` is client `default`."""
    allow_origins: tuple[str, ...] = ()
    max_concurrency: int = 4
    queue: int = 16
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 30.0
    """A request body must arrive within this (then 408): a stalled upload cannot hold a connection."""
    default_limits: Limits | None = None
    max_limits: Limits | None = None
    run_ttl_s: float = 600.0
    max_finished_runs: int = 200
    max_events_per_run: int = 1_000
    max_store_bytes: int = 256 * 2**20
    retry_after_s: int = 1
    sse_ping_s: float = 15.0
    max_listeners_per_run: int = 16
    """Event streams one run may have open at once on this replica (then 429 `too_many_listeners`)."""
    max_listeners: int = 1_024
    """Event streams open at once on this replica, over all runs: each holds a socket and a
    task until its run ends, so they are bounded like every other thing a caller can pile up."""
    store: str | None = None
    """Where background runs live: None (or "memory") for this process's memory,
    `redis://…` (or `rediss://`, `unix://`) for a Redis shared by a fleet of replicas."""
    replica_id: str | None = None
    """This replica's name in a fleet (default: hostname-pid)."""
    lease_s: float = 5.0
    """A replica that has not renewed its lease for this long is taken for dead:
    its running runs fail with `replica_lost`, its unstarted ones go back to the queue."""
    cancel_wait_s: float = 5.0
    """How long DELETE waits for a cancelled run to wind down before answering."""

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def guard(self) -> GuardSettings:
        """What the shared `Guard` checks for these settings."""
        tokens = dict(self.tokens)
        if self.token:
            tokens[self.token] = "default"
        return GuardSettings(
            host=self.host,
            tokens=tokens,
            allow_origins=self.allow_origins,
            max_body_bytes=self.max_body_bytes,
            body_timeout_s=self.body_timeout_s,
        )

    def problems(self) -> list[str]:
        """What is wrong with these settings, for a person; empty if nothing."""
        out = []
        if not self.loopback and not (self.token or self.tokens):
            out.append(
                f"refusing to bind {self.host!r} without a token: anyone who can reach it could run code "
                "with your tools; pass --token (or set CODEMODE_TOKEN), or bind 127.0.0.1"
            )
        if self.max_concurrency < 1:
            out.append("--max-concurrency must be at least 1")
        if self.queue < 0:
            out.append("--queue must not be negative")
        if self.max_body_bytes < 1:
            out.append("--max-body-bytes must be at least 1")
        if self.max_store_bytes < 1:
            out.append("--max-store-mb (or $CODEMODE_MAX_STORE_MB) must be a positive number of MB")
        if not is_store_url(self.store):
            out.append(STORE_URL_PROBLEM)
        if self.max_listeners < 1 or self.max_listeners_per_run < 1:
            out.append("--max-listeners (and the per-run cap) must be at least 1")
        if self.lease_s <= 0:
            out.append("the replica lease must be a positive number of seconds")
        if not 0 <= self.port <= 65535:
            out.append("--port must be between 0 and 65535")
        return out


# -- problems ---------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer with a stable `code`; raised by endpoints, rendered as a problem."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.title = title or TITLES.get(status, "Error")
        self.headers = headers
        self.extra = extra


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The one error shape: {code, title, detail, status, ...extra}."""
    body = problem_body(status, code, detail, title=title, **extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_TYPE)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return problem(exc.status, exc.code, exc.detail, title=exc.title, headers=exc.headers, **exc.extra)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        # Starlette's default detail is just the status phrase; say something useful instead.
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != _phrase(status) else ""
        if status == 404 and not detail:
            detail = f"there is no {request.url.path}; see /docs"
        elif status == 405 and not detail:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(
            status,
            _CODES.get(status, f"http_{status}"),
            detail or TITLES.get(status, "Error"),
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            where = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
            return problem(400, "malformed_json", f"the body is not valid JSON{f': {where}' if where else ''}")
        content_type = request.headers.get("content-type", "")
        body_error = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)
        if body_error and content_type and "json" not in content_type.split(";")[0].lower():
            return problem(
                415,
                "unsupported_media_type",
                f"send the body as JSON with 'Content-Type: application/json', not {content_type!r}",
            )
        # loc, msg and type only: echoing `input` back could return a huge body.
        details = [
            {
                "loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in errors
        ]
        summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details[:5])
        return problem(422, "validation_error", summary or "the request is invalid", errors=details)

    async def on_busy(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Busy)
        app.state.metrics.rejected.inc(reason="busy")
        return problem(
            429,
            "busy",
            "every run slot and queue place is taken; retry after a moment",
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    async def on_codemode(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CodemodeError)
        if isinstance(exc, ToolNotFound):
            return problem(404, exc.code, exc.message, title="Tool not found", suggestions=exc.suggestions)
        logger.error("codemode error serving %s %s: %s", request.method, request.url.path, exc)
        return problem(503, exc.code, exc.message)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
        return problem(500, "internal_error", "an unexpected error; see the server log")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Busy, on_busy)
    app.add_exception_handler(CodemodeError, on_codemode)
    app.add_exception_handler(Exception, on_unexpected)


# -- the app ----------------------------------------------------------------------------------------------------------

_EXECUTE_DESCRIPTION = """Run `code` and wait for its result.

**A run whose code fails is still HTTP 200, with `ok: false`** and the reason in
`error` (`{code, type, message, ...}`): the request succeeded, the code did not.
Non-2xx answers mean the request itself was refused (validation, auth, capacity)
and carry a problem body `{code, title, detail, status}`.

If the client disconnects, the run is cancelled."""

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": TITLES[status]} for status in (400, 401, 403, 413, 422, 429, 500)
}


class Drain:
    """A stopping service: `begin()` refuses new runs, `expire()` cancels those
    still running; both answer 503 `shutting_down` in the usual problem shape."""

    def __init__(self, runs: Runs | None = None) -> None:
        self.stopping = False
        self.expired = anyio.Event()
        self._runs = runs

    def begin(self) -> None:
        self.stopping = True
        if self._runs is not None:
            self._runs.stop_intake()

    def expire(self) -> None:
        self.stopping = True
        self.expired.set()

    def refuse_if_stopping(self) -> None:
        if self.stopping:
            raise ApiError(503, "shutting_down", "the service is shutting down; no new runs are taken")


def create_app(cm: CodeMode, settings: HttpSettings | None = None) -> FastAPI:
    """The FastAPI app over an open `CodeMode` (the caller opens and closes it).

    Raises `ValueError` if `settings.problems()` is not empty."""
    settings = settings or HttpSettings()
    if settings.problems():
        raise ValueError("; ".join(settings.problems()))
    max_limits = settings.max_limits or settings.default_limits or cm.sandbox.limits
    default_limits = LimitsIn().resolve(settings.default_limits or cm.sandbox.limits, max_limits)
    admission = Admission(
        max_running=settings.max_concurrency, max_waiting=settings.queue, retry_after_s=settings.retry_after_s
    )
    metrics = Metrics(queue_depth=lambda: admission.waiting, in_flight=lambda: admission.running)
    executor = Executor(cm, metrics)
    runs = open_store(settings, executor, admission)
    listeners: Counter[str] = Counter()  # open event streams per run, this replica

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runs:
            yield

    dependencies = []
    if settings.token or settings.tokens:
        # Declares the scheme so /docs offers "Authorize"; the check itself is the `Guard`.
        dependencies.append(Security(HTTPBearer(auto_error=False)))
    app = FastAPI(
        title="codemode",
        summary="Run model-written Python that composes tools, in a WebAssembly sandbox.",
        description="Every error answer is `application/problem+json`: `{code, title, detail, status}` with a "
        "stable `code`. A run whose code fails is not an HTTP error: it answers 200 with `ok: false`.",
        version="1",
        lifespan=lifespan,
        dependencies=dependencies,
        responses=_PROBLEMS,
    )
    app.state.metrics = metrics
    drain = app.state.drain = Drain(runs)
    app.state.runs = runs
    _install_error_handlers(app)

    def limits_for(body: ExecuteRequest) -> Limits:
        return body.limits.resolve(default_limits, max_limits) if body.limits else default_limits

    @app.post(
        "/v1/execute",
        response_model=ExecuteResponse,
        tags=["runs"],
        summary="Run code and wait",
        description=_EXECUTE_DESCRIPTION,
    )
    async def execute(body: ExecuteRequest, request: Request) -> Response:
        limits = limits_for(body)
        drain.refuse_if_stopping()
        result = await _run_unless_disconnected(request, admission.reserve(), executor, body.code, limits, drain)
        if result is None and drain.expired.is_set():
            return problem(503, "shutting_down", "the service shut down before the run finished; it was cancelled")
        if result is None:  # nobody is listening; the status is for the access log
            return problem(499, "client_closed_request", "the client disconnected; the run was cancelled")
        return JSONResponse(result.to_dict(trace=body.trace))

    @app.post(
        "/v1/runs",
        status_code=202,
        response_model=RunCreated,
        tags=["runs"],
        summary="Start a run",
        description="Start a run in the background. Poll `GET /v1/runs/{id}` or stream "
        "`GET /v1/runs/{id}/events`. Finished runs are kept for a while (at most "
        f"{settings.run_ttl_s:g} s, the {settings.max_finished_runs} most recent, within "
        f"{settings.max_store_bytes / 2**20:g} MB in all; tool-call arguments as previews), then forgotten. "
        "Only the client that started a run can read or cancel it.",
    )
    async def start_run(body: ExecuteRequest, request: Request) -> Response:
        drain.refuse_if_stopping()
        info = await runs.submit(body.code, limits_for(body), trace=body.trace, owner=_client(request))
        return JSONResponse(
            {"id": info["id"], "status": info["status"]},
            status_code=202,
            headers={"Location": f"/v1/runs/{info['id']}"},
        )

    async def find_run(run_id: str, request: Request) -> dict[str, Any]:
        # Another client's run answers exactly as a run that never existed.
        client = _client(request)
        info = await runs.info(run_id, client)
        if info is not None:
            return info
        why = await runs.why_forgotten(run_id, client)
        if why is not None:
            detail = f"run {run_id!r} has finished and is no longer kept: {why}"
            raise ApiError(404, "run_expired", detail, title="Run no longer kept")
        detail = (
            f"there is no run {run_id!r} of yours: it never existed, or finished long ago and was forgotten "
            f"(finished runs are kept at most {settings.run_ttl_s:g} s, fewer when the store is full)"
        )
        raise ApiError(404, "run_not_found", detail, title="Run not found")

    @app.get("/v1/runs/{run_id}", response_model=RunInfo, tags=["runs"], summary="A run's status and result")
    async def get_run(run_id: str, request: Request) -> Response:
        return JSONResponse(await find_run(run_id, request))

    @app.get(
        "/v1/runs/{run_id}/events",
        tags=["runs"],
        summary="Stream a run's events (SSE)",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "`tool_call_started` and `tool_call_finished` per call (with `id:` sequence numbers), "
                "then `result` (the run's status and result), then the stream ends. A late subscriber "
                "first gets the events kept so far; `Last-Event-ID` resumes after an id.",
            }
        },
    )
    async def run_events(
        run_id: str, request: Request, last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None
    ) -> Response:
        await find_run(run_id, request)
        if listeners[run_id] >= settings.max_listeners_per_run or listeners.total() >= settings.max_listeners:
            app.state.metrics.rejected.inc(reason="too_many_listeners")
            raise ApiError(
                429,
                "too_many_listeners",
                f"too many event streams are open (at most {settings.max_listeners_per_run} per run, "
                f"{settings.max_listeners} in all); close one, or read the run with GET /v1/runs/{{id}}",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        stream = (_sse(name, seq, data) async for name, seq, data in runs.events(run_id, after, settings.sse_ping_s))
        return _CountedStream(
            listeners,
            run_id,
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.delete(
        "/v1/runs/{run_id}",
        response_model=RunInfo,
        tags=["runs"],
        summary="Cancel a run",
        description="Cancel a queued or running run and its in-flight tool calls; answers the run's "
        "state (`cancelled`, or its final status if it had already finished).",
    )
    async def cancel_run(run_id: str, request: Request) -> Response:
        info = await find_run(run_id, request)
        if info["status"] in ("queued", "running", "waiting_approval"):
            info = await runs.cancel(run_id, settings.cancel_wait_s) or info
        return JSONResponse(info)

    @app.post(
        "/v1/runs/{run_id}/approvals",
        response_model=ApprovalOut,
        tags=["runs"],
        summary="Approve or refuse a waiting tool call",
        description="A run is `waiting_approval` while a call its program makes needs a decision (the "
        "server's `approve` patterns, or the policy). The call is in the run's `approval_requested` event "
        "and `pending_approvals`. Approved, the call is made; refused, the program gets a `ToolError` "
        "with code `approval_denied`. Only the client that started the run may decide; the decision is "
        "logged with its name. "
        "409 `no_pending_approval` if the run is not waiting on that call (decided, timed out, or unknown).",
    )
    async def decide_approval(run_id: str, body: ApprovalIn, request: Request) -> Response:
        await find_run(run_id, request)  # only the client that started the run may decide for it
        by = f"http:{_client(request)}"
        if not await runs.decide(run_id, body.call_id, approved=body.approved, by=by, reason=body.reason):
            raise ApiError(
                409,
                "no_pending_approval",
                f"run {run_id!r} is not waiting on a call {body.call_id!r}",
                title="No such pending call",
            )
        decision = "approved" if body.approved else "approval_denied"
        return JSONResponse({"call_id": body.call_id, "decision": decision, "by": by})

    _add_catalog_routes(app, cm)
    _add_ops_routes(app, cm, metrics)

    # Added innermost first: the guard runs before CORS, whose own refusal is not a
    # problem body; it lets preflights (which carry no token) through to CORS.
    # Innermost: a request's `traceparent` is the current context while the app serves it.
    app.add_middleware(TraceContextMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.allow_origins),
        allow_origin_regex=r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?",
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "traceparent", "tracestate"],
        expose_headers=["Retry-After", "Location"],
    )
    app.add_middleware(Guard, settings=settings.guard(), on_reject=lambda code: metrics.rejected.inc(reason=code))
    return app


def open_store(settings: HttpSettings, executor: Executor, admission: Admission) -> Runs:
    """The run store `settings.store` names (this process's memory by default).

    Raises `ImportError` naming the extra to install if Redis is asked for without its client."""
    if settings.store in (None, "", "memory"):
        return RunStore(
            executor,
            admission,
            ttl_s=settings.run_ttl_s,
            max_finished=settings.max_finished_runs,
            max_events=settings.max_events_per_run,
            max_bytes=settings.max_store_bytes,
        )
    from .redis_store import RedisRunStore

    return RedisRunStore(
        settings.store,
        executor,
        admission,
        replica_id=settings.replica_id or f"{socket.gethostname()}-{os.getpid()}",
        ttl_s=settings.run_ttl_s,
        max_finished=settings.max_finished_runs,
        max_events=settings.max_events_per_run,
        max_bytes=settings.max_store_bytes,
        max_queued=settings.queue,
        lease_s=settings.lease_s,
        retry_after_s=settings.retry_after_s,
    )


def _client(request: Request) -> str:
    """Who is asking: the identity the authentication guard set, else "anonymous"."""
    client = getattr(request.state, "client", None)
    return client if isinstance(client, str) and client else "anonymous"


async def _run_unless_disconnected(
    request: Request, ticket: Ticket, executor: Executor, code: str, limits: Limits, drain: Drain
) -> RunResult | None:
    """The run's result, or None if the client went away first or the service's
    shutdown grace ran out (then the run is cancelled)."""
    result: RunResult | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        async def watch_shutdown() -> None:
            await drain.expired.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(watch_shutdown)
        try:
            async with ticket:
                result = await executor.run(code, limits)
        finally:
            ticket.release()
        tg.cancel_scope.cancel()
    return result


class _CountedStream(StreamingResponse):
    """An event stream counted in `listeners[run_id]` from its answer until it
    ends, however it ends (the run finishes, the client leaves, a send fails)."""

    def __init__(self, listeners: Counter[str], run_id: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listeners, self._run_id = listeners, run_id
        listeners[run_id] += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._listeners[self._run_id] -= 1
            if self._listeners[self._run_id] <= 0:
                del self._listeners[self._run_id]


def _sse(name: str, seq: int | None, data: Any) -> str:
    if name == "ping":
        return ": ping\n\n"
    lines = [f"id: {seq}"] if seq is not None else []
    lines.append("event: " + "".join(c for c in name if c.isprintable()))
    # json.dumps escapes newlines, so the payload is one `data:` line.
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def _failures(cm: CodeMode) -> list[dict[str, str]]:
    return [failure.to_dict() for _, failure in sorted(cm.failures.items())]


def _states(cm: CodeMode) -> list[dict[str, Any]]:
    return [status.to_dict() for status in cm.server_status()]


def _add_catalog_routes(app: FastAPI, cm: CodeMode) -> None:
    @app.get("/v1/servers", response_model=ServersResponse, tags=["discovery"], summary="Namespaces and their tools")
    async def servers() -> dict[str, Any]:
        summaries = [
            {"namespace": s.namespace, "server": s.server, "tool_count": s.tool_count, "tools": list(s.tools)}
            for s in cm.list_servers()
        ]
        return {"servers": summaries, "failures": _failures(cm), "states": _states(cm)}

    @app.get("/v1/tools/search", response_model=SearchResponse, tags=["discovery"], summary="Search tools")
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=1_000, description="What the tool does.")],
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
        with_stubs: Annotated[bool, Query(description="Also return the stubs of the best few hits.")] = False,
    ) -> dict[str, Any]:
        found = cm.search_tools(q, limit=limit, with_stubs=with_stubs)
        hits = [
            {
                "name": h.qualified_name,
                "namespace": h.namespace,
                "tool": h.name,
                "score": round(h.score, 4),
                "signature": h.signature,
                "summary": h.summary,
            }
            for h in found
        ]
        return {"hits": hits, "stubs": found.stubs}

    @app.get(
        "/v1/stubs",
        tags=["discovery"],
        summary="Typed Python stubs",
        response_class=Response,
        responses={
            200: {"content": {"text/x-python": {}}},
            404: {"model": Problem, "description": "An unknown tool name; the problem lists `suggestions`."},
        },
    )
    async def stubs(
        tools: Annotated[
            str | None, Query(description="Comma-separated `namespace.tool` names; omit for every tool.")
        ] = None,
    ) -> Response:
        names = [n.strip() for n in tools.split(",") if n.strip()] if tools else None
        return PlainTextResponse(cm.stubs(names), media_type="text/x-python")


def _add_ops_routes(app: FastAPI, cm: CodeMode, metrics: Metrics) -> None:
    @app.get("/healthz", response_model=Health, tags=["ops"], summary="Liveness and upstream state")
    async def healthz() -> dict[str, Any]:
        failures, states = _failures(cm), _states(cm)
        starting = any(s["state"] == "connecting" for s in states)
        return {
            "status": "degraded" if failures else "starting" if starting else "ok",
            "backend": cm.sandbox.backend.name,
            "tools": len(cm.tools()),
            "failures": failures,
            "servers": states,
        }

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)


# -- the command ------------------------------------------------------------------------------------------------------


def cli_main(options: ServeSettings) -> int:
    """`codemode serve`: load the tools, serve until Ctrl-C. Returns the exit code:
    0 after a clean stop, 2 for unusable settings (a non-loopback host without a
    token), 3 if the configuration or sandbox is unavailable or the port cannot be bound."""
    tokens: dict[str, str] = {}
    if options.tokens_file is not None:
        try:
            tokens = read_tokens_file(str(options.tokens_file))
        except ValueError as exc:
            print(f"codemode: {exc}", file=sys.stderr)
            return EXIT_USAGE
    settings = HttpSettings(
        host=options.host,
        port=options.port,
        token=options.token,
        tokens=tokens,
        allow_origins=options.allow_origin,
        max_concurrency=options.max_concurrency,
        queue=options.queue,
        max_body_bytes=options.max_body_bytes,
        max_store_bytes=int(options.max_store_mb * 2**20),
        max_listeners=options.max_listeners,
        store=options.store,
        replica_id=options.replica_id,
        lease_s=options.lease,
    )
    for message in settings.problems():
        print(f"codemode: {message}", file=sys.stderr)
    if settings.problems():
        return EXIT_USAGE
    try:
        return anyio.run(_serve, options, settings)
    except KeyboardInterrupt:
        print("codemode: stopped", file=sys.stderr)
        return EXIT_OK
    except (ConfigError, SandboxUnavailable, StoreUnavailable) as exc:
        print(f"codemode: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ImportError as exc:  # an optional extra, e.g. the Redis client for --store redis://
        print(f"codemode: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


async def _serve(options: ServeSettings, settings: HttpSettings) -> int:
    import uvicorn

    from .._sandbox.runner import Sandbox

    # The sandbox's own gate matches ours, so admitted runs do not queue twice.
    sandbox = Sandbox(backend=options.backend, max_concurrency=settings.max_concurrency, limits=options.limits)
    if options.config:
        cm = CodeMode.from_config(options.config, sandbox=sandbox, observe_shapes=options.observe_shapes)
    else:
        print(
            "codemode: no --config given: serving with no tools (code runs, but there is nothing to call); "
            "pass --config mcp.json to serve MCP servers' tools",
            file=sys.stderr,
        )
        cm = CodeMode(sandbox=sandbox)
    grace = options.shutdown_grace
    # The port opens at once; servers connect in the background (their state is in /healthz).
    await cm.open(wait_for_servers=False)
    try:
        app = create_app(cm, settings)
        await app.state.runs.ping()  # an unreachable store is a clear exit 3, before the port opens
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            lifespan="on",
            log_level="info",
            # Past our grace, runs are answered 503 by us; this is only the backstop.
            timeout_graceful_shutdown=int(grace) + 5,
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises a caught SIGTERM after serving, which killed the
        # process before the upstreams were closed: the signals are ours.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, server, app.state.drain, grace)
            try:
                await server.serve()
            except SystemExit:  # uvicorn's way of saying it could not bind (it has logged why)
                return EXIT_UNAVAILABLE
            finally:
                tg.cancel_scope.cancel()
    finally:
        # Every upstream and its process group, also after a signal (the hub
        # shields its own stop; a scope here would break the order of its task group).
        await cm.aclose()
    return EXIT_OK


async def _stop_on_signal(server: Any, drain: Drain, grace: float) -> None:
    """SIGTERM or SIGINT: stop taking connections and runs, give runs in flight
    `grace` seconds, then cancel them (answered 503 `shutting_down`)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("codemode: %s received; stopping (grace %g s)", signal.Signals(signum).name, grace)
            drain.begin()
            server.should_exit = True
            break
    await anyio.sleep(grace)
    drain.expire()
