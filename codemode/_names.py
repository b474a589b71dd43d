"""Server-supplied names and text are untrusted: this is the one place that
turns them into identifiers and docstring text.

Three scopes get identifiers, each with its own reserved words:

- parameters (`PARAM_RESERVED`): the stub body calls `locals()` and
  `_call_tool`, so a parameter may not shadow them;
- members of a namespace class (`MEMBER_RESERVED`): annotations later in the
  class body would resolve to a method named `str` or `Any`;
- module level (`GLOBAL_RESERVED`): namespaces and TypedDicts must not shadow
  builtins, the typing names the stubs import, or the guest's own globals.
"""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata

__all__ = [
    "GLOBAL_RESERVED",
    "MEMBER_RESERVED",
    "PARAM_RESERVED",
    "RESERVED",
    "TYPE_NAMES",
    "clean_text",
    "is_field_name",
    "to_identifier",
    "type_name_part",
    "unique_identifier",
]

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Text a reader cannot see but a model would still read: every format (Cf)
# character of Unicode 15 (zero-width, bidi controls, word joiners, BOM, the
# tag block U+E0000..U+E007F), variation selectors (used to smuggle bytes
# after a visible character), fillers that render as blank, and lone
# surrogates (which cannot even be encoded as source).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
    "\ufff0-\ufffb\ud800-\udfff\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NEWLINES = re.compile("\r\n|[\r\u2028\u2029]")
_NOT_IDENT = re.compile(r"[^0-9A-Za-z_]")

# Identifiers longer than this are cut: a 10 kB tool name must not make a 10 kB stub.
MAX_IDENTIFIER = 64

_KEYWORDS = frozenset(keyword.kwlist)
# Soft keywords (`match`, `case`, `type`) are valid names and common parameter
# names, so they are not reserved.
PARAM_RESERVED = _KEYWORDS | {"self", "cls", "locals", "_call_tool"}
RESERVED = PARAM_RESERVED  # the name this set had before the scopes were split
TYPE_NAMES = frozenset(
    {
        "Any",
        "Literal",
        "NotRequired",
        "Required",
        "TypedDict",
        "str",
        "int",
        "float",
        "bool",
        "list",
        "dict",
        "tuple",
        "object",
    }
)
"""Every name a stub annotation may use besides the TypedDicts it defines."""
MEMBER_RESERVED = _KEYWORDS | TYPE_NAMES
GLOBAL_RESERVED = MEMBER_RESERVED | {n for n in dir(builtins) if not n.startswith("_")} | {"ToolError"}


def clean_text(text: object) -> str:
    """Drop ANSI escapes, invisible characters and control characters (but
    newlines and tabs); normalize line endings (Unicode line and paragraph
    separators included, so line structure is what a reader sees)."""
    s = _NEWLINES.sub("\n", str(text))
    s = _ANSI.sub("", s)
    s = _INVISIBLE.sub("", s)
    return _CONTROL.sub("", s)


def _ascii_word(name: object) -> str:
    # NFKD then dropping combining marks turns "café" into "cafe" and "ﬁle"
    # into "file"; anything else outside ASCII becomes "_".
    s = unicodedata.normalize("NFKD", clean_text(name))
    s = "".join(c for c in s if not unicodedata.combining(c))
    return _NOT_IDENT.sub("_", s)


def to_identifier(name: object, *, fallback: str = "x", reserved: frozenset[str] = PARAM_RESERVED) -> str:
    """A predictable ASCII identifier for `name`: invalid characters become `_`,
    leading underscores go (no private, dunder or mangled names), a leading
    digit gets an `n_` prefix, reserved words get a `_` suffix, and it is cut
    to `MAX_IDENTIFIER` characters."""
    s = _ascii_word(name).lstrip("_")[:MAX_IDENTIFIER]
    if not s:
        s = fallback
    if s[0].isdigit():
        s = "n_" + s
    if s in reserved:
        s += "_"
    return s


def unique_identifier(
    name: object, taken: set[str], *, fallback: str = "x", reserved: frozenset[str] = PARAM_RESERVED
) -> str:
    """`to_identifier(name)`, suffixed `_2`, `_3`, ... until not in `taken`; adds it.

    Callers pass names in input order, so the suffixes are stable."""
    base = to_identifier(name, fallback=fallback, reserved=reserved)
    candidate, n = base, 2
    while candidate in taken or candidate in reserved:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def type_name_part(name: object, *, fallback: str = "X") -> str:
    """`name` as one CamelCase part of a TypedDict name: `edit_file` -> `EditFile`."""
    words = [w for w in _ascii_word(name).split("_") if w]
    s = "".join(w[0].upper() + w[1:] for w in words)[:MAX_IDENTIFIER] or fallback
    return "N" + s if s[0].isdigit() else s


def is_field_name(key: str, avoid: frozenset[str] | set[str]) -> bool:
    """Whether `key` can be written as-is as a field of a class-syntax TypedDict.

    Keywords cannot, `__x` would be name-mangled by the class body, and names
    in `avoid` (the module's type names) would confuse type checkers."""
    return (
        key.isidentifier()
        and key.isascii()
        and not keyword.iskeyword(key)
        and not key.startswith("__")
        and key not in avoid
        and key not in TYPE_NAMES
    )
