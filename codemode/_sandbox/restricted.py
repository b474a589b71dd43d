"""The `restricted` backend: the same code contract, run in-process with RestrictedPython.

NOT A SECURITY BOUNDARY. It runs the model's code in the host process with
RestrictedPython's compile-time checks and guarded builtins. Those stop casual
access to private attributes and unlisted modules, but CPython has many ways
around them, memory is not limited at all, and a timeout can only interrupt
Python bytecode (by raising into the worker thread), not a long C call such as a
huge `pow` or a catastrophic regex. It exists as a speed baseline and for hosts
where wasmtime is not available. Use the default `wasm` backend for untrusted code.

It executes the guest runtime itself (`sandbox/guest/runtime.py`), so the result,
print capture, tool-call batching and error shapes are the wasm backend's.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import ctypes
import importlib.util
import operator
import re
import threading
import time
import types
from collections.abc import Callable
from functools import cache
from typing import Any

from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
    safer_getattr,
)
from RestrictedPython.Limits import limited_builtins
from RestrictedPython.transformer import RestrictingNodeTransformer
from RestrictedPython.Utilities import utility_builtins

from .._errors import RunCancelled, RunTimeout
from .._limits import Limits
from . import guest
from .epoch import RunGuard

__all__ = ["RestrictedBackend"]

NOT_A_BOUNDARY = "restricted backend: in-process RestrictedPython, NOT a security boundary"

# The curated stdlib, as in the wasm guest (sandbox/guest/app.py).
_ALLOWED_MODULES = frozenset(
    [
        "asyncio",
        "base64",
        "bisect",
        "calendar",
        "collections",
        "copy",
        "csv",
        "dataclasses",
        "datetime",
        "decimal",
        "difflib",
        "enum",
        "fractions",
        "functools",
        "hashlib",
        "heapq",
        "html",
        "io",
        "itertools",
        "json",
        "math",
        "operator",
        "pprint",
        "random",
        "re",
        "statistics",
        "string",
        "textwrap",
        "time",
        "typing",
        "urllib",
        "urllib.parse",
        "uuid",
        "zoneinfo",
    ]
)
_EXTRA_BUILTINS = [
    "all",
    "any",
    "dict",
    "enumerate",
    "filter",
    "iter",
    "list",
    "map",
    "max",
    "min",
    "next",
    "reversed",
    "set",
    "frozenset",
    "sorted",
    "sum",
    "staticmethod",
    "classmethod",
    "property",
    "super",
    "type",
    "object",
    "Exception",
    "BaseException",
]
_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
    "@=": operator.imatmul,
}


class _Timeout(BaseException):
    """Raised into the worker thread when the run's deadline passes."""


@cache
def _runtime() -> types.ModuleType:
    path = guest.guest_source_dir() / "guest" / "runtime.py"
    spec = importlib.util.spec_from_file_location("codemode._guest_runtime", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _policy(result_name: str) -> type[RestrictingNodeTransformer]:
    class AsyncPolicy(RestrictingNodeTransformer):
        """RestrictedPython's policy, with async code allowed under the same
        checks as its sync counterpart, and the runtime's result variable."""

        def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
            if name != result_name:
                super().check_name(node, name, allow_magic_methods)

        def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> Any:
            return self.visit_FunctionDef(node)  # type: ignore[arg-type]

        def visit_Await(self, node: ast.Await) -> Any:
            return self.node_contents_visit(node)

        def visit_AsyncFor(self, node: ast.AsyncFor) -> Any:
            return self.node_contents_visit(node)

        def visit_AsyncWith(self, node: ast.AsyncWith) -> Any:
            return self.node_contents_visit(node)

    return AsyncPolicy


@cache
def _shims() -> dict[str, types.ModuleType]:
    rt = _runtime()
    shim_asyncio = types.ModuleType("asyncio")
    shim_asyncio.__dict__.update({k: v for k, v in vars(asyncio).items() if not k.startswith("_")})
    shim_asyncio.run = rt.asyncio_run  # type: ignore[attr-defined]
    shim_asyncio.new_event_loop = rt.HostLoop  # type: ignore[attr-defined]
    shim_time = types.ModuleType("time")
    shim_time.__dict__.update({k: v for k, v in vars(time).items() if not k.startswith("_")})
    shim_time.sleep = rt._guarded_sleep  # type: ignore[attr-defined]
    return {"asyncio": shim_asyncio, "time": shim_time}


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level != 0 or name not in _ALLOWED_MODULES:
        raise ImportError(f"module {name!r} is not available in the sandbox")
    shims = _shims()
    if name in shims:
        return shims[name]
    return __import__(name, globals, locals, fromlist, level)


def _make_globals(out: Any) -> dict[str, Any]:
    class Printer:
        def __init__(self, _getattr_: Any = None) -> None:
            pass

        def _call_print(self, *objects: Any, **kwargs: Any) -> None:
            kwargs.pop("file", None)
            print(*objects, file=out, **kwargs)

        def __call__(self) -> str:
            return ""

    names = dict(safe_builtins)
    names.update(limited_builtins)
    names.update(utility_builtins)
    names.update({name: getattr(builtins, name) for name in _EXTRA_BUILTINS})
    # limited_builtins caps range() at 1,000 items, which breaks ordinary programs.
    names["range"] = range
    names["__import__"] = _guarded_import
    names["__build_class__"] = builtins.__build_class__
    names["locals"] = builtins.locals  # the stubs pass their arguments with locals()
    return {
        "__builtins__": names,
        "__metaclass__": type,
        "_getattr_": safer_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": full_write_guard,
        "_print_": Printer,
        "_inplacevar_": _inplace,
        "_apply_": lambda f, *a, **kw: f(*a, **kw),
    }


def _inplace(op: str, x: Any, y: Any) -> Any:
    return _INPLACE[op](x, y)


class RestrictedBackend:
    """In-process execution with RestrictedPython. Not a security boundary."""

    name = "restricted"

    def load(self, **_: Any) -> None:
        _runtime()

    def execute(self, request_json: str, host_call: Any, limits: Limits, guard: RunGuard) -> tuple[str, float]:
        """Run one request on this thread; (response JSON, setup seconds).

        Raises `RunTimeout` or `RunCancelled` (an exception is raised into the
        thread) if `guard`'s deadline passes or it is cancelled while Python code
        is running."""
        t0 = time.perf_counter()
        rt = _runtime()
        policy = _policy(rt.RESULT_NAME)

        def compile_code(tree: ast.Module) -> types.CodeType:
            # compile_restricted() drops `flags`, so top-level await would be
            # refused: apply the policy ourselves, then compile with the flag.
            errors: list[str] = []
            policy(errors, [], {}).visit(tree)
            if errors:
                match = re.match(r"Line (\d+): ", errors[0])
                exc = SyntaxError("; ".join(errors))
                exc.lineno = int(match.group(1)) if match else None
                raise exc
            code: types.CodeType = compile(
                tree, rt.CODE_FILENAME, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
            )
            return code

        done = threading.Event()
        fired: list[bool] = []
        thread_id = threading.get_ident()

        def watchdog() -> None:
            while not done.wait(0.01):
                if guard.cancelled.is_set() or time.monotonic() >= guard.deadline:
                    break
            else:
                return
            fired.append(True)
            # Keep raising until the thread leaves the user's code; a model
            # that catches BaseException in a loop keeps the thread (see docstring).
            while not done.wait(0.05):
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(_Timeout))

        threading.Thread(target=watchdog, name="codemode-restricted-watchdog", daemon=True).start()
        startup = time.perf_counter() - t0
        try:
            try:
                response = rt.handle(request_json, host_call, compile_code=compile_code, make_globals=_make_globals)
            finally:
                done.set()
        except _Timeout:
            fired.append(True)
        if fired:
            if guard.cancelled.is_set():
                raise RunCancelled("the run was cancelled")
            raise RunTimeout(f"the run exceeded its {limits.timeout:g} s timeout")
        return response, startup
