"""A typed client for `codemode serve`: `Client` (blocking) and `AsyncClient`.

    with Client("http://127.0.0.1:8000", token=...) as client:
        result = client.execute("sum(range(10))")          # a RunResult, as from CodeMode.execute
        run = client.start_run(code)
        for event in client.events(run.id):                 # SSE; resumes after a dropped connection
            ...

Both speak to the service over httpx and give back the package's own types
(`RunResult`, `ServerSummary`, `ToolHit`) built from its JSON. A run whose code
fails is not an exception, exactly as in the Python API: its `RunResult.error`
holds the typed `ExecutionError`. A refused request raises: the service's
problem `code` is mapped back to the error the Python API raises for it
(`ToolNotFound`, `SandboxUnavailable`, `ConfigError`), else to a `ServiceError`
subclass (`Unauthorized`, `Forbidden`, `RequestRejected`, `ServiceBusy`,
`RunNotFound`); a service that cannot be reached raises `ServiceUnreachable`.
No httpx exception escapes.

Trust: the client trusts the service it is pointed at as much as a caller of
`CodeMode.execute` trusts the library; answers of an unexpected shape raise
`ServiceError`, never a `KeyError` from here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import anyio
import httpx

from . import _tracing
from ._discovery import ServerSummary, ToolHit, ToolNotFound
from ._errors import (
    CodemodeError,
    ConfigError,
    Forbidden,
    RequestRejected,
    RunNotFound,
    SandboxUnavailable,
    ServiceBusy,
    ServiceError,
    ServiceUnreachable,
    ToolError,
    Unauthorized,
)
from ._limits import Limits
from ._result import RunResult
from ._tools import Tool

__all__ = ["AsyncClient", "Client", "RunEvent", "RunInfo"]

RunStatus = Literal["queued", "running", "waiting_approval", "succeeded", "failed", "cancelled"]
_FINAL = frozenset({"succeeded", "failed", "cancelled"})

_SERVICE_ERRORS: dict[str, type[ServiceError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "forbidden_host": Forbidden,
    "forbidden_origin": Forbidden,
    "bad_request": RequestRejected,
    "malformed_json": RequestRejected,
    "validation_error": RequestRejected,
    "body_too_large": RequestRejected,
    "unsupported_media_type": RequestRejected,
    "run_not_found": RunNotFound,
}


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """A background run on the service: its status, and its result once it has one.

    `error` is set when the service itself could not carry the run out (not when
    the code failed: that is `result.error`)."""

    id: str
    status: RunStatus
    created_at: float | None = None
    """Unix time, as the service reports it (not in the answer to `start_run`)."""
    started_at: float | None = None
    finished_at: float | None = None
    result: RunResult | None = None
    error: CodemodeError | None = None
    pending_approvals: tuple[dict[str, str], ...] = ()
    """Calls the run waits on (`call_id`, `namespace`, `tool`, `preview`) while
    `waiting_approval`; decide each with `decide_approval`."""

    @property
    def finished(self) -> bool:
        return self.status in _FINAL


@dataclass(frozen=True, kw_only=True)
class RunEvent:
    """One Server-Sent Event of a run: `tool_call_started`, `tool_call_finished`
    (with `id`, the sequence number resuming starts after), `events_dropped`
    (`data["count"]` events were evicted before this subscriber saw them), and
    last `result`, whose `run` is the finished run."""

    type: str
    id: int | None
    data: dict[str, Any]
    run: RunInfo | None = None


def _remote_tool(**arguments: Any) -> Any:
    raise ToolError("this tool lives on the codemode service: call it from code sent to `execute`")


def _problem_error(status: int, body: object, headers: Mapping[str, str] | None = None) -> CodemodeError:
    """The error the Python API would raise for the service's problem body."""
    problem = body if isinstance(body, dict) else {}
    code = str(problem.get("code") or "")
    detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
    if code == ToolNotFound.code:
        raw = problem.get("suggestions")
        suggestions = {
            str(name): [str(s) for s in close] if isinstance(close, list) else []
            for name, close in (raw.items() if isinstance(raw, dict) else ())
        }
        return ToolNotFound(suggestions) if suggestions else RequestRejected(detail, status=status, problem=problem)
    if code == SandboxUnavailable.code:
        return SandboxUnavailable(detail)
    if code == ConfigError.code:
        return ConfigError(detail)
    if code == ServiceBusy.code:
        retry = (headers or {}).get("retry-after", "")
        return ServiceBusy(
            detail, status=status, problem=problem, retry_after_s=float(retry) if retry.isdigit() else 1.0
        )
    # Other refusals of the request itself (missing_host, request_timeout, not_found, ...) by their status.
    cls = _SERVICE_ERRORS.get(code) or (RequestRejected if 400 <= status < 500 else ServiceError)
    return cls(detail, status=status, problem=problem)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body: object = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    raise _problem_error(response.status_code, body, response.headers)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    _raise_for_status(response)
    try:
        data = response.json()
    except ValueError as exc:
        raise ServiceError("the service answered something that is not JSON", status=response.status_code) from exc
    if not isinstance(data, dict):
        raise ServiceError("the service answered JSON of an unexpected shape", status=response.status_code)
    return data


def _shaped(status: int, build: Any, *args: Any) -> Any:
    """`build(*args)`, with a malformed answer as a `ServiceError`."""
    try:
        return build(*args)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServiceError(f"the service answered JSON of an unexpected shape: {exc!r}", status=status) from exc


def _run_info(data: dict[str, Any]) -> RunInfo:
    result, error = data.get("result"), data.get("error")
    return RunInfo(
        id=str(data["id"]),
        status=data["status"],
        created_at=data.get("created_at"),
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
        result=RunResult.from_dict(result) if isinstance(result, dict) else None,
        error=_problem_error(int(error.get("status") or 500), error) if isinstance(error, dict) else None,
        pending_approvals=tuple(
            {k: str(v) for k, v in p.items()} for p in data.get("pending_approvals") or () if isinstance(p, dict)
        ),
    )


def _run_path(run_id: str, suffix: str = "") -> str:
    # Quoted whole: an id like "../servers" must not reach another endpoint.
    return f"/v1/runs/{quote(run_id, safe='')}{suffix}"


def _created(data: dict[str, Any]) -> RunInfo:
    return RunInfo(id=str(data["id"]), status=data["status"])


def _servers(data: dict[str, Any]) -> list[ServerSummary]:
    return [
        ServerSummary(
            namespace=str(s["namespace"]),
            server=str(s["server"]),
            tool_count=int(s["tool_count"]),
            tools=tuple(s["tools"]),
        )
        for s in data["servers"]
    ]


def _hits(data: dict[str, Any]) -> list[ToolHit]:
    hits = []
    for h in data["hits"]:
        # The tool itself stays on the service; the stand-in only names it.
        tool = Tool(name=str(h["tool"]), namespace=str(h["namespace"]), fn=_remote_tool, description=str(h["summary"]))
        hits.append(
            ToolHit(
                namespace=str(h["namespace"]),
                name=str(h["tool"]),
                score=float(h["score"]),
                signature=str(h["signature"]),
                summary=str(h["summary"]),
                tool=tool,
            )
        )
    return hits


def _body(code: str, limits: Limits | Mapping[str, float] | None, trace: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "trace": trace}
    if isinstance(limits, Limits):
        body["limits"] = dataclasses.asdict(limits)
    elif limits is not None:
        body["limits"] = dict(limits)
    return body


class _SSEParser:
    """Server-Sent Events from lines (the WHATWG rules codemode's stream needs:
    `id`, `event`, `data`, comments, blank-line dispatch)."""

    def __init__(self) -> None:
        self.name: str = "message"
        self.data: list[str] = []
        self.id: str | None = None

    def _reset(self) -> None:
        self.name, self.data, self.id = "message", [], None

    def feed(self, line: str) -> RunEvent | None:
        if not line:
            if not self.data:
                self._reset()
                return None
            event = self._event()
            self._reset()
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.name = value
        elif field == "data":
            self.data.append(value)
        elif field == "id":
            self.id = value
        return None

    def _event(self) -> RunEvent:
        try:
            data = json.loads("\n".join(self.data))
        except ValueError as exc:
            raise ServiceError(f"an event of the stream is not JSON: {exc}", status=200) from exc
        if not isinstance(data, dict):
            raise ServiceError("an event of the stream is not a JSON object", status=200)
        seq = int(self.id) if self.id is not None and self.id.isdigit() else None
        run = _shaped(200, _run_info, data) if self.name == "result" else None
        return RunEvent(type=self.name, id=seq, data=data, run=run)


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout: float,
        headers: Mapping[str, str] | None,
        max_reconnects: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_reconnects = max_reconnects
        self._timeout = timeout
        self._headers = {"Accept": "application/json", **(headers or {})}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def _request_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Each request carries the caller's trace context (`traceparent`), if any."""
        headers = dict(extra or {})
        _tracing.inject_context(headers)
        return headers

    @staticmethod
    def _search_params(query: str, limit: int) -> dict[str, Any]:
        return {"q": query, "limit": limit}

    @staticmethod
    def _stubs_params(names: Sequence[str] | None) -> dict[str, Any]:
        return {"tools": ",".join(names)} if names else {}

    @staticmethod
    def _events_headers(after: int | None) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        return headers

    def _gave_up(self, run_id: str, exc: Exception | None) -> ServiceUnreachable:
        return ServiceUnreachable(
            f"the event stream of run {run_id!r} dropped {self.max_reconnects + 1} times in a row"
            + (f": {type(exc).__name__}: {exc}" if exc else "")
        )

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(0.1 * 2 ** (attempt - 1), 2.0))


def _unreachable(base_url: str, exc: httpx.TransportError) -> ServiceUnreachable:
    return ServiceUnreachable(f"cannot reach the codemode service at {base_url}: {type(exc).__name__}: {exc}")


class Client(_Base):
    """A blocking client for `codemode serve`. Use it as a context manager, or
    call `close()` (safe twice). `timeout` bounds each request (for `execute`,
    give it more than the run's own timeout); `max_reconnects` bounds how often
    `events` reconnects in a row after a dropped connection."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
        max_reconnects: int = 5,
    ) -> None:
        super().__init__(base_url, token=token, timeout=timeout, headers=headers, max_reconnects=max_reconnects)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, headers=self._request_headers(), **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc

    def execute(
        self, code: str, *, limits: Limits | Mapping[str, float] | None = None, trace: bool = False
    ) -> RunResult:
        """Run `code` and wait: `POST /v1/execute`. The run's failure is in
        `RunResult.error`; `limits` (all or some fields) are capped by the service.

        Raises `ServiceError` (and subclasses) if the request is refused,
        `SandboxUnavailable`, `ServiceUnreachable`."""
        response = self._send("POST", "/v1/execute", json=_body(code, limits, trace))
        data = _json_object(response)
        result: RunResult = _shaped(response.status_code, RunResult.from_dict, data)
        return result

    def start_run(
        self, code: str, *, limits: Limits | Mapping[str, float] | None = None, trace: bool = False
    ) -> RunInfo:
        """Start a background run: `POST /v1/runs`. Raises as `execute` does."""
        response = self._send("POST", "/v1/runs", json=_body(code, limits, trace))
        info: RunInfo = _shaped(response.status_code, _created, _json_object(response))
        return info

    def get_run(self, run_id: str) -> RunInfo:
        """A run's status, and result once finished. Raises `RunNotFound`."""
        response = self._send("GET", _run_path(run_id))
        info: RunInfo = _shaped(response.status_code, _run_info, _json_object(response))
        return info

    def cancel(self, run_id: str) -> RunInfo:
        """Cancel a run and its in-flight tool calls; its state after. Raises `RunNotFound`."""
        response = self._send("DELETE", _run_path(run_id))
        info: RunInfo = _shaped(response.status_code, _run_info, _json_object(response))
        return info

    def decide_approval(self, run_id: str, call_id: str, *, approved: bool, reason: str = "") -> None:
        """Approve or refuse a call the run waits on (from its `approval_requested`
        event or `pending_approvals`). Raises `RunNotFound`, and `RequestRejected`
        (`no_pending_approval`) if the run is not waiting on that call."""
        body = {"call_id": call_id, "approved": approved, "reason": reason}
        _json_object(self._send("POST", _run_path(run_id, "/approvals"), json=body))

    def events(self, run_id: str, *, last_event_id: int | None = None) -> Iterator[RunEvent]:
        """The run's events as they happen, ending with its `result` event. A
        dropped connection is resumed with `Last-Event-ID`, so no event is seen
        twice or missed (unless the service evicted it: then `events_dropped`).

        Raises `RunNotFound`, and `ServiceUnreachable` after `max_reconnects`
        reconnects in a row that brought nothing."""
        after, attempt = last_event_id, 0
        while True:
            dropped: Exception | None = None
            try:
                with self._http.stream(
                    "GET", _run_path(run_id, "/events"), headers=self._request_headers(self._events_headers(after))
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        _raise_for_status(response)
                    parser = _SSEParser()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        attempt = 0
                        if event.id is not None:
                            after = event.id
                        yield event
                        if event.type == "result":
                            return
            except httpx.TransportError as exc:
                dropped = exc
            # The stream ended (or broke) before the result: reconnect after the last id.
            attempt += 1
            if attempt > self.max_reconnects:
                raise self._gave_up(run_id, dropped) from dropped
            time.sleep(self._backoff(attempt))

    def servers(self) -> list[ServerSummary]:
        """The namespaces and their tools (`GET /v1/servers`); servers the service
        could not reach are left out."""
        response = self._send("GET", "/v1/servers")
        servers: list[ServerSummary] = _shaped(response.status_code, _servers, _json_object(response))
        return servers

    def search(self, query: str, *, limit: int = 10) -> list[ToolHit]:
        """Tools ranked for `query` (BM25). Each hit's `tool` is a stand-in that
        names the tool; the tool is called from code sent to `execute`."""
        response = self._send("GET", "/v1/tools/search", params=self._search_params(query, limit))
        hits: list[ToolHit] = _shaped(response.status_code, _hits, _json_object(response))
        return hits

    def stubs(self, names: Sequence[str] | None = None) -> str:
        """Typed stubs for the named tools (`namespace.tool`), or all. Raises `ToolNotFound`."""
        response = self._send("GET", "/v1/stubs", params=self._stubs_params(names))
        _raise_for_status(response)
        return response.text


class AsyncClient(_Base):
    """`Client`, for async code (any anyio backend): the same methods, awaited;
    `events` is an async iterator. Use it as an async context manager, or call
    `aclose()` (safe twice)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
        max_reconnects: int = 5,
    ) -> None:
        super().__init__(base_url, token=token, timeout=timeout, headers=headers, max_reconnects=max_reconnects)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, headers=self._request_headers(), **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc

    async def execute(
        self, code: str, *, limits: Limits | Mapping[str, float] | None = None, trace: bool = False
    ) -> RunResult:
        """See `Client.execute`."""
        response = await self._send("POST", "/v1/execute", json=_body(code, limits, trace))
        result: RunResult = _shaped(response.status_code, RunResult.from_dict, _json_object(response))
        return result

    async def start_run(
        self, code: str, *, limits: Limits | Mapping[str, float] | None = None, trace: bool = False
    ) -> RunInfo:
        """See `Client.start_run`."""
        response = await self._send("POST", "/v1/runs", json=_body(code, limits, trace))
        info: RunInfo = _shaped(response.status_code, _created, _json_object(response))
        return info

    async def get_run(self, run_id: str) -> RunInfo:
        """See `Client.get_run`."""
        response = await self._send("GET", _run_path(run_id))
        info: RunInfo = _shaped(response.status_code, _run_info, _json_object(response))
        return info

    async def cancel(self, run_id: str) -> RunInfo:
        """See `Client.cancel`."""
        response = await self._send("DELETE", _run_path(run_id))
        info: RunInfo = _shaped(response.status_code, _run_info, _json_object(response))
        return info

    async def decide_approval(self, run_id: str, call_id: str, *, approved: bool, reason: str = "") -> None:
        """See `Client.decide_approval`."""
        body = {"call_id": call_id, "approved": approved, "reason": reason}
        _json_object(await self._send("POST", _run_path(run_id, "/approvals"), json=body))

    async def events(self, run_id: str, *, last_event_id: int | None = None) -> AsyncIterator[RunEvent]:
        """See `Client.events`. To stop early and close the stream at once, wrap it
        in `contextlib.aclosing`."""
        after, attempt = last_event_id, 0
        while True:
            dropped: Exception | None = None
            try:
                async with self._http.stream(
                    "GET", _run_path(run_id, "/events"), headers=self._request_headers(self._events_headers(after))
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _raise_for_status(response)
                    parser = _SSEParser()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        attempt = 0
                        if event.id is not None:
                            after = event.id
                        yield event
                        if event.type == "result":
                            return
            except httpx.TransportError as exc:
                dropped = exc
            attempt += 1
            if attempt > self.max_reconnects:
                raise self._gave_up(run_id, dropped) from dropped
            await anyio.sleep(self._backoff(attempt))

    async def servers(self) -> list[ServerSummary]:
        """See `Client.servers`."""
        response = await self._send("GET", "/v1/servers")
        servers: list[ServerSummary] = _shaped(response.status_code, _servers, _json_object(response))
        return servers

    async def search(self, query: str, *, limit: int = 10) -> list[ToolHit]:
        """See `Client.search`."""
        response = await self._send("GET", "/v1/tools/search", params=self._search_params(query, limit))
        hits: list[ToolHit] = _shaped(response.status_code, _hits, _json_object(response))
        return hits

    async def stubs(self, names: Sequence[str] | None = None) -> str:
        """See `Client.stubs`."""
        response = await self._send("GET", "/v1/stubs", params=self._stubs_params(names))
        _raise_for_status(response)
        return response.text
