"""Typed Python stubs for a set of tools, rendered with Jinja2.

The stub source is both what the model reads and what runs in the sandbox. Each
stub forwards its arguments to `_call_tool(namespace, tool, locals())`; the host
keeps the mapping from the Python names back to the wire names (`StubSet.bindings`),
so a tool or parameter whose name is not a valid identifier still works.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jinja2

from ._names import clean_text, unique_identifier
from ._schema_types import annotation_for
from ._tools import Tool

__all__ = ["StubSet", "ToolBinding", "render_stubs"]

_SCALAR_DEFAULT_TYPES = (str, int, float, bool)


@dataclass(frozen=True, kw_only=True)
class ToolBinding:
    """How a stub maps back to its tool: Python parameter name -> wire name."""

    tool: Tool
    namespace: str
    name: str
    params: Mapping[str, str]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True, kw_only=True)
class StubSet:
    source: str
    bindings: Mapping[tuple[str, str], ToolBinding] = field(default_factory=dict)


def _docstring(text: str, indent: int) -> str:
    """A triple-quoted literal whose value is `text`, whatever `text` holds."""
    body = clean_text(text).strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    pad = " " * indent
    body = "\n".join((pad + line) if line.strip() else "" for line in body.split("\n")).lstrip()
    return f'"""{body}"""' if "\n" not in body else f'"""{body}\n{pad}"""'


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("codemode", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["docstring"] = _docstring
    env.filters["pyrepr"] = repr
    return env


def _tool_doc(tool: Tool, params: list[dict[str, Any]]) -> str:
    lines = [clean_text(tool.description).strip() or f"Tool {tool.name!r}."]
    described = [p for p in params if p["description"] or p["py_name"] != p["wire"]]
    if described:
        lines += ["", "Args:"]
        for p in described:
            note = f" (sent as {p['wire']!r})" if p["py_name"] != p["wire"] else ""
            text = " ".join(clean_text(p["description"]).split())
            lines.append(f"    {p['py_name']}: " + " ".join(part for part in (text, note.strip()) if part))
    return "\n".join(lines)


def _param_default(schema: Mapping[str, Any]) -> str:
    default = schema.get("default")
    if isinstance(default, _SCALAR_DEFAULT_TYPES):
        return repr(default)
    return "None"


def _tool_model(tool: Tool, taken: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    schema = tool.input_schema
    props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    required = set(r for r in schema.get("required", []) if isinstance(r, str)) if isinstance(schema.get("required"), list) else set()
    param_names: set[str] = set()
    params: list[dict[str, Any]] = []
    for wire, prop in props.items():
        prop = prop if isinstance(prop, Mapping) else {}
        py = unique_identifier(wire, param_names, fallback="arg")
        is_required = wire in required
        annotation = annotation_for(prop)
        if not is_required and _param_default(prop) == "None" and annotation not in ("Any", "None") and not annotation.endswith("| None"):
            annotation += " | None"
        params.append({
            "py_name": py,
            "wire": str(wire),
            "annotation": annotation,
            "required": is_required,
            "default": _param_default(prop),
            "description": str(prop.get("description", "")),
        })
    # Required parameters first, so that a reader sees them first.
    params.sort(key=lambda p: not p["required"])
    py_name = unique_identifier(tool.name, taken, fallback="tool")
    returns = annotation_for(tool.output_schema) if tool.output_schema is not None else "Any"
    model = {"py_name": py_name, "params": params, "returns": returns, "doc": _tool_doc(tool, params)}
    return model, {p["py_name"]: p["wire"] for p in params}


def _input_hash(tools: Iterable[Tool]) -> str:
    digest = hashlib.sha256()
    for tool in tools:
        record = [tool.namespace, tool.name, tool.description, tool.input_schema, tool.output_schema]
        digest.update(json.dumps(record, sort_keys=True, default=repr).encode())
    return digest.hexdigest()[:16]


def render_stubs(tools: Iterable[Tool], *, namespace_docs: Mapping[str, str] | None = None) -> StubSet:
    """Stubs for `tools`, one class per namespace, and the bindings back to them.

    Raises `ValueError` if the rendered source does not parse (a bug in codemode,
    never a result of what a server sent)."""
    tools = list(tools)
    by_namespace: dict[str, list[Tool]] = {}
    for tool in tools:
        by_namespace.setdefault(tool.namespace, []).append(tool)
    ns_taken: set[str] = set()
    namespaces = []
    bindings: dict[tuple[str, str], ToolBinding] = {}
    for namespace, members in by_namespace.items():
        ns_py = unique_identifier(namespace, ns_taken, fallback="server")
        taken: set[str] = set()
        models = []
        for tool in members:
            model, params = _tool_model(tool, taken)
            models.append(model)
            bindings[(ns_py, model["py_name"])] = ToolBinding(tool=tool, namespace=ns_py, name=model["py_name"], params=params)
        doc = (namespace_docs or {}).get(namespace) or f"Tools of {namespace!r}."
        namespaces.append({"py_name": ns_py, "doc": doc, "tools": models})
    source = _environment().get_template("stubs.py.jinja").render(namespaces=namespaces, input_hash=_input_hash(tools))
    try:
        ast.parse(source)
    except SyntaxError as exc:  # pragma: no cover - would be a template bug
        raise ValueError(f"generated stubs do not parse: {exc}") from exc
    return StubSet(source=source, bindings=bindings)
