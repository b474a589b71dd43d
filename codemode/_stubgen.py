"""Typed Python stubs for a set of tools, rendered with Jinja2.

The model reads the stubs as signatures and docstrings (`StubSet.source`); the
sandbox runs the same lines with each function forwarding its arguments to
`_call_tool(namespace, tool, locals())` (`StubSet.runtime_source`). The host
keeps the mapping from the Python names back to the wire names (`StubSet.bindings`),
so a tool or parameter whose name is not a valid identifier still works.

The module holds, in order: the header, one `typing` import, the TypedDicts the
schemas need (dependencies first, each once per namespace however many tools
use it), and one class per namespace. Server text reaches it only through the
template's `docstring` and `pyrepr` filters and names only through
`codemode._names`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jinja2

from ._names import (
    GLOBAL_RESERVED,
    MEMBER_RESERVED,
    clean_text,
    is_field_name,
    to_identifier,
    type_name_part,
    unique_identifier,
)
from ._schema_types import (
    MAX_TEXT,
    Annotation,
    Hint,
    SchemaTypes,
    TypedDictDef,
    default_source,
    describe,
    describe_text,
    dump_schema,
    json_scalar,
    resolve_ref,
    sentences,
)
from ._tools import Tool

__all__ = ["RuntimeType", "StubSet", "ToolBinding", "render_stubs"]

UNTYPED = "Content"
"""What a tool without an output schema returns, as the stubs name it: an
alias of `Any` whose docstring (`UNTYPED_DOC`) says what the value is."""
UNTYPED_DOC = (
    "A result with no declared type: the text as str (JSON object or array text parsed), "
    "a dict per image, audio or resource, a list if several."
)
# A signature longer than this is written one parameter per line.
_LINE = 120


@dataclass(frozen=True, kw_only=True)
class ToolBinding:
    """How a stub maps back to its tool: Python parameter name -> wire name."""

    tool: Tool
    namespace: str
    name: str
    params: Mapping[str, str]
    required: tuple[str, ...] = ()
    """The Python names of the parameters a call must pass."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """The defaults the stub's signature shows (JSON scalars), by Python name:
    the sandbox sends them when a call leaves them out, as the stub would."""

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True, kw_only=True)
class StubSet:
    """Stubs as the model reads them (`source`: signatures and docstrings, as
    in a `.pyi`) and as the sandbox runs them (`runtime_source`: the same
    lines, each docstring followed by the call that forwards the arguments,
    so line numbers agree)."""

    source: str
    runtime_source: str = ""
    bindings: Mapping[tuple[str, str], ToolBinding] = field(default_factory=dict)
    types: tuple[RuntimeType, ...] = ()
    """The module-level types (TypedDicts, the untyped alias) one by one, in
    source order (each after those it names), so a run defines only the
    ones its code names."""

    def __post_init__(self) -> None:
        if not self.runtime_source:
            object.__setattr__(self, "runtime_source", self.source)


@dataclass(frozen=True, kw_only=True)
class RuntimeType:
    """One module-level type of the stubs as the sandbox defines it."""

    name: str
    source: str
    refs: frozenset[str]
    """The other types its definition names."""


# What the template sees. Every str here is an identifier from `_names`, an
# annotation from `_schema_types`, a repr, or text for the `docstring` filter.


@dataclass(kw_only=True)
class _Param:
    py_name: str
    wire: str
    annotation: str
    default: str | None
    """Source text of the default; None for a required parameter."""
    doc: str


@dataclass(kw_only=True)
class _Stub:
    py_name: str
    params: list[_Param]
    returns: str
    doc: str
    multiline: bool = False


@dataclass(kw_only=True)
class _Namespace:
    py_name: str
    doc: str
    tools: list[_Stub]


@dataclass(kw_only=True)
class _FieldView:
    key: str
    annotation: str
    required: bool
    quoted: bool
    """A forward reference: quoted so the module executes at import time."""


@dataclass(kw_only=True)
class _TypedDictView:
    name: str
    doc: str
    functional: bool
    """Some key cannot be a class-body name (`class`, `a-b`): use `TypedDict(...)`."""
    fields: list[_FieldView]


def _docstring(text: str, indent: int) -> str:
    """A triple-quoted literal whose value is `text`, whatever `text` holds."""
    body = clean_text(text).strip().replace("\\", "\\\\")
    # Every quote is now unescaped; a run of three would close the literal, and
    # so would one at the very end (it merges with the closing quotes).
    body = _QUOTES.sub(lambda m: m[0].replace('"', '\\"') if len(m[0]) >= 3 or m.end() == len(body) else m[0], body)
    pad = " " * indent
    body = "\n".join((pad + line) if line.strip() else "" for line in body.split("\n")).lstrip()
    return f'"""{body}"""'


_QUOTES = re.compile('"+')


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


def _text(value: object) -> str:
    """Server text for a docstring: cleaned and cut to `MAX_TEXT`."""
    return describe_text(value if isinstance(value, str) else "")


def _input_object(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object schema whose properties are a tool's parameters: the input
    schema itself, or what its root `$ref` (which some generators emit) points to."""
    node: object = schema
    for _ in range(4):
        if isinstance(node, Mapping) and isinstance(node.get("properties"), Mapping):
            return node
        ref = node.get("$ref") if isinstance(node, Mapping) else None
        try:
            node = resolve_ref(schema, ref) if isinstance(ref, str) else None
        except LookupError:
            break
    return {}


def _plain(name: str) -> str:
    """`name` with each character an identifier cannot hold made `_`."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _required(schema: Mapping[str, Any]) -> set[str]:
    required = schema.get("required")
    return {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()


def _optional(annotation: Annotation) -> str:
    if "Any" in annotation.members or "None" in annotation.members:
        return annotation.text
    return annotation.text + " | None"


def _tool_stub(tool: Tool, ns_py: str, py_name: str, types: SchemaTypes) -> tuple[_Stub, ToolBinding]:
    schema = tool.input_schema
    tool_part = type_name_part(tool.name, fallback="Tool")
    args_schema = _input_object(schema)
    props: Mapping[Any, Any] = args_schema.get("properties", {})
    required = _required(args_schema)
    taken: set[str] = set()
    params: list[_Param] = []
    defaults: dict[str, Any] = {}
    for wire_key, prop in props.items():
        wire = str(wire_key)
        py = unique_identifier(wire, taken, fallback="arg")
        notes: list[str] = []
        hint = Hint(1, type_name_part(wire, fallback="Arg"), tool_part)
        ann = types.annotation(prop, root=schema, namespace=tool.namespace, tool=tool_part, hint=hint, notes=notes)
        prop_map: Mapping[str, Any] = prop if isinstance(prop, Mapping) else {}
        is_required = wire in required
        default = None if is_required else default_source(prop_map, ann)
        if "default" in prop_map and default is None:
            notes.insert(0, f"Default: {dump_schema(prop_map['default'])}.")
        if py != wire:
            notes.append(f"Sent as {wire!r}.")
        if is_required or default is not None:
            annotation = ann.text
            if default is not None:
                defaults[py] = prop_map["default"]
        else:  # `None` means "not sent": the guest drops None-valued arguments
            annotation, default = _optional(ann), "None"
        params.append(
            _Param(
                py_name=py,
                wire=wire,
                annotation=annotation,
                default=default,
                doc=sentences([describe(prop_map, names=(wire, tool.name)), *notes]),
            )
        )
    # Required parameters first, so that a reader sees them first.
    params.sort(key=lambda p: p.default is not None)

    returns, return_notes = UNTYPED, list[str]()
    if tool.output_schema is not None:
        ann = types.annotation(
            tool.output_schema,
            root=tool.output_schema,
            namespace=tool.namespace,
            tool=tool_part,
            hint=Hint(0, tool_part + "Result", tool_part),
            notes=return_notes,
        )
        returns = ann.text

    # Names are shown as reprs: escaped, so nothing in them is invisible.
    lines = [_text(tool.description) or f"Calls the tool {tool.name[:MAX_TEXT]!r}."]
    if py_name != _plain(tool.name) and lines[0] != f"Calls the tool {tool.name[:MAX_TEXT]!r}.":  # `get-sum` needs none
        lines.append(f"The server calls this tool {tool.name[:MAX_TEXT]!r}.")
    # Keyword parameters cannot say "one of these shapes" or "any keys at all".
    shapeless = not args_schema and any(k in schema for k in ("$ref", "anyOf", "oneOf", "allOf"))
    if shapeless or schema.get("additionalProperties") not in (None, False):
        lines.append(f"Input schema (not expressible as parameters): {dump_schema(schema)}")
    documented = [p for p in params if p.doc]
    if documented:
        lines += ["", *(f"{p.py_name}: {p.doc}" for p in documented)]
    output_doc = sentences([describe(tool.output_schema), *return_notes])
    if output_doc:
        lines += ["", f"Returns: {output_doc}"]

    stub = _Stub(py_name=py_name, params=params, returns=returns, doc="\n".join(lines))
    binding = ToolBinding(
        tool=tool,
        namespace=ns_py,
        name=py_name,
        params={p.py_name: p.wire for p in params},
        required=tuple(p.py_name for p in params if p.default is None),
        defaults=defaults,
    )
    return stub, binding


def _named(stub: _Stub, types: SchemaTypes) -> _Stub:
    """`stub` with the TypedDicts' names in its annotations, laid out."""
    for p in stub.params:
        p.annotation = types.resolve(p.annotation)
    stub.returns = types.resolve(stub.returns)
    params = ", ".join(f"{p.py_name}: {p.annotation}" + (f" = {p.default}" if p.default else "") for p in stub.params)
    line = f"    async def {stub.py_name}({'*, ' if params else ''}{params}) -> {stub.returns}:"
    stub.multiline = len(line) > _LINE
    return stub


def _typed_dict_views(defs: list[TypedDictDef]) -> list[_TypedDictView]:
    names = {d.name for d in defs} | {UNTYPED}
    views: list[_TypedDictView] = []
    defined: set[str] = set()
    for d in defs:
        functional = not all(is_field_name(f.key, names) for f in d.fields)
        fields = [
            _FieldView(
                key=f.key, annotation=f.annotation.text, required=f.required, quoted=bool(f.annotation.refs - defined)
            )
            for f in d.fields
        ]
        views.append(_TypedDictView(name=d.name, doc=d.doc, functional=functional, fields=fields))
        defined.add(d.name)
    return views


_TYPING_NAMES = ("Any", "Literal", "NotRequired", "Required", "TypedDict")


def _typing_names(typed_dicts: list[_TypedDictView], namespaces: list[_Namespace], untyped: bool) -> tuple[str, ...]:
    """The `typing` names the stubs use (the sandbox imports them all)."""
    texts = [f.annotation for td in typed_dicts for f in td.fields]
    texts += [t for ns in namespaces for stub in ns.tools for t in (stub.returns, *(p.annotation for p in stub.params))]
    used = set(re.findall(r"\b(?:Any|Literal)\b", " ".join(texts))) | ({"Any"} if untyped else set())
    if typed_dicts:
        used.add("TypedDict")
    if any(not f.required for td in typed_dicts for f in td.fields):
        used.add("NotRequired")
    return tuple(n for n in _TYPING_NAMES if n in used)


def _digest(value: object, memo: dict[int, bytes], depth: int = 0) -> bytes:
    """A structural hash of JSON-like data. Memoized by object, so a shared
    (DAG) or cyclic structure from an in-process caller costs one visit per
    object instead of hanging, as `json.dumps` would."""
    if not isinstance(value, (Mapping, list, tuple)) or depth > 64:
        return hashlib.sha256(json_scalar(value).encode("utf-8", "surrogatepass")).digest()
    # Only containers are memoized: they live as long as the input, so their
    # ids cannot be reused by temporaries.
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) or v is None for v in value):
        try:  # a long enum, at C speed
            return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")).digest()
        except ValueError:
            pass
    key = id(value)
    if key not in memo:
        memo[key] = b"<cycle>"  # what a reference back into this node hashes as
        h = hashlib.sha256(b"{" if isinstance(value, Mapping) else b"[")
        pairs = value.items() if isinstance(value, Mapping) else enumerate(value)
        for k, v in pairs:
            h.update(_digest(str(k), memo, depth + 1) + _digest(v, memo, depth + 1))
        memo[key] = h.digest()
    return memo[key]


def _is_tree(value: object, seen: set[int], depth: int = 0) -> bool:
    """Whether no container in `value` is reached twice (true of parsed JSON)."""
    if not isinstance(value, (Mapping, list, tuple)):
        return True
    if id(value) in seen or depth > 64:
        return False
    seen.add(id(value))
    return all(_is_tree(v, seen, depth + 1) for v in (value.values() if isinstance(value, Mapping) else value))


def _hash(value: object) -> bytes:
    try:
        if not _is_tree(value, set()):
            raise ValueError("shared or cyclic")
        text = json.dumps(value, ensure_ascii=False, default=lambda o: f"<{type(o).__name__}>")
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    except (ValueError, TypeError, RecursionError):  # that, odd keys, huge ints
        return _digest(value, {})


def _input_hash(tools: list[Tool], namespace_docs: Mapping[str, str]) -> str:
    digest = hashlib.sha256(_hash(dict(namespace_docs)))
    for t in tools:
        fields = [t.namespace, t.name, t.description, t.input_schema, t.output_schema]
        digest.update(_hash([*fields, t.python_name] if t.python_name is not None else fields))
    return digest.hexdigest()[:16]


def _member_names(members: list[Tool]) -> list[tuple[Tool, str]]:
    """Each tool's identifier in its namespace class. Names given in
    `Tool.python_name` (from the lock file) are claimed first, so no other
    tool can take one, whatever the listing order; the rest are derived from
    the wire names in listing order, avoiding every claimed name."""
    member_names: set[str] = set()
    fixed: dict[int, str] = {}
    for i, tool in enumerate(members):
        wanted = tool.python_name
        if wanted is None:
            continue
        if to_identifier(wanted, reserved=MEMBER_RESERVED) != wanted or wanted in member_names:
            raise ValueError(f"Tool.python_name {wanted!r} of {tool.namespace}.{tool.name} is not a free identifier")
        member_names.add(wanted)
        fixed[i] = wanted
    return [
        (tool, fixed.get(i) or unique_identifier(tool.name, member_names, fallback="tool", reserved=MEMBER_RESERVED))
        for i, tool in enumerate(members)
    ]


def render_stubs(tools: Iterable[Tool], *, namespace_docs: Mapping[str, str] | None = None) -> StubSet:
    """Stubs for `tools`, one class per namespace, and the bindings back to them.

    Names are mangled predictably (`codemode._names`); names that collide after
    mangling get `_2`, `_3`, ... in input order, except that a tool's own
    `python_name` is always kept.

    Raises `ValueError` if two tools of a namespace claim the same `python_name`
    or one is not an identifier, or if the rendered source does not parse (a bug
    in codemode, never a result of what a server sent)."""
    tools = list(tools)
    namespace_docs = namespace_docs or {}
    by_namespace: dict[str, list[Tool]] = {}
    for tool in tools:
        by_namespace.setdefault(tool.namespace, []).append(tool)

    # Names first, all of them, so TypedDict names can avoid every one.
    module_names: set[str] = {UNTYPED}
    named: list[tuple[str, str, list[tuple[Tool, str]]]] = []
    for namespace, members in by_namespace.items():
        ns_py = unique_identifier(namespace, module_names, fallback="server", reserved=GLOBAL_RESERVED)
        named.append((namespace, ns_py, _member_names(members)))
    untyped = any(t.output_schema is None for t in tools)
    taken = module_names | {py for _, _, named_tools in named for _, py in named_tools} | {UNTYPED}
    types = SchemaTypes(taken)

    namespaces: list[_Namespace] = []
    bindings: dict[tuple[str, str], ToolBinding] = {}
    for namespace, ns_py, named_tools in named:
        stubs = []
        for tool, py_name in named_tools:
            stub, bindings[(ns_py, py_name)] = _tool_stub(tool, ns_py, py_name, types)
            stubs.append(stub)
        doc = _text(namespace_docs.get(namespace))
        namespaces.append(_Namespace(py_name=ns_py, doc=doc, tools=stubs))
    # Types are named once every schema is seen: a type shared by several
    # tools is named for all its uses.
    types.finish()
    for ns in namespaces:
        ns.tools = [_named(stub, types) for stub in ns.tools]

    template = _environment().get_template("stubs.py.jinja")
    typed_dicts = _typed_dict_views(types.typed_dicts)
    context = {
        "typed_dicts": typed_dicts,
        "namespaces": namespaces,
        "input_hash": _input_hash(tools, namespace_docs),
        "untyped": (UNTYPED, UNTYPED_DOC) if untyped else None,
    }
    source = template.render(**context, runtime=False, typing_names=_typing_names(typed_dicts, namespaces, untyped))
    runtime = template.render(**context, runtime=True, typing_names=_TYPING_NAMES)
    try:
        ast.parse(source)
        ast.parse(runtime)
    except SyntaxError as exc:  # pragma: no cover - would be a template bug
        raise ValueError(f"generated stubs do not parse: {exc}") from exc
    return StubSet(source=source, runtime_source=runtime, bindings=bindings, types=_runtime_types(typed_dicts, untyped))


def _runtime_types(typed_dicts: list[_TypedDictView], untyped: bool) -> tuple[RuntimeType, ...]:
    macro = _environment().get_template("typed_dict.py.jinja").module.typed_dict  # type: ignore[attr-defined]
    names = {td.name for td in typed_dicts}
    found: list[RuntimeType] = (
        [RuntimeType(name=UNTYPED, source=f"{UNTYPED} = Any", refs=frozenset())] if untyped else []
    )
    for td in typed_dicts:
        refs = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(f.annotation for f in td.fields))) & (
            names | {UNTYPED}
        )
        found.append(RuntimeType(name=td.name, source=str(macro(td)), refs=frozenset(refs - {td.name})))
    return tuple(found)
