"""Server-supplied names and text are untrusted: this is the one place that
turns them into identifiers and docstring text."""

from __future__ import annotations

import keyword
import re
import unicodedata

__all__ = ["clean_text", "to_identifier", "unique_identifier"]

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Zero-width, bidi controls, word joiners, BOM, and the Unicode tag block: text
# a reader cannot see but a model would still read.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\U000e0000-\U000e007f]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NOT_IDENT = re.compile(r"[^0-9A-Za-z_]")

# Names a stub's parameter may not take: keywords, and names the stub body uses.
RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {"self", "cls", "locals", "_call_tool"}


def clean_text(text: object) -> str:
    """Drop ANSI escapes, invisible characters and control characters (but
    newlines and tabs); normalize line endings."""
    s = str(text).replace("\r\n", "\n").replace("\r", "\n")
    s = _ANSI.sub("", s)
    s = _INVISIBLE.sub("", s)
    return _CONTROL.sub("", s)


def to_identifier(name: object, *, fallback: str = "x") -> str:
    """A predictable ASCII identifier for `name`: invalid characters become `_`,
    leading underscores go (no private or dunder names), a leading digit gets
    an `n_` prefix, reserved words get a `_` suffix."""
    s = unicodedata.normalize("NFKC", clean_text(name))
    s = _NOT_IDENT.sub("_", s).lstrip("_")
    if not s:
        s = fallback
    if s[0].isdigit():
        s = "n_" + s
    if s in RESERVED:
        s += "_"
    return s


def unique_identifier(name: object, taken: set[str], *, fallback: str = "x") -> str:
    """`to_identifier(name)`, suffixed `_2`, `_3`, ... until not in `taken`; adds it."""
    base = to_identifier(name, fallback=fallback)
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate
