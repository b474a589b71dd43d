"""The code contract, executed: one request in, one JSON response out.

This module runs inside the WebAssembly component (CPython 3.14 under WASI) and,
unchanged, in the host process for the `restricted` backend. It must not import
anything from the host package.

Request (JSON):  {"code", "namespaces", "types", "limits": {"max_stdout", "max_result"}, "deadline_s"}
                 ("namespaces": {ns: {"names": "tool tool2 ...", "tools": {tool: [params,
                 required, defaults]}}}; "types": source of the TypedDicts the code names;
                 "stubs", runtime stub source to execute, is still read)
Response (JSON): {"ok": true,  "value", "value_truncated", "stdout", "stdout_truncated"}
                 {"ok": false, "error": {"kind", "type", "message", ...}, "stdout", ...}

Namespaces are `_Namespace` objects: the first lookup of a tool makes its call
wrapper from the tool's record (codemode/_sandbox/guest_tools.py), so a run
pays for the tools it uses, not for the size of the namespace.

Tool calls: a wrapper calls `_call_tool(namespace, name, args)`, which parks a
future on the running `HostLoop`. When no task can make progress, the loop sends
every pending call to the host in one crossing (`host_call(batch_json)`), and
resolves the futures with the outcomes. A host answer of `HostAbort` means the
host has ended the run (a limit was hit); the guest unwinds without running more
user code than it must.
"""

import ast
import asyncio
import base64
import dataclasses
import datetime
import decimal
import fractions
import inspect
import json
import json.decoder
import json.encoder
import json.scanner
import math
import threading
import time
import traceback
import types
import typing
import uuid

CODE_FILENAME = "<code>"
RESULT_NAME = "__codemode_result__"
TRUNCATION_MARKER = "\n…[truncated {omitted} characters]"

# Kept before user code runs, so a model that patches json or time in its own
# run cannot break the runtime's answer. Everything on a run's path is bound
# once here: in a fresh wasm instance, each object a run touches for the first
# time costs a copy-on-write page fault, and json's module-level helpers touch
# many (measured on `1 + 1`: 385 -> 343 page faults a run).
_dumps = json.dumps
_loads = json.loads
_scan_json = json.scanner.make_scanner(json.decoder.JSONDecoder())
_encode_call = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_encode_response = json.JSONEncoder(ensure_ascii=False).encode
_CO_COROUTINE = inspect.CO_COROUTINE
_Coroutine = types.CoroutineType
_ONLY_AST = ast.PyCF_ONLY_AST
# '{"ns":...,"tool":...' per tool: encoded once, not on every call.
_call_prefixes = {}
# The C accessor: no exception raised and caught when there is no loop.
_get_running_loop = asyncio.events._get_running_loop
_monotonic = time.monotonic
_real_sleep = time.sleep


class ToolError(Exception):
    """A tool call failed. Catch it to handle the failure in your code."""

    def __init__(self, message, *, code="tool_error", tool=None):
        super().__init__(message)
        self.code = code
        self.tool = tool


class HostAbort(BaseException):
    """The host ended the run (a limit was hit). Not meant to be caught."""


class _Deadlock(RuntimeError):
    pass


class _HostSelector:
    """Stands where `BaseEventLoop` expects a selector; "polling" means sending the
    pending tool calls to the host, or sleeping until the next timer."""

    def __init__(self, loop):
        self._loop = loop

    def select(self, timeout):
        loop = self._loop
        if timeout == 0:
            return []
        if loop._pending:
            loop._flush()
            return []
        if timeout is None:
            raise _Deadlock("every task is waiting and no tool call is pending: the program can never finish")
        _guarded_sleep(timeout)
        return []

    def close(self):
        pass


class HostLoop(asyncio.BaseEventLoop):
    """An asyncio loop without a selector: it runs tasks until all of them wait
    on tool calls, then flushes those calls to the host as one batch."""

    def __init__(self):
        super().__init__()
        self._host_call = _run_state.host_call
        self._selector = _HostSelector(self)
        self._pending = []  # [(call_id, future, call_json)]
        self._next_id = 0

    def _process_events(self, event_list):
        pass

    def _write_to_self(self):
        pass

    def call_tool(self, namespace, name, args):
        future = self.create_future()
        try:
            prefix = _call_prefixes.get((namespace, name))
            if prefix is None:
                prefix = _call_prefixes[(namespace, name)] = _encode_call({"ns": namespace, "tool": name})[:-1]
            call_json = prefix + ',"args":' + _encode_call(args) + "}"
        except (TypeError, ValueError) as exc:
            future.set_exception(
                ToolError(
                    f"arguments of {namespace}.{name} are not JSON-serializable: {exc}",
                    code="invalid_arguments",
                    tool=f"{namespace}.{name}",
                )
            )
            return future
        self._next_id += 1
        if not self._pending and not self._ready and not self._scheduled:
            # Nothing else can run before the loop would flush this call alone:
            # cross now and hand back a done future, saving a loop round trip.
            outcomes = _parse_json(self._host_call('[{"id":%d,"call":%s}]' % (self._next_id, call_json)))
            if isinstance(outcomes, dict):
                raise HostAbort(str(outcomes.get("abort", "the host ended the run")))
            _settle(future, outcomes[0])
            return future
        self._pending.append((self._next_id, future, call_json))
        return future

    def _flush(self):
        pending = self._pending
        self._pending = []
        by_id = {}
        parts = []
        for call_id, future, call_json in pending:
            if not future.cancelled():
                by_id[call_id] = future
                parts.append('{"id":%d,"call":%s}' % (call_id, call_json))
        if not parts:
            return
        outcomes = _parse_json(self._host_call("[" + ",".join(parts) + "]"))
        if isinstance(outcomes, dict):
            raise HostAbort(str(outcomes.get("abort", "the host ended the run")))
        for outcome in outcomes:
            future = by_id.pop(outcome["id"], None)
            if future is not None and not future.done():
                _settle(future, outcome)
        for future in by_id.values():
            if not future.done():
                future.set_exception(ToolError("the host returned no outcome for this call"))


def _parse_json(text):
    """`json.loads` for the host's own JSON, without its Python-level wrappers."""
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else _loads(text)


def _settle(future, outcome):
    if outcome["ok"]:
        future.set_result(outcome["value"])
    else:
        err = outcome["error"]
        future.set_exception(ToolError(err["message"], code=err.get("code", "tool_error"), tool=err.get("tool")))


# Per run; thread-local because the restricted backend runs several at once in
# one process, each on its own worker thread.
_run_state = threading.local()


def _guarded_sleep(seconds):
    """time.sleep capped at the run's deadline. A convenience only: the host
    serves the guest's clocks and polls itself and ends every wait at the
    run's deadline or cancellation (codemode/_sandbox/wasi.py), whatever the
    guest does to this function or its deadline field."""
    seconds = float(seconds)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = getattr(_run_state, "deadline", None)
    if deadline is not None:
        seconds = min(seconds, max(0.0, deadline - _monotonic()) + 0.05)
    _real_sleep(seconds)


def _call_tool(namespace, name, args):
    """What every stub calls. Returns an awaitable for the call's outcome."""
    loop = _get_running_loop()
    if not isinstance(loop, HostLoop):
        raise RuntimeError(
            f"{namespace}.{name}() must be awaited inside codemode's event loop: "
            "use top-level `await`, or `asyncio.run(main())`"
        )
    return loop.call_tool(namespace, name, {k: v for k, v in args.items() if v is not None})


# What the stubs import from typing, bound in every run as before.
_TYPING_GLOBALS = {n: getattr(typing, n) for n in ("Any", "Literal", "NotRequired", "Required", "TypedDict")}
# (Python 3.12+; the restricted backend may run on 3.11, where it is not needed.)
_mark_coroutine = getattr(inspect, "markcoroutinefunction", lambda fn: fn)


async def _invoke(namespace, name, args):
    return await _call_tool(namespace, name, args)


def _tool_function(namespace, name, record):
    """The callable `namespace.name`: keyword arguments only, checked against
    the tool's record (if the host sent one) as the stub's signature would."""
    qualified = f"{namespace}.{name}"
    if record is None:
        allowed, required, defaults = None, (), None
    else:
        allowed, required, defaults = frozenset(record[0]), record[1], record[2]

    def call(*args, **kwargs):
        if args:
            raise TypeError(f"{qualified}() takes keyword arguments only ({len(args)} positional given)")
        if allowed is not None:
            for key in kwargs:
                if key not in allowed:
                    raise TypeError(f"{qualified}() got an unexpected keyword argument {key!r}")
        for key in required:
            if key not in kwargs:
                raise TypeError(f"{qualified}() missing required keyword argument: {key!r}")
        if defaults:
            kwargs = {**defaults, **kwargs}
        return _invoke(namespace, name, kwargs)

    call.__name__ = name
    call.__qualname__ = qualified
    return _mark_coroutine(call)


class _Namespace:
    """A server's tools; each bound on first use (see the module docstring)."""

    def __init__(self, name, names, records):
        self.__dict__["_codemode_ns"] = (name, names, records, None)

    def __getattr__(self, attr):
        name, names, records, known = self.__dict__["_codemode_ns"]
        record = records.get(attr)
        if record is None:
            if known is None:
                known = set(names.split())
                self.__dict__["_codemode_ns"] = (name, names, records, known)
            if attr not in known:
                raise AttributeError(f"namespace {name!r} has no tool {attr!r}")
        fn = self.__dict__[attr] = _tool_function(name, attr, record)
        return fn

    def __dir__(self):
        return sorted(self.__dict__["_codemode_ns"][1].split())

    def __repr__(self):
        return f"<tools of namespace {self.__dict__['_codemode_ns'][0]!r}>"


def _bind_tools(request, g):
    """Put the run's namespaces and the types its code names into `g`."""
    g.update(_TYPING_GLOBALS)
    for ns, spec in (request.get("namespaces") or {}).items():
        g[ns] = _Namespace(ns, spec.get("names", ""), spec.get("tools") or {})
    source = request.get("types")
    if source:
        exec(compile(source, "<stubs>", "exec", dont_inherit=True), g)
    stubs = request.get("stubs")
    if stubs:
        exec(compile(stubs, "<stubs>", "exec", dont_inherit=True), g)


class _CappedText:
    """A write-only text stream that keeps at most `limit` characters."""

    def __init__(self, limit):
        self.limit = limit
        self.parts = []
        self.size = 0
        self.omitted = 0

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        room = self.limit - self.size
        if room > 0:
            kept = text[:room]
            self.parts.append(kept)
            self.size += len(kept)
            self.omitted += len(text) - len(kept)
        else:
            self.omitted += len(text)
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False

    def text(self):
        out = "".join(self.parts)
        if self.omitted:
            out += TRUNCATION_MARKER.format(omitted=self.omitted)
        return out


def _jsonable(obj):
    """`default=` for json.dumps: common non-JSON values become data; anything
    else becomes a (capped) repr instead of an error."""
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (decimal.Decimal, fractions.Fraction, uuid.UUID)):
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(obj)).decode("ascii")}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return _safe_repr(obj)


def _safe_repr(obj, limit=2000):
    try:
        text = repr(obj)
    except BaseException:  # a hostile __repr__ must not break the answer
        return f"<unrepresentable {type(obj).__name__} object>"
    if not isinstance(text, str):
        return f"<unrepresentable {type(obj).__name__} object>"
    return text if len(text) <= limit else text[:limit] + TRUNCATION_MARKER.format(omitted=len(text) - limit)


def _replace_unencodable(obj):
    """`obj` with what JSON cannot hold made text: NaN and infinities, and ints
    too long to print (Python refuses more than 4300 digits)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, int) and obj.bit_length() > 14_000:
        try:
            int.__repr__(obj)
        except ValueError:
            return f"<int of {obj.bit_length()} bits, too long to show>"
    if isinstance(obj, dict):
        return {k: _replace_unencodable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_replace_unencodable(v) for v in obj]
    return obj


_encode_value = json.JSONEncoder(default=_jsonable, allow_nan=False, ensure_ascii=False).encode
_encode_str = json.encoder.encode_basestring
_encode_text = json.JSONEncoder(ensure_ascii=False).encode
# Room for the truncation marker, as JSON, past `max_result` (the host allows this much).
MARKER_ROOM = 64
_JSON_KEYS = (str, int, float, bool)


class NotSerializable(Exception):
    """The result holds a value JSON cannot represent, at `path`."""

    def __init__(self, path, obj, reason):
        super().__init__(reason)
        self.path = path
        self.obj = obj
        self.reason = reason


def _locate(obj, path, ancestors):
    """(path, value, reason) of the first part of `obj` that cannot be encoded
    the way `_encode_value` does it; None if there is none."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return None
    if id(obj) in ancestors:
        return path, obj, "it contains itself"
    if isinstance(obj, dict):
        ancestors.add(id(obj))
        for key, item in obj.items():
            if key is not None and not isinstance(key, _JSON_KEYS):
                return (
                    path,
                    key,
                    f"it has a key of type {type(key).__name__}; keys must be str, int, float, bool or None",
                )
            found = _locate(item, f"{path}[{_safe_repr(key, 60)}]", ancestors)
            if found:
                return found
        ancestors.discard(id(obj))
        return None
    if isinstance(obj, (list, tuple)):
        ancestors.add(id(obj))
        for i, item in enumerate(obj):
            found = _locate(item, f"{path}[{i}]", ancestors)
            if found:
                return found
        ancestors.discard(id(obj))
        return None
    try:
        converted = _jsonable(obj)
    except Exception as exc:
        return path, obj, f"converting it raised {type(exc).__name__}: {_safe_repr(exc, 200)}"
    return None if isinstance(converted, str) else _locate(converted, path, ancestors)


def _not_serializable(value, error):
    try:
        found = _locate(value, "result", set())
    except RecursionError:
        found = "result", value, "it is nested too deeply"
    if found is None:
        found = "result", value, f"{type(error).__name__}: {_safe_repr(error, 200)}"
    return NotSerializable(*found)


def _truncated(text, limit):
    """`text` cut to a JSON string of at most `limit + MARKER_ROOM` characters,
    escapes included, with a visible marker."""
    cut = limit
    while True:
        out = _encode_text(text[:cut] + TRUNCATION_MARKER.format(omitted=len(text) - cut))
        over = len(out) - limit - MARKER_ROOM
        if over <= 0 or cut == 0:
            return out
        cut = max(0, cut - over)


def encode_value(value, limit):
    """(json_text, truncated). Over the limit, the value becomes a string: the
    start of its JSON text and a visible truncation marker.

    Raises `NotSerializable` if JSON cannot represent some part of it."""
    try:
        text = _encode_str(value) if type(value) is str else _encode_value(value)
    except Exception as error:  # the value's own methods may raise anything
        text = None
        if isinstance(error, ValueError):  # NaN, infinities, ints too long to print
            try:
                text = _encode_value(_replace_unencodable(value))
            except Exception:
                pass
        if text is None:
            raise _not_serializable(value, error) from None
    if len(text) <= limit:
        return text, False
    return _truncated(text, limit), True


def _prepare(code):
    """Parse the model's code; make the last expression statement the result."""
    tree = compile(code, CODE_FILENAME, "exec", _ONLY_AST, dont_inherit=True)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        where = {
            "lineno": last.lineno,
            "col_offset": last.col_offset,
            "end_lineno": last.end_lineno,
            "end_col_offset": last.end_col_offset,
        }
        target = ast.Name(RESULT_NAME, ast.Store(), **where)
        tree.body[-1] = ast.Assign(targets=[target], value=last.value, **where)
    return tree


def _compile_default(tree):
    return compile(tree, CODE_FILENAME, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


_MAX_FRAMES = 60


def _user_frames(tb, code):
    code_lines = code.splitlines()
    frames = []
    extracted = traceback.extract_tb(tb)
    if len(extracted) > _MAX_FRAMES:  # deep recursion: the outermost and innermost
        extracted = extracted[: _MAX_FRAMES // 2] + extracted[-_MAX_FRAMES // 2 :]
    for frame in extracted:
        if frame.filename != CODE_FILENAME:
            continue
        lineno = frame.lineno or 0
        text = code_lines[lineno - 1].strip()[:300] if 0 < lineno <= len(code_lines) else ""
        frames.append({"line": lineno, "name": frame.name, "text": text})
    return frames


def _exception_error(exc, code):
    error = {
        "kind": "tool" if isinstance(exc, ToolError) else "exception",
        "type": type(exc).__name__,
        "message": _safe_repr(exc, 4000) if not _str_ok(exc) else str(exc)[:4000],
        "traceback": _user_frames(exc.__traceback__, code),
    }
    if isinstance(exc, ToolError):
        error["code"] = exc.code
        error["tool"] = exc.tool
    if isinstance(exc, _Deadlock):
        error["kind"] = "deadlock"
    return error


def _str_ok(exc):
    try:
        str(exc)
        return True
    except BaseException:
        return False


def _syntax_error(exc):
    return {
        "kind": "syntax",
        "type": type(exc).__name__,
        "message": exc.msg or "invalid syntax",
        "line": exc.lineno,
        "column": exc.offset,
        "text": (exc.text or "").rstrip("\n"),
    }


def _run_async(coro):
    runner = asyncio.Runner(loop_factory=HostLoop)
    try:
        return runner.run(coro)
    finally:
        # Tasks the program started and never awaited are cancelled, not awaited.
        try:
            runner.close()
        except HostAbort:
            raise
        except BaseException:
            pass


def asyncio_run(main, *, debug=None, loop_factory=None):
    """`asyncio.run` for the sandbox: always on a HostLoop, so tool calls work."""
    if not inspect.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_async(main)
    main.close()
    raise RuntimeError(
        "asyncio.run() cannot be called while the program is already running in the "
        "event loop (top-level `await` was used): write `await main()` instead"
    )


def _default_globals(out):
    return {}


def _nothing():
    pass


def execute(request, host_call, *, compile_code=_compile_default, make_globals=_default_globals, after_code=_nothing):
    """Run one request; return the response as a dict (never raises, but for HostAbort).

    `make_globals(out)` returns the globals for the model's code and routes its
    output into `out` (a _CappedText). `after_code()` runs as soon as the
    model's code is done, before the answer is put together."""
    limits = request.get("limits") or {}
    max_stdout = int(limits.get("max_stdout", 64_000))
    max_result = int(limits.get("max_result", 64_000))
    deadline_s = request.get("deadline_s")
    _run_state.deadline = _monotonic() + float(deadline_s) if deadline_s else None
    _run_state.host_call = host_call

    out = _CappedText(max_stdout)
    code = request["code"]
    response = {"ok": False, "stdout": "", "stdout_truncated": False}
    try:
        try:
            tree = _prepare(code)
            code_obj = compile_code(tree)
        except SyntaxError as exc:
            response["error"] = _syntax_error(exc)
            return response
        except ValueError as exc:  # e.g. null bytes, before Python 3.12
            response["error"] = {
                "kind": "syntax",
                "type": "SyntaxError",
                "message": str(exc),
                "line": None,
                "column": None,
                "text": "",
            }
            return response

        g = make_globals(out)
        g.update({"__name__": "__main__", "_call_tool": _call_tool, "ToolError": ToolError})
        _bind_tools(request, g)
        try:
            try:
                if code_obj.co_flags & _CO_COROUTINE:
                    _run_async(eval(code_obj, g))
                else:
                    exec(code_obj, g)
            finally:
                after_code()
            value = g.get(RESULT_NAME)
            if isinstance(value, _Coroutine):
                value.close()
                raise TypeError("the last expression is a coroutine that was never awaited: did you forget `await`?")
        except HostAbort:
            raise
        except BaseException as exc:  # the model's code may raise anything, SystemExit included
            response["error"] = _exception_error(exc, code)
            return response
        try:
            text, truncated = encode_value(value, max_result)
        except NotSerializable as exc:
            response["error"] = {
                "kind": "not_serializable",
                "type": type(exc.obj).__name__,
                "path": exc.path,
                "repr": _safe_repr(exc.obj, 200),
                "message": f"the result cannot be returned as JSON: {exc.path} ({type(exc.obj).__name__}): {exc.reason}",
            }
            return response
        response.update({"ok": True, "value_json": text, "value_truncated": truncated})
        return response
    finally:
        response["stdout"] = out.text()
        response["stdout_truncated"] = bool(out.omitted)


def handle(request_json, host_call, **kwargs):
    """JSON in, JSON out; the entry point both backends call."""
    try:
        request = _parse_json(request_json)
        response = execute(request, host_call, **kwargs)
    except HostAbort:
        return '{"ok":false,"error":{"kind":"aborted","type":"HostAbort","message":"the host ended the run"}}'
    except BaseException as exc:  # a runtime bug: still one well-formed answer
        error = {"kind": "internal", "type": type(exc).__name__, "message": _safe_repr(exc, 2000)}
        return _dumps({"ok": False, "error": error, "stdout": "", "stdout_truncated": False})
    value_json = response.pop("value_json", None)
    body = _encode_response(response)
    if value_json is None:
        return body
    # Splice the already-encoded value in rather than decoding and re-encoding it.
    return body[:-1] + ',"value":' + value_json + "}"
