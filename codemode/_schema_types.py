"""JSON Schema -> Python type annotations, as source text.

Every value that comes from a schema reaches the annotation through `repr`, so
a hostile enum value cannot break out of a `Literal[...]`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["annotation_for"]

_SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
_LITERAL_TYPES = (str, int, bool, type(None))


def _union(parts: list[str]) -> str:
    seen: list[str] = []
    for part in parts:
        if part == "Any":
            return "Any"
        if part not in seen:
            seen.append(part)
    return " | ".join(seen) if seen else "Any"


def annotation_for(schema: object, *, depth: int = 0) -> str:
    """The annotation for `schema`; `Any` for whatever it cannot express."""
    if depth > 20 or not isinstance(schema, Mapping):
        return "Any"
    if "const" in schema and isinstance(schema["const"], _LITERAL_TYPES):
        return f"Literal[{schema['const']!r}]"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, _LITERAL_TYPES) for v in enum):
        values = [v for v in enum if v is not None]
        lit = f"Literal[{', '.join(repr(v) for v in values)}]" if values else "None"
        return lit + (" | None" if None in enum and values else "")
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _union([annotation_for(o, depth=depth + 1) for o in options])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([annotation_for({**schema, "type": k}, depth=depth + 1) for k in kind])
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        return f"list[{annotation_for(items, depth=depth + 1)}]" if items is not None else "list[Any]"
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and not schema.get("properties"):
            return f"dict[str, {annotation_for(extra, depth=depth + 1)}]"
        return "dict[str, Any]"
    return "Any"
