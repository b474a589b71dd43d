"""Output shapes learned from results, for tools that declare no outputSchema.

Most MCP tools declare no output schema, so their stubs return `Any` and the
model has to guess what comes back. `ShapeRecorder` records the shape of each
result actually seen (opt-in), merges the shapes of all calls of a tool, and
offers it as an *observed* output schema: a JSON-Schema subset that carries
`"x-codemode-observed": true` and `"x-codemode-observations": N`, so nobody
mistakes it for a promise the server made.

How a stub should show it: use it as the return annotation, and put
`observed_note(schema)` in the docstring, e.g.

    Returns (observed over 12 calls, not declared): may differ on other calls.

Merging: an object key is required when every observed object had it; a value
seen with several types becomes a union (`anyOf`, or a `type` list for
scalars); integers and floats at one place merge into `number`. Depth, keys per
object and sampled array items are capped, where the shape is left open
(`additionalProperties: true`, or an array without `items`).

Keys and strings in the file come from servers: whoever renders them into
stubs must treat them as untrusted text (`codemode._names`).

File format, version 1, beside the lock file (`codemode.observed.json`):

    {"version": 1, "tools": {"<server>": {"<tool>": <node>}}}
    node = {"types": {"<type>": {"n": count, ...}}}
      object: {"n": c, "keys": {"<key>": node}, "open": bool}
      array:  {"n": c, "items": node | null, "open": bool}
      string, integer, number, boolean, null, any: {"n": c}

Counts, not just schemas, are stored so that later observations merge exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ._errors import CodemodeError
from ._pinning import atomic_write_json

__all__ = [
    "OBSERVED_FILE_NAME",
    "ObservedShapesError",
    "ShapeRecorder",
    "is_observed",
    "observed_note",
]

OBSERVED_FILE_NAME = "codemode.observed.json"
_VERSION = 1
_OBSERVED_KEY = "x-codemode-observed"
_COUNT_KEY = "x-codemode-observations"
_SCALARS = ("string", "integer", "number", "boolean", "null")
_TYPES = frozenset({"object", "array", "any", *_SCALARS})

Node = dict[str, Any]


class ObservedShapesError(CodemodeError):
    """The observed-shapes file exists but cannot be read."""

    code: ClassVar[str] = "observed_shapes_invalid"

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(
            f"observed shapes file {str(path)!r} is invalid: {problem}; delete it to start over (it holds no configuration)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "path": str(self.path)}


def _json_type(value: object) -> str:
    # bool before int: True is an int to Python, not to JSON.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return "any"


@dataclass(frozen=True, kw_only=True)
class _Caps:
    depth: int
    keys: int
    items: int


def _observe(node: Node, value: object, depth: int, caps: _Caps) -> None:
    kind = _json_type(value)
    entry: dict[str, Any] = node.setdefault("types", {}).setdefault(kind, {"n": 0})
    entry["n"] += 1
    if kind == "object":
        assert isinstance(value, Mapping)
        keys: dict[str, Node] = entry.setdefault("keys", {})
        entry.setdefault("open", False)
        if depth >= caps.depth:
            entry["open"] = True
            return
        for key, child in value.items():
            key = str(key)
            if key not in keys:
                if len(keys) >= caps.keys:
                    entry["open"] = True
                    continue
                keys[key] = {"types": {}}
            _observe(keys[key], child, depth + 1, caps)
    elif kind == "array":
        assert isinstance(value, (list, tuple))
        entry.setdefault("items", None)
        entry.setdefault("open", False)
        if depth >= caps.depth:
            entry["open"] = entry["open"] or bool(value)
            return
        for item in value[: caps.items]:
            if entry["items"] is None:
                entry["items"] = {"types": {}}
            _observe(entry["items"], item, depth + 1, caps)


def _count(node: Node) -> int:
    return sum(int(t["n"]) for t in node["types"].values())


def _schema(node: Node) -> dict[str, Any]:
    types: dict[str, Any] = node["types"]
    if "any" in types:
        return {}
    options: list[dict[str, Any]] = []
    if "object" in types:
        obj = types["object"]
        keys: dict[str, Node] = obj["keys"]
        schema: dict[str, Any] = {"type": "object", "properties": {k: _schema(v) for k, v in keys.items()}}
        required = [k for k, v in keys.items() if _count(v) == obj["n"]]
        if required:
            schema["required"] = required
        if obj["open"]:
            schema["additionalProperties"] = True
        options.append(schema)
    if "array" in types:
        arr = types["array"]
        options.append(
            {"type": "array", "items": _schema(arr["items"])} if arr["items"] is not None else {"type": "array"}
        )
    scalars = [t for t in _SCALARS if t in types and not (t == "integer" and "number" in types)]
    if scalars:
        options.append({"type": scalars[0] if len(scalars) == 1 else scalars})
    return options[0] if len(options) == 1 else {"anyOf": options}


def _valid_node(node: object, depth: int) -> bool:
    # Deep enough for any caps a recorder uses; deeper means the file is not ours.
    if depth > 64 or not isinstance(node, dict) or not isinstance(node.get("types"), dict):
        return False
    for kind, entry in node["types"].items():
        if kind not in _TYPES or not isinstance(entry, dict):
            return False
        n = entry.get("n")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return False
        if kind == "object":
            keys = entry.get("keys")
            if not isinstance(keys, dict) or not isinstance(entry.get("open"), bool):
                return False
            if not all(_valid_node(child, depth + 1) and _count(child) <= n for child in keys.values()):
                return False
        if kind == "array":
            items = entry.get("items")
            if not isinstance(entry.get("open"), bool) or not (items is None or _valid_node(items, depth + 1)):
                return False
    return bool(node["types"])


@dataclass(kw_only=True)
class ShapeRecorder:
    """Shapes of the results seen per tool (by server name and wire tool name).

    In memory until `save()`; `path` is where `save()` writes. Meant to be fed
    from one event loop: it holds no lock."""

    path: Path | None = None
    max_depth: int = 6
    """Objects and arrays nested deeper are recorded as open, without their contents."""
    max_keys: int = 50
    """Distinct keys kept per object; more mark it open (maps keyed by ids end up here)."""
    max_items: int = 50
    """Array items sampled per observation (the first ones)."""
    _shapes: dict[tuple[str, str], Node] = field(default_factory=dict, repr=False)
    _dirty: bool = field(default=False, repr=False)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, max_depth: int = 6, max_keys: int = 50, max_items: int = 50
    ) -> ShapeRecorder:
        """The recorder kept at `path`; empty if the file does not exist.

        Raises `ObservedShapesError` if the file is not a valid shapes file and
        `OSError` if it cannot be read."""
        path = Path(path)
        recorder = cls(path=path, max_depth=max_depth, max_keys=max_keys, max_items=max_items)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return recorder
        except UnicodeDecodeError as exc:
            raise ObservedShapesError(path, "not UTF-8 text") from exc
        except json.JSONDecodeError as exc:
            raise ObservedShapesError(path, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ObservedShapesError(path, f"expected an object with version {_VERSION}")
        servers = data.get("tools")
        if not isinstance(servers, dict):
            raise ObservedShapesError(path, '"tools" is not an object')
        for server, tools in servers.items():
            if not isinstance(tools, dict):
                raise ObservedShapesError(path, f"tools of server {server!r} are not an object")
            for tool, node in tools.items():
                if not _valid_node(node, 0):
                    raise ObservedShapesError(path, f"the shape of server {server!r} tool {tool!r} is malformed")
                recorder._shapes[(server, tool)] = node
        return recorder

    @property
    def dirty(self) -> bool:
        """Whether there are observations `save()` has not written yet."""
        return self._dirty

    def observe(self, namespace: str, tool: str, value: object) -> None:
        """Merge the shape of `value`, one result of `namespace`'s `tool`, into
        what was seen before. Values that are not JSON data count as "any"."""
        caps = _Caps(depth=self.max_depth, keys=self.max_keys, items=self.max_items)
        _observe(self._shapes.setdefault((namespace, tool), {"types": {}}), value, 0, caps)
        self._dirty = True

    def observations(self, namespace: str, tool: str) -> int:
        """How many results of the tool were observed."""
        node = self._shapes.get((namespace, tool))
        return _count(node) if node else 0

    def inferred_output_schema(self, namespace: str, tool: str) -> dict[str, Any] | None:
        """The merged shape of the tool's results as JSON Schema, marked
        `"x-codemode-observed": true` with `"x-codemode-observations": N`;
        None if nothing was observed. A fresh dict each call."""
        node = self._shapes.get((namespace, tool))
        if not node or not node["types"]:
            return None
        return {**_schema(node), _OBSERVED_KEY: True, _COUNT_KEY: _count(node)}

    def forget(self, namespace: str, tool: str | None = None) -> None:
        """Drop what was observed for one tool, or for every tool of `namespace`
        (do this when a tool's definition changes: old results no longer say much)."""
        for key in [k for k in self._shapes if k[0] == namespace and (tool is None or k[1] == tool)]:
            del self._shapes[key]
            self._dirty = True

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write every shape atomically (to `path`, else `self.path`).

        Raises `ValueError` if there is no path, `OSError` if writing fails."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("ShapeRecorder has no path: pass one to save() or use ShapeRecorder.load(path)")
        tools: dict[str, dict[str, Node]] = {}
        for (server, tool), node in sorted(self._shapes.items()):
            tools.setdefault(server, {})[tool] = node
        # sort_keys would reorder object keys; keep first-seen order, it reads better.
        atomic_write_json(target, {"version": _VERSION, "tools": tools}, sort_keys=False)
        self.path = target
        self._dirty = False


def is_observed(schema: Mapping[str, Any] | None) -> bool:
    """Whether `schema` was inferred from results rather than declared by the server."""
    return schema is not None and schema.get(_OBSERVED_KEY) is True


def observed_note(schema: Mapping[str, Any] | None) -> str | None:
    """The docstring line a stub shows for an observed output schema, e.g.
    "Returns (observed over 12 calls, not declared): may differ on other calls.";
    None for a declared schema."""
    if not is_observed(schema):
        return None
    assert schema is not None
    n = schema.get(_COUNT_KEY)
    calls = f"{n} call{'s' if n != 1 else ''}" if isinstance(n, int) else "earlier calls"
    return f"Returns (observed over {calls}, not declared): may differ on other calls."
