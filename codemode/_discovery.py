"""Progressive discovery: a model finds tools, then reads only the stubs it needs.

With many servers, every stub in the prompt costs more than the calls it saves.
So a model starts from `list_servers` (a compact index) or `search_tools` (BM25
over names and descriptions, one signature line per hit) and asks `get_stubs`
for the full stubs of the few tools it will call.

Signatures and stubs are cut out of the real rendered stubs (`render_stubs`)
with `ast`, never re-rendered here, so what search shows is exactly what runs;
names are the Python names the model writes (`namespace.tool`).
"""

from __future__ import annotations

import ast
import difflib
import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ._errors import CodemodeError
from ._names import clean_text
from ._stubgen import StubSet, ToolBinding, render_stubs
from ._tools import Tool

__all__ = [
    "ServerSummary",
    "ToolHit",
    "ToolHits",
    "ToolIndex",
    "ToolNotFound",
    "get_stubs",
    "list_servers",
    "search_tools",
    "tokenize",
]

# BM25F: a term in a tool's name says more about it than one in its description.
_FIELD_WEIGHTS: Mapping[str, float] = {"name": 3.0, "namespace": 1.5, "description": 1.0, "params": 0.5}
_K1 = 1.2
_B = 0.75
_SUMMARY_MAX = 100

_STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "by",
        "can",
        "could",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "should",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "these",
        "this",
        "those",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)
_CAMEL_LOWER_UPPER = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CAMEL_ACRONYM = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[\W_]+")


class ToolNotFound(CodemodeError):
    """`get_stubs` was asked for tools that do not exist; `suggestions` maps each
    unknown name to close matches."""

    code: ClassVar[str] = "tool_not_found"

    def __init__(self, suggestions: Mapping[str, Sequence[str]]) -> None:
        self.suggestions = {name: list(close) for name, close in suggestions.items()}
        parts = []
        for name, close in self.suggestions.items():
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            parts.append(f"{name!r}{hint}")
        super().__init__(f"no such tool: {'; '.join(parts)}; names are 'namespace.tool', see search_tools")

    @property
    def names(self) -> list[str]:
        return list(self.suggestions)

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "suggestions": self.suggestions}


@dataclass(frozen=True, kw_only=True)
class ToolHit:
    """One search result: where the tool lives, its score, and its signature
    exactly as the stub declares it."""

    namespace: str
    name: str
    score: float
    signature: str
    """`namespace.tool(params) -> Return`, as in the stub."""
    summary: str
    """The first line of the stub's docstring."""
    tool: Tool = field(repr=False, compare=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def line(self) -> str:
        """The compact one-liner a model reads: signature and summary."""
        return f"{self.signature}  # {self.summary}" if self.summary else self.signature


class ToolHits(list[ToolHit]):
    """Search results, best first; `stubs` holds the stub source of the top
    hits when the search asked for them (`with_stubs`), else None."""

    stubs: str | None = None


@dataclass(frozen=True, kw_only=True)
class ServerSummary:
    """One namespace in the compact index: its Python name, the server it came
    from, and its tools' Python names (sorted)."""

    namespace: str
    server: str
    tool_count: int
    tools: tuple[str, ...]


def _stem(word: str) -> str:
    # Just enough that "files" finds "file" and "entries" finds "entry".
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lowercase words of `text`: snake_case, camelCase, kebab-case and dotted
    names split into words, stop words dropped, plurals folded."""
    return list(_tokens(text))


@functools.lru_cache(maxsize=8192)
def _tokens(text: str) -> tuple[str, ...]:
    # Cached: a catalog repeats its namespace, parameter names and their descriptions.
    text = _CAMEL_ACRONYM.sub(" ", _CAMEL_LOWER_UPPER.sub(" ", clean_text(text)))
    words = (w.lower() for w in _NON_WORD.split(text))
    return tuple(_stem(w) for w in words if w and w not in _STOP_WORDS)


def _param_text(schema: Mapping[str, object]) -> str:
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return ""
    parts: list[str] = []
    for name, prop in props.items():
        parts.append(str(name))
        if isinstance(prop, Mapping) and isinstance(prop.get("description"), str):
            parts.append(str(prop["description"]))
    return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class _Doc:
    binding: ToolBinding
    fields: Mapping[str, Counter[str]]
    lengths: Mapping[str, int]


def _documents(bindings: Iterable[ToolBinding]) -> list[_Doc]:
    docs = []
    for b in bindings:
        texts = {
            "name": b.tool.name,
            "namespace": b.tool.namespace,
            "description": b.tool.description,
            "params": _param_text(b.tool.input_schema),
        }
        fields = {f: Counter(_tokens(t)) for f, t in texts.items()}
        docs.append(_Doc(binding=b, fields=fields, lengths={f: sum(c.values()) for f, c in fields.items()}))
    return docs


# --- cutting stubs out of the rendered source -------------------------------------------


def _defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def _annotation_names(annotation: ast.expr | None) -> set[str]:
    # Forward references are strings ("ReadResult"): read the names inside them too.
    names: set[str] = set()
    if annotation is None:
        return names
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                names |= _annotation_names(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                pass
    return names


def _referenced_names(node: ast.AST) -> set[str]:
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.arg):
            names |= _annotation_names(sub.annotation)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names |= _annotation_names(sub.returns)
        elif isinstance(sub, ast.AnnAssign):
            names |= _annotation_names(sub.annotation)
    return names


class _Scope:
    """The statements of one scope (the module, or a namespace class), with
    which statement defines each name, worked out once per index."""

    def __init__(self, body: Sequence[ast.stmt], refs: dict[int, set[str]]) -> None:
        self.body = body
        self.by_name: dict[str, int] = {}
        for i, stmt in enumerate(body):
            for name in _defined_names(stmt):
                self.by_name.setdefault(name, i)
        self._refs = refs  # node id -> names it references, shared by the scopes of one index
        self.needed_all: set[int] | None = None
        """What every tool needs; set by the index on first use."""

    def refs(self, node: ast.AST) -> set[str]:
        names = self._refs.get(id(node))
        if names is None:
            names = self._refs[id(node)] = _referenced_names(node)
        return names

    def closure(self, seeds: Iterable[ast.AST]) -> set[int]:
        """Indexes of the statements in this scope that `seeds` need, transitively."""
        needed: set[int] = set()
        todo = [name for seed in seeds for name in self.refs(seed)]
        while todo:
            i = self.by_name.get(todo.pop(), -1)
            if i >= 0 and i not in needed:
                needed.add(i)
                todo.extend(self.refs(self.body[i]))
        return needed


def _first_line(node: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _format_args(args: ast.arguments, *, drop_first: bool) -> str:
    def one(a: ast.arg, default: ast.expr | None, prefix: str = "") -> str:
        text = prefix + a.arg + (f": {ast.unparse(a.annotation)}" if a.annotation else "")
        return text + (f" = {ast.unparse(default)}" if default is not None else "")

    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    parts = [one(a, d) for a, d in zip(positional, defaults)]
    if args.posonlyargs:
        parts.insert(len(args.posonlyargs), "/")
    if drop_first and positional:
        parts.pop(0)
    if args.vararg:
        parts.append(one(args.vararg, None, "*"))
    elif args.kwonlyargs:
        parts.append("*")
    parts += [one(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        parts.append(one(args.kwarg, None, "**"))
    return ", ".join(parts)


def _signature(namespace: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    decorators = {ast.unparse(d) for d in fn.decorator_list}
    bound = "staticmethod" not in decorators  # a plain or class method has a self/cls to hide
    returns = f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else ""
    return f"{namespace}.{fn.name}({_format_args(fn.args, drop_first=bound)}){returns}"


def _summary(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    doc = ast.get_docstring(fn) or ""
    line = next((ln.strip() for ln in doc.splitlines() if ln.strip()), "")
    return line if len(line) <= _SUMMARY_MAX else line[: _SUMMARY_MAX - 1].rstrip() + "…"


# The line that ends a tool's function in the runtime stubs: a docstring cannot
# hold an unescaped `"""`, so only the template writes this.
_METHOD_END = re.compile(
    r'"""; return await _call_tool\(\'([A-Za-z_][A-Za-z0-9_]*)\', \'([A-Za-z_][A-Za-z0-9_]*)\', locals\(\)\)$', re.M
)


def _method_spans(stubs: StubSet, source_lines: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """(namespace, tool) -> the line range of its function (decorator included)
    in `stubs.source`, read from the runtime stubs, whose lines agree with it.
    A docstring line is indented 8 spaces past its first, so the nearest line
    above the end that starts `    async def ` is the function's own."""
    spans: dict[tuple[str, str], tuple[int, int]] = {}
    runtime = stubs.runtime_source
    if runtime == stubs.source:
        return spans
    line, pos = 0, 0
    for m in _METHOD_END.finditer(runtime):
        line += runtime.count("\n", pos, m.start())
        pos = m.start()
        start = line
        while start > 0 and not source_lines[start].startswith("    async def "):
            start -= 1
        if start > 0 and source_lines[start - 1] == "    @staticmethod":
            spans[(m[1], m[2])] = (start - 1, line + 1)
    return spans


class ToolIndex:
    """Search and stub extraction over one set of tools, built once.

    Build it whenever the tool set changes; every method is then cheap and
    deterministic (results do not depend on the order tools arrive in)."""

    def __init__(self, tools: Iterable[Tool], *, stubs: StubSet | None = None) -> None:
        """Index `tools`; `stubs` may be `render_stubs(tools)` if the caller has it.

        Raises `ValueError` if the stubs do not contain every tool's function
        (stubs rendered from other tools)."""
        self.tools = list(tools)
        self.stubs = stubs if stubs is not None else render_stubs(self.tools)
        self._source_lines = self.stubs.source.splitlines()
        self._bindings = dict(sorted(self.stubs.bindings.items()))
        # A search needs only the functions of its hits: each is found by its
        # line span and parsed alone. The whole module is parsed on the first
        # call that cuts stubs (`get_stubs`), or here if the spans cannot be read.
        self._spans = _method_spans(self.stubs, self._source_lines)
        self._hit_fns: dict[tuple[str, str], ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self._parsed = False
        if any(key not in self._spans for key in self._bindings):
            self._parse()
        self._docs = _documents(self._bindings.values())
        self._avg_len = {
            f: (sum(d.lengths[f] for d in self._docs) / len(self._docs)) if self._docs else 0.0 for f in _FIELD_WEIGHTS
        }
        df: Counter[str] = Counter()
        for d in self._docs:
            df.update({t for c in d.fields.values() for t in c})
        n = len(self._docs)
        self._idf = {t: math.log(1 + (n - k + 0.5) / (k + 0.5)) for t, k in df.items()}
        self._lookup = self._name_lookup()

    def _parse(self) -> None:
        """Parse the whole stubs module. Raises `ValueError` if it lacks a tool's function."""
        if self._parsed:
            return
        self._module = ast.parse(self.stubs.source)
        self._class_of, self._ns_assign = self._namespace_classes()
        functions = {
            (id(cls), node.name): node
            for cls in self._class_of.values()
            for node in cls.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        self._methods: dict[tuple[str, str], ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for key in self._bindings:
            cls = self._class_of.get(key[0])
            fn = functions.get((id(cls), key[1])) if cls is not None else None
            if fn is None:
                raise ValueError(f"stubs have no function for {key[0]}.{key[1]}")
            self._methods[key] = fn
        self._tool_fns = {id(fn) for fn in self._methods.values()}
        refs: dict[int, set[str]] = {}
        self._scope = _Scope(self._module.body, refs)
        self._class_scopes = {id(c): _Scope(c.body, refs) for c in self._class_of.values()}
        self._parsed = True

    def _function(self, key: tuple[str, str]) -> ast.FunctionDef | ast.AsyncFunctionDef:
        """The stub function of tool `key`, parsed alone when the module is not."""
        if self._parsed:
            return self._methods[key]
        fn = self._hit_fns.get(key)
        if fn is None:
            start, end = self._spans[key]
            text = "\n".join(line[4:] for line in self._source_lines[start:end])
            node = ast.parse(text).body[0]
            assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == key[1]
            fn = self._hit_fns[key] = node
        return fn

    # -- namespace classes ------------------------------------------------------------

    def _namespace_classes(self) -> tuple[dict[str, ast.ClassDef], dict[str, int]]:
        """Namespace -> the class holding its functions, and, when the stub binds
        the namespace as `ns = SomeClass()`, that assignment's statement index."""
        classes = {n.name: n for n in self._module.body if isinstance(n, ast.ClassDef)}
        class_of: dict[str, ast.ClassDef] = {}
        assigns: dict[str, int] = {}
        for namespace in {ns for ns, _ in self._bindings}:
            if namespace in classes:
                class_of[namespace] = classes[namespace]
                continue
            for i, node in enumerate(self._module.body):
                if namespace not in _defined_names(node) or not isinstance(node, ast.Assign):
                    continue
                value = node.value.func if isinstance(node.value, ast.Call) else node.value
                if isinstance(value, ast.Name) and value.id in classes:
                    class_of[namespace] = classes[value.id]
                    assigns[namespace] = i
        return class_of, assigns

    def _name_lookup(self) -> dict[str, tuple[str, str]]:
        # Python names win; a server's own "server.tool" spelling also works when it
        # does not collide with one.
        lookup: dict[str, tuple[str, str]] = {}
        for key, b in self._bindings.items():
            lookup.setdefault(f"{b.tool.namespace}.{b.tool.name}", key)
        for key in self._bindings:
            lookup[f"{key[0]}.{key[1]}"] = key
        return lookup

    # -- public API -------------------------------------------------------------------

    def search(self, query: str, limit: int = 10) -> list[ToolHit]:
        """Tools ranked by BM25F over name (weighted most), server, description and
        parameters; ties broken by namespace, then name. Only tools matching at
        least one query word are returned.

        Raises `ValueError` if `limit` is negative."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        terms = list(dict.fromkeys(tokenize(query)))
        scored: list[tuple[float, tuple[str, str], _Doc]] = []
        for doc in self._docs:
            score = 0.0
            for term in terms:
                tf = 0.0
                for f, weight in _FIELD_WEIGHTS.items():
                    count = doc.fields[f][term]
                    if count:
                        norm = 1 - _B + _B * (doc.lengths[f] / self._avg_len[f] if self._avg_len[f] else 0.0)
                        tf += weight * count / norm
                if tf:
                    score += self._idf[term] * tf / (_K1 + tf)
            if score > 0:
                key = (doc.binding.namespace, doc.binding.name)
                scored.append((score, key, doc))
        # Rounded, so that float noise between equal documents cannot reorder a tie.
        scored.sort(key=lambda s: (-round(s[0], 9), s[1]))
        return [self._hit(key, doc.binding, round(score, 6)) for score, key, doc in scored[:limit]]

    def _hit(self, key: tuple[str, str], binding: ToolBinding, score: float) -> ToolHit:
        fn = self._function(key)
        return ToolHit(
            namespace=key[0],
            name=key[1],
            score=score,
            signature=_signature(key[0], fn),
            summary=_summary(fn),
            tool=binding.tool,
        )

    def signature(self, name: str) -> str:
        """The one-line signature of tool `name` ("namespace.tool").

        Raises `ToolNotFound` for an unknown name."""
        key = self._resolve([name])[0]
        return _signature(key[0], self._function(key))

    def servers(self) -> list[ServerSummary]:
        """One summary per namespace, sorted by namespace; tool names sorted."""
        grouped: dict[str, list[ToolBinding]] = {}
        for (namespace, _), b in self._bindings.items():
            grouped.setdefault(namespace, []).append(b)
        return [
            ServerSummary(
                namespace=ns, server=bs[0].tool.namespace, tool_count=len(bs), tools=tuple(sorted(b.name for b in bs))
            )
            for ns, bs in sorted(grouped.items())
        ]

    def _resolve(self, names: Iterable[str]) -> list[tuple[str, str]]:
        keys: list[tuple[str, str]] = []
        unknown: dict[str, list[str]] = {}
        candidates = sorted(f"{ns}.{n}" for ns, n in self._bindings)
        for name in names:
            key = self._lookup.get(name.strip())
            if key is not None:
                keys.append(key)
                continue
            # A bare tool name is the likeliest slip: offer every namespace that has it.
            bare = [c for c in candidates if c.split(".", 1)[1] == name.strip()]
            close = difflib.get_close_matches(name.strip(), candidates, n=3, cutoff=0.7)
            unknown[name] = list(dict.fromkeys([*bare, *close]))[:3]
        if unknown:
            raise ToolNotFound(unknown)
        return keys

    def get_stubs(self, names: Iterable[str]) -> str:
        """Stub source for only the named tools ("namespace.tool"): the imports,
        each needed namespace class with its docstring and just those functions,
        and whatever module-level definitions (TypedDicts, aliases) they use.
        Definitions used only by other tools are left out; those used by no tool
        are kept. Output parses, and follows the order of the full stubs.

        Raises `ToolNotFound` (code "tool_not_found") listing close matches for
        every unknown name."""
        selected = set(self._resolve(names))
        self._parse()
        body, scope = self._module.body, self._scope
        chosen_fns = [self._methods[k] for k in sorted(selected)]
        ns_classes = {id(c): ns for ns, c in self._class_of.items()}
        chosen_ns = {ns for ns, _ in selected}
        if scope.needed_all is None:
            scope.needed_all = scope.closure(self._methods.values())
        needed_all = scope.needed_all
        needed = scope.closure(chosen_fns) | {i for ns, i in self._ns_assign.items() if ns in chosen_ns}
        chosen_classes = {id(self._class_of[ns]) for ns in chosen_ns}
        namespace_stmts = {i for i, n in enumerate(body) if id(n) in ns_classes} | set(self._ns_assign.values())

        chunks: list[str] = []
        header_end = 0
        for node in body:
            if _is_docstring(node) or isinstance(node, (ast.Import, ast.ImportFrom)):
                header_end = node.end_lineno or node.lineno
            else:
                break
        kept: set[int] = set()
        for i, node in enumerate(body):
            if (node.end_lineno or node.lineno) <= header_end:
                continue
            if _is_docstring(node) and i > 0 and isinstance(body[i - 1], ast.Assign):
                # The docstring of a functional TypedDict goes where its assignment goes.
                if i - 1 in kept:
                    chunks[-1] += "\n" + self._text(node)
                continue
            if id(node) in chosen_classes:
                assert isinstance(node, ast.ClassDef)
                chunks.append(self._partial_class(node, {n for ns, n in selected if self._class_of[ns] is node}))
            elif i in namespace_stmts:
                if i in needed:
                    chunks.append(self._text(node))
                    kept.add(i)
            elif i in needed or i not in needed_all:
                chunks.append(self._text(node))
                kept.add(i)
        header = "\n".join(self._source_lines[:header_end]).rstrip()
        source = "\n\n\n".join([header, *chunks]).lstrip("\n") + "\n"
        try:
            ast.parse(source)
        except SyntaxError as exc:  # pragma: no cover - would be a bug in the cutting above
            raise ValueError(f"extracted stubs do not parse: {exc}") from exc
        return source

    def _text(self, node: ast.stmt) -> str:
        return "\n".join(self._source_lines[_first_line(node) - 1 : node.end_lineno])

    def _partial_class(self, cls: ast.ClassDef, methods: set[str]) -> str:
        chosen = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in methods]
        scope = self._class_scopes[id(cls)]
        if scope.needed_all is None:
            scope.needed_all = scope.closure(n for n in cls.body if id(n) in self._tool_fns)
        needed, needed_all = scope.closure(chosen), scope.needed_all
        head = "\n".join(self._source_lines[_first_line(cls) - 1 : _first_line(cls.body[0]) - 1])
        parts = [head]
        for i, node in enumerate(cls.body):
            keep = node in chosen if id(node) in self._tool_fns else (i in needed or i not in needed_all)
            if keep:
                parts.append(("\n" if parts[1:] else "") + self._text(node))
        return "\n".join(parts)


def search_tools(tools: Iterable[Tool], query: str, limit: int = 10) -> list[ToolHit]:
    """`ToolIndex(tools).search(query, limit)`; build a `ToolIndex` to search repeatedly.

    Raises `ValueError` if `limit` is negative."""
    return ToolIndex(tools).search(query, limit)


def get_stubs(tools: Iterable[Tool], names: Iterable[str]) -> str:
    """`ToolIndex(tools).get_stubs(names)`: stubs for only the named tools.

    Raises `ToolNotFound` (code "tool_not_found") for unknown names, with close matches."""
    return ToolIndex(tools).get_stubs(names)


def list_servers(tools: Iterable[Tool]) -> list[ServerSummary]:
    """`ToolIndex(tools).servers()`: namespaces with their tool counts and names."""
    return ToolIndex(tools).servers()
