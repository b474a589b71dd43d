"""What the guest binds for a run's tools: lazy namespaces, not compiled stubs.

Compiling the typed stubs of a namespace in every fresh guest cost 4.4 ms at 25
tools and 229 ms at 1,000, although the guest needs only names to bind. So
the request carries, per namespace, its tools' names (one string) and a small
record (parameter names, required ones, defaults) for each tool whose name
appears in the code; the guest's namespace object makes a call wrapper on
first attribute lookup (`sandbox/guest/runtime.py`). A tool reached by a name
the code spells only at run time (`getattr(ns, "read_" + kind)`) gets a
wrapper without a record: its arguments are checked by the host alone, which
checks every call anyway (`dispatch.py`): the records are a convenience, so
that a wrong keyword is a `TypeError` at the call, as the stub promises.
TypedDicts and the untyped alias are defined only when the code names them.

Everything here is built once per tool set (`Sandbox.stubs` caches it) and
encoded as JSON fragments, so a run pays only for the names in its code.
"""

from __future__ import annotations

import json
import re

from .._stubgen import RuntimeType, StubSet

__all__ = ["GuestTools", "identifiers"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def identifiers(code: str) -> set[str]:
    """Every identifier-like word of `code`, in strings and comments too, so
    that `getattr(ns, "tool")` finds the tool's record."""
    return set(_IDENT.findall(code))


class GuestTools:
    """The request fields that bind one tool set in the guest."""

    def __init__(self, stubs: StubSet) -> None:
        names: dict[str, list[str]] = {}
        self._records: dict[tuple[str, str], str] = {}
        for (ns, name), b in stubs.bindings.items():
            names.setdefault(ns, []).append(name)
            record = [list(b.params), list(b.required), dict(b.defaults)]
            self._records[(ns, name)] = _encode(name) + ":" + _encode(record)
        self._heads = {
            ns: _encode(ns) + ':{"names":' + _encode(" ".join(tools)) + ',"tools":{' for ns, tools in names.items()
        }
        self._types: dict[str, RuntimeType] = {t.name: t for t in stubs.types}
        self._order = {t.name: i for i, t in enumerate(stubs.types)}

    def request_fields(self, words: set[str]) -> str:
        """`"namespaces":{...},"types":"..."` for code whose identifiers are `words`."""
        parts = []
        for ns, head in self._heads.items():
            tools = [r for w in words if (r := self._records.get((ns, w))) is not None]
            parts.append(head + ",".join(tools) + "}}")
        return '"namespaces":{' + ",".join(parts) + '},"types":' + _encode(self._types_source(words))

    def _types_source(self, words: set[str]) -> str:
        todo = [w for w in words if w in self._types]
        needed: set[str] = set()
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo.extend(self._types[name].refs)
        return "\n\n".join(self._types[n].source for n in sorted(needed, key=self._order.__getitem__))
