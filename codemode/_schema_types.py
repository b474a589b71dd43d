"""JSON Schema -> Python type annotations, as source text.

`SchemaTypes` converts the schemas of one stub module and collects the
TypedDicts that object schemas become. Schemas come from servers, so nothing
here trusts their shape: whatever a schema is (not a dict, a `$ref` cycle,
1000 levels deep, an enum of a million values), the answer is an annotation,
`Any` at worst, with a note saying why for the docstring.

Every value that comes from a schema reaches the annotation through `repr`, so
a hostile enum value cannot break out of a `Literal[...]`; every name goes
through `codemode._names`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ._names import GLOBAL_RESERVED, MAX_IDENTIFIER, clean_text, type_name_part, unique_identifier

__all__ = [
    "ANY",
    "MAX_DEPTH",
    "MAX_TEXT",
    "Annotation",
    "Field",
    "Hint",
    "SchemaTypes",
    "TypedDictDef",
    "annotation_for",
    "default_source",
    "describe",
    "describe_text",
    "dump_schema",
    "is_record",
    "json_scalar",
    "json_text",
    "resolve_ref",
    "sentences",
]

_SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
# Past this depth a schema is shown as `Any`: real schemas are far shallower,
# and it bounds the recursion whatever the input.
MAX_DEPTH = 12
# A `Literal` longer than this helps no reader; the values' type is used instead.
_MAX_LITERALS = 64
_MAX_LITERAL_CHARS = 2_000
_MAX_DUMP = 300
_MAX_NOTES = 3
MAX_TEXT = 4_000
"""Descriptions are cut to this many characters: a 10 MB description must not
make a 10 MB stub (real ones stay well under)."""
_MAX_DEFAULT_CHARS = 120
_CONSTRAINTS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
    "uniqueItems",
    "multipleOf",
)


@dataclass(frozen=True)
class Annotation:
    """An annotation as the members of a union, and the TypedDicts it names."""

    members: tuple[str, ...]
    refs: frozenset[str] = frozenset()

    @property
    def text(self) -> str:
        return " | ".join(self.members)


ANY = Annotation(("Any",))
_NONE = Annotation(("None",))


def _simple(text: str) -> Annotation:
    return Annotation((text,))


@dataclass(kw_only=True)
class Field:
    key: str
    """The key as the server spells it."""
    annotation: Annotation
    required: bool
    doc: str


@dataclass(kw_only=True)
class TypedDictDef:
    name: str
    description: str
    fields: list[Field] = field(default_factory=list)
    extra: Annotation | None = None
    """The type of keys beyond `fields`, when the schema allows them."""

    @property
    def doc(self) -> str:
        lines = [self.description] if self.description else []
        documented = [f for f in self.fields if f.doc]
        if documented:
            # A key that is not a plain name is shown as a repr: it may hold anything.
            lines += [
                *([""] if lines else []),
                *(f"{f.key if f.key.isidentifier() else repr(f.key)}: {f.doc}" for f in documented),
            ]
        if self.extra is not None:
            lines += [*([""] if lines else []), f"Other keys are allowed too, with values of type {self.extra.text}."]
        return "\n".join(lines)


class _Full(Exception):
    pass


def json_text(value: object, *, limit: int, max_string: int | None = None) -> str:
    """`value` as JSON, cut off after about `limit` characters. A cyclic or
    shared (DAG) structure from an in-process caller costs at most `limit`
    work; whatever JSON cannot hold is shown by its type's name."""
    out: list[str] = []
    budget = [limit]

    def put(piece: str) -> None:
        out.append(piece)
        budget[0] -= len(piece)
        if budget[0] < 0:
            raise _Full

    def write(node: object, depth: int) -> None:
        if depth > 64:
            put('"…"')
        elif isinstance(node, Mapping):
            put("{")
            for i, (key, item) in enumerate(node.items()):
                put(f"{', ' if i else ''}{json_scalar(str(key), max_string)}: ")
                write(item, depth + 1)
            put("}")
        elif isinstance(node, (list, tuple)):
            put("[")
            for i, item in enumerate(node):
                if i:
                    put(", ")
                write(item, depth + 1)
            put("]")
        else:
            put(json_scalar(node, max_string))

    try:
        write(value, 0)
    except _Full:
        out.append("…")
    return "".join(out)


def json_scalar(value: object, max_string: int | None = None) -> str:
    """A scalar as JSON; anything else as its type's name, in a JSON string."""
    if isinstance(value, str):
        return json.dumps(value[:max_string] if max_string else value, ensure_ascii=False)
    if isinstance(value, (bool, int, float)) or value is None:
        try:
            return json.dumps(value)
        except ValueError:  # an int too long to print
            return '"<int>"'
    return json.dumps(f"<{type(value).__name__}>")


def dump_schema(schema: object) -> str:
    """A short, one-line JSON rendering of `schema` for a docstring."""
    text = " ".join(clean_text(json_text(schema, limit=_MAX_DUMP, max_string=_MAX_DUMP)).split())
    return text if len(text) <= _MAX_DUMP else text[:_MAX_DUMP] + "…"


def describe(schema: object, *, names: tuple[str, ...] = ()) -> str:
    """A property's description plus its constraints, on one line. A
    description that only repeats `names` (the key, its type, its tool: "The
    name of the entity" on `Entity.name`) says nothing and is left out."""
    if not isinstance(schema, Mapping):
        return ""
    text = " ".join(describe_text(schema.get("description")).split())
    if text and names and says_nothing(text, names):
        text = ""
    limits = [f"{k}={dump_schema(schema[k])}" for k in _CONSTRAINTS if k in schema]
    if limits:
        text = f"{text} ({', '.join(limits)})" if text else ", ".join(limits)
    return text


# Words that carry no meaning of their own in a field's description; the type
# names are covered by the annotation beside it.
_FILLER = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "for",
        "in",
        "on",
        "at",
        "by",
        "with",
        "and",
        "or",
        "is",
        "are",
        "be",
        "it",
        "its",
        "this",
        "that",
        "as",
        "array",
        "list",
        "string",
        "number",
        "integer",
        "boolean",
        "object",
        "value",
    ]
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def singular(word: str) -> str:
    """English plural to singular, for the common cases names use."""
    lower = word.lower()
    if lower.endswith("ies") and len(word) > 4:
        return word[:-3] + ("Y" if word[-3].isupper() else "y")
    if lower.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if lower.endswith("s") and len(word) > 3 and not lower.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """The words of a name or sentence: `entityType` -> ["entity", "type"], singular."""
    return [singular(w.lower()) for w in _WORD.findall(text)]


def says_nothing(description: str, names: tuple[str, ...]) -> bool:
    """Whether every word of `description` but filler is a word of `names`."""
    content = set(words(description)) - _FILLER
    return bool(content) and content <= {w for n in names for w in words(n)}


def sentences(parts: list[str]) -> str:
    """Non-empty `parts` joined as sentences: "Text. Note." rather than "Text Note"."""
    parts = [p for p in parts if p]
    return " ".join(
        p if p.endswith((".", "!", "?", "…", ":")) or i == len(parts) - 1 else p + "." for i, p in enumerate(parts)
    )


def describe_text(text: object) -> str:
    """A description from a schema, cleaned and cut to a sane length; empty if
    it is not a string."""
    if not isinstance(text, str):
        return ""
    text = clean_text(text[: MAX_TEXT + 1]).strip()
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _literal(value: object) -> str | None:
    """`value` as a `Literal` member, or None if `Literal` cannot hold it."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**30 else None  # repr of a huge int raises
    return None


def _type_of(value: object) -> Annotation:
    if value is None:
        return _NONE
    for kind, text in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if isinstance(value, kind):
            return _simple(text)
    if isinstance(value, list):
        return _simple("list[Any]")
    if isinstance(value, Mapping):
        return _simple("dict[str, Any]")
    return ANY


def _union(parts: list[Annotation]) -> Annotation:
    """`A | B`, without repeats, Literals merged into one, `None` last; `Any`
    if any part is `Any`."""
    members: dict[str, None] = {}
    literals: dict[str, None] = {}
    for part in parts:
        if "Any" in part.members:
            return ANY
        for member in part.members:
            if member.startswith("Literal[") and member.endswith("]"):
                literals[member[len("Literal[") : -1]] = None
                member = "Literal"  # holds the merged Literal's place
            members[member] = None
    if not members:
        return ANY
    ordered = [
        f"Literal[{', '.join(literals)}]" if m == "Literal" else m for m in sorted(members, key=lambda m: m == "None")
    ]
    return Annotation(tuple(ordered), frozenset().union(*(p.refs for p in parts)))


def default_source(schema: Mapping[str, Any], annotation: Annotation) -> str | None:
    """The schema's default as source text, if it is a short scalar that fits
    the annotation: the stub sends its defaults, so one that does not fit
    would make every call fail."""
    default = schema.get("default")
    if isinstance(default, float):
        text = repr(default) if math.isfinite(default) else None
    else:
        text = _literal(default) if default is not None else None
    if text is None or len(text) > _MAX_DEFAULT_CHARS:
        return None
    enum = schema.get("enum")
    allowed = enum if isinstance(enum, list) else [schema["const"]] if "const" in schema else None
    if allowed is not None:
        return text if any(type(a) is type(default) and a == default for a in allowed) else None
    kind = _type_of(default).text
    fits = (
        "Any" in annotation.members or kind in annotation.members or (kind == "int" and "float" in annotation.members)
    )
    return text if fits else None


def resolve_ref(root: Mapping[str, Any], ref: str) -> object:
    """The value at local JSON pointer `ref` (`#/$defs/Name`) in `root`; raises LookupError."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise LookupError(ref)  # remote references are never fetched
    node: object = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError(ref)
    return node


def is_record(schema: object) -> bool:
    """Whether `schema` is an object with named properties (a TypedDict)."""
    return (
        isinstance(schema, Mapping)
        and isinstance(schema.get("properties"), Mapping)
        and bool(schema["properties"])
        and schema.get("type", "object") == "object"
    )


def _note(notes: list[str], note: str) -> None:
    # A union of a thousand broken branches needs one note, not a thousand.
    if len(notes) < _MAX_NOTES and note not in notes:
        notes.append(note)


_MemoKey = tuple[int, str]  # (id of the root schema, reference): roots outlive the render
_NO_ROOT: Mapping[str, Any] = {}
# Schema nodes converted per annotation: `$ref`s to shared definitions can
# make a small schema stand for an exponentially large one.
_MAX_NODES = 10_000


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Hint:
    """What to call a TypedDict, and how sure we are: a schema's `title` (3)
    beats a `$defs` name (2), which beats a property name (1), which beats a
    name made from the tool (`ReadGraphResult`, 0). `tool` names the tool, to
    tell apart two different types with the same name."""

    strength: int
    name: str
    tool: str = ""

    def part(self, suffix: str) -> Hint:
        return Hint(self.strength, self.name + suffix, self.tool)

    def item(self) -> Hint:
        """The hint for one item of a list named by this one: `Entities` -> `Entity`."""
        parts = _WORD.findall(self.name)
        if parts and (one := singular(parts[-1])) != parts[-1]:
            return Hint(self.strength, self.name[: -len(parts[-1])] + one, self.tool)
        return self.part("Item")


@dataclass(kw_only=True)
class _Pending:
    """A TypedDict whose name is chosen once every schema of the module is seen."""

    placeholder: str
    namespace: str
    record: TypedDictDef
    props: list[object]
    """Each field's schema, for its description (which depends on the name)."""
    notes: list[list[str]]
    hints: list[Hint]


# A TypedDict's name while the module is being converted. NUL never occurs in
# an annotation otherwise: server values reach annotations only through repr.
_PLACEHOLDER = re.compile("\x00([0-9]+)\x00")


def _best_name(hints: list[Hint]) -> str:
    """The strongest hint; where equally strong hints differ, the words they
    share at the start and end (`DeleteEntitiesResult`, `DeleteRelationsResult`
    -> `DeleteResult`), else the first."""
    top = max(h.strength for h in hints)
    names = list(dict.fromkeys(h.name for h in hints if h.strength == top))
    if len(names) == 1:
        return names[0]
    split = [_WORD.findall(n) or [n] for n in names]
    shortest = min(len(w) for w in split)
    head = 0
    while head < shortest and all(w[head] == split[0][head] for w in split):
        head += 1
    tail = 0
    while tail < shortest - head and all(w[-1 - tail] == split[0][-1 - tail] for w in split):
        tail += 1
    shared = split[0][:head] + (split[0][len(split[0]) - tail :] if tail else [])
    return "".join(shared) or names[0]


def _option_hint(option: object, hint: Hint, i: int) -> Hint:
    """The hint for option `i` of a union: named by its tag when a `type` or
    `kind` key holds one to three fixed strings (`ImageAudioContentItem`,
    `ResourceContentItem`), else `Option{i}`."""
    props = option.get("properties") if isinstance(option, Mapping) else None
    for key in ("type", "kind"):
        tag = props.get(key) if isinstance(props, Mapping) else None
        if not isinstance(tag, Mapping):
            continue
        values = [tag["const"]] if "const" in tag else tag.get("enum")
        if isinstance(values, list) and 0 < len(values) <= 3 and all(isinstance(v, str) for v in values):
            prefix = "".join(type_name_part(v, fallback="") for v in values)
            if prefix:
                return Hint(hint.strength, prefix + hint.name, hint.tool)
    return hint.part(f"Option{i}")


@lru_cache(maxsize=1024)
def _def_name(ref: str) -> str:
    return type_name_part(ref.rsplit("/", 1)[-1], fallback="Def")


class SchemaTypes:
    """Converts the schemas of one stub module; collects their TypedDicts.

    Within a namespace, structurally identical object schemas (same keys,
    types, requiredness and descriptions) become one TypedDict, named by
    `_best_name` over every place it occurs. Until `finish()`, annotations
    name TypedDicts by placeholders; `resolve` turns those into the names.
    `taken` is the module's set of names: TypedDict names are added to it, so
    they never collide with namespaces, tools or each other."""

    def __init__(self, taken: set[str], *, inline_objects: bool = False) -> None:
        self.taken = taken
        self._pending: list[_Pending] = []
        """In dependency order: each refers only to earlier ones, or to itself
        or an enclosing one through a recursive `$ref`."""
        self._by_key: dict[tuple[Any, ...], _Pending] = {}
        self._names: dict[str, str] = {}
        self._inline_objects = inline_objects
        self._memo: dict[_MemoKey, str] = {}
        self._resolving: set[_MemoKey] = set()
        self._namespace = ""
        self._tool = ""
        self._next = 0
        self._budget = _MAX_NODES

    def annotation(
        self, schema: object, *, root: object, namespace: str, tool: str, hint: Hint, notes: list[str]
    ) -> Annotation:
        """The annotation for `schema`, whose `$ref`s resolve against `root`,
        with placeholders for TypedDict names until `finish()`.

        `namespace` scopes the sharing of TypedDicts; `hint` names the ones
        this schema makes. Why a part is `Any` goes to `notes`."""
        self._namespace, self._tool = namespace, tool
        self._budget = _MAX_NODES
        root_map = root if isinstance(root, Mapping) else _NO_ROOT
        done, memo, by_key = len(self._pending), dict(self._memo), dict(self._by_key)
        try:
            return self._convert(schema, root_map, hint, notes, 0, None)
        except (_TooLarge, RecursionError):
            # Drop this schema's half-built TypedDicts: none may refer to a
            # name that never gets defined.
            del self._pending[done:]
            self._memo, self._by_key = memo, by_key
            self._resolving.clear()
            return self._unexpressible("too large", schema, notes)

    def finish(self) -> None:
        """Name every TypedDict, in definition order: the best hint, or the
        tool's name before it if another type has it, or a `_2` suffix."""
        for p in self._pending:
            base = _best_name(p.hints)[:MAX_IDENTIFIER]
            if base in self.taken or base in GLOBAL_RESERVED:
                tool = next((h.tool for h in p.hints if h.tool), "")
                if tool and not base.startswith(tool):
                    base = (tool + base)[:MAX_IDENTIFIER]
            self._names[p.placeholder] = unique_identifier(
                base, self.taken, fallback="Object", reserved=GLOBAL_RESERVED
            )

    def resolve(self, text: str) -> str:
        """`text` with TypedDict placeholders replaced by their names."""
        return _PLACEHOLDER.sub(lambda m: self._names[m[0]], text)

    def _resolved(self, ann: Annotation) -> Annotation:
        return Annotation(tuple(map(self.resolve, ann.members)), frozenset(map(self.resolve, ann.refs)))

    @property
    def typed_dicts(self) -> list[TypedDictDef]:
        """Every TypedDict, named (call `finish()` first), in dependency order.
        A field's description is left out where it only repeats the key and
        the type's name."""
        out = []
        for p in self._pending:
            name = self._names[p.placeholder]
            record = TypedDictDef(
                name=name,
                description=p.record.description,
                extra=self._resolved(p.record.extra) if p.record.extra is not None else None,
            )
            for f, prop, notes in zip(p.record.fields, p.props, p.notes, strict=True):
                doc = sentences([describe(prop, names=(f.key, name)), *notes])
                record.fields.append(
                    Field(key=f.key, annotation=self._resolved(f.annotation), required=f.required, doc=doc)
                )
            out.append(record)
        return out

    def _unexpressible(self, why: str, schema: object, notes: list[str]) -> Annotation:
        if len(notes) < _MAX_NOTES and not any(n.startswith(f"Type not expressible ({why})") for n in notes):
            _note(notes, f"Type not expressible ({why}); schema: {dump_schema(schema)}")
        return ANY

    def _convert(
        self,
        schema: object,
        root: Mapping[str, Any],
        hint: Hint,
        notes: list[str],
        depth: int,
        memo_key: _MemoKey | None,
    ) -> Annotation:
        if schema is True or (isinstance(schema, Mapping) and not schema):
            return ANY
        if not isinstance(schema, Mapping):
            return self._unexpressible("not a JSON Schema object", schema, notes)
        if depth > MAX_DEPTH:
            return self._unexpressible("nested too deeply", schema, notes)
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge
        ann = self._convert_mapping(schema, root, hint, notes, depth, memo_key)
        return _union([ann, _NONE]) if schema.get("nullable") is True else ann

    def _convert_mapping(
        self,
        schema: Mapping[str, Any],
        root: Mapping[str, Any],
        hint: Hint,
        notes: list[str],
        depth: int,
        memo_key: _MemoKey | None,
    ) -> Annotation:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self._ref(ref, schema, root, notes, depth)
        if "const" in schema:
            const, member = schema["const"], _literal(schema["const"])
            return _NONE if const is None else _simple(f"Literal[{member}]") if member else _type_of(const)
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self._enum(enum, notes)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                union = _union(
                    [
                        self._convert(o, root, _option_hint(o, hint, i), notes, depth + 1, None)
                        for i, o in enumerate(options, 1)
                    ]
                )
                if union.members == ANY.members and "type" in schema:
                    # Options that only add constraints to a typed schema.
                    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                    return self._convert(rest, root, hint, notes, depth + 1, memo_key)
                return union
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            if len(all_of) == 1 and not any(k in schema for k in ("type", "properties", "items")):
                return self._convert(all_of[0], root, hint, notes, depth + 1, memo_key)
            return self._unexpressible("allOf", schema, notes)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if isinstance(k, str)]
            if not kinds:
                return self._unexpressible("unknown type", schema, notes)
            return _union(
                [
                    self._convert({**schema, "type": k}, root, hint, notes, depth + 1, memo_key)
                    for k in dict.fromkeys(kinds)
                ]
            )
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
            if kind is None:
                return ANY  # no type given: any value is valid
        if isinstance(kind, str) and kind in _SCALARS:
            return _simple(_SCALARS[kind])
        if kind == "array":
            return self._array(schema, root, hint, notes, depth)
        if kind == "object":
            return self._object(schema, root, hint, notes, depth, memo_key)
        return self._unexpressible("unknown type", schema, notes)

    def _ref(
        self, ref: str, schema: Mapping[str, Any], root: Mapping[str, Any], notes: list[str], depth: int
    ) -> Annotation:
        key = (id(root), ref)
        if key in self._memo:
            name = self._memo[key]
            return Annotation((name,), frozenset({name}))
        if key in self._resolving:  # a cycle that never passes through an object
            return self._unexpressible("recursive reference", schema, notes)
        try:
            target = resolve_ref(root, ref)
        except LookupError:
            return self._unexpressible("unresolvable reference", schema, notes)
        self._resolving.add(key)
        try:
            # Named after the definition, so every use shares one TypedDict.
            hint = Hint(2, _def_name(ref), self._tool)
            return self._convert(target, root, hint, notes, depth + 1, key)
        finally:
            self._resolving.discard(key)

    def _enum(self, values: list[Any], notes: list[str]) -> Annotation:
        literals = [_literal(v) for v in values if v is not None]
        if (
            None in literals
            or len(literals) > _MAX_LITERALS
            or sum(len(m or "") for m in literals) > _MAX_LITERAL_CHARS
        ):
            shown = ", ".join(dump_schema(v) for v in values[:5])
            _note(notes, f"One of {len(values)} values: {shown}{', …' if len(values) > 5 else ''}")
            return _union([_type_of(v) for v in values])
        # reprs tell 1 from True, which a set of the values would merge.
        members = list(dict.fromkeys(m for m in literals if m is not None))
        parts = [_simple(f"Literal[{', '.join(members)}]")] if members else []
        return _union(parts + ([_NONE] if any(v is None for v in values) else []))

    def _array(
        self, schema: Mapping[str, Any], root: Mapping[str, Any], hint: Hint, notes: list[str], depth: int
    ) -> Annotation:
        items = schema.get("items")
        prefix = items if isinstance(items, list) else schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:  # tuples: the values of any position
            item = _union(
                [self._convert(i, root, hint.part(f"Item{n}"), notes, depth + 1, None) for n, i in enumerate(prefix, 1)]
            )
        elif items is None or items is True or isinstance(items, list):
            item = ANY
        else:  # the item type of a list property is named after the property: `entities` -> `Entity`
            item = self._convert(items, root, hint.item(), notes, depth + 1, None)
        return Annotation((f"list[{item.text}]",), item.refs)

    def _object(
        self,
        schema: Mapping[str, Any],
        root: Mapping[str, Any],
        hint: Hint,
        notes: list[str],
        depth: int,
        memo_key: _MemoKey | None,
    ) -> Annotation:
        extra_schema = schema.get("additionalProperties")
        extra: Annotation | None = None
        if extra_schema is True or isinstance(extra_schema, Mapping):
            extra = self._convert(extra_schema, root, hint.part("Value"), notes, depth + 1, None)
        if not is_record(schema) or self._inline_objects:
            value = extra or ANY
            return Annotation((f"dict[str, {value.text}]",), value.refs)
        title = type_name_part(schema.get("title"), fallback="") if isinstance(schema.get("title"), str) else ""
        if title:
            hint = Hint(3, title, hint.tool)
        placeholder = f"\x00{self._next}\x00"
        self._next += 1
        if memo_key is not None:
            self._memo[memo_key] = placeholder  # before the fields, so that they can refer back to it
        required = schema.get("required")
        required_keys = {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
        record = TypedDictDef(name=placeholder, description=describe_text(schema.get("description")), extra=extra)
        props: list[object] = []
        all_notes: list[list[str]] = []
        for key, prop in schema["properties"].items():
            field_notes: list[str] = []
            field_hint = Hint(1, type_name_part(key, fallback="Key"), hint.tool)
            ann = self._convert(prop, root, field_hint, field_notes, depth + 1, None)
            if isinstance(prop, Mapping) and "default" in prop:
                field_notes.insert(0, f"Default: {dump_schema(prop['default'])}.")
            record.fields.append(Field(key=str(key), annotation=ann, required=key in required_keys, doc=""))
            props.append(prop)
            all_notes.append(field_notes)
        shape = (
            self._namespace,
            record.description,
            extra.text if extra is not None else None,
            tuple(
                (f.key, f.annotation.text, f.required, describe(prop), tuple(n))
                for f, prop, n in zip(record.fields, props, all_notes, strict=True)
            ),
        )
        same = self._by_key.get(shape)
        if same is not None:  # a type this namespace already has (a recursive one never matches)
            same.hints.append(hint)
            if memo_key is not None:
                self._memo[memo_key] = same.placeholder
            return Annotation((same.placeholder,), frozenset({same.placeholder}))
        pending = _Pending(
            placeholder=placeholder,
            namespace=self._namespace,
            record=record,
            props=props,
            notes=all_notes,
            hints=[hint],
        )
        self._by_key[shape] = pending
        self._pending.append(pending)
        return Annotation((placeholder,), frozenset({placeholder}))


def annotation_for(schema: object) -> str:
    """The annotation for `schema` alone, objects as `dict[str, ...]`; `Any`
    for whatever it cannot express."""
    types = SchemaTypes(set(), inline_objects=True)
    return types.annotation(schema, root=schema, namespace="", tool="", hint=Hint(0, "Object"), notes=[]).text
