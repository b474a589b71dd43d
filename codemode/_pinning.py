"""Pinning tool definitions against rug pulls.

A server can change a tool's description or schema after the user approved it
(a "rug pull": a harmless tool turns into one whose description tells the model
to exfiltrate data). So every tool definition shown to a model is hashed and
recorded in a lock file, `codemode.lock.json` beside the config by convention.
A definition that differs from its pin is refused until someone re-approves it
(`codemode pin --update`, or `PinStore.update(tools)` then `save()`).

New tools are trusted on first use by default (`PinPolicy(on_new="pin")`); a
strict setup uses `on_new="exclude"` so only tools already in the lock file run.

Code calls a tool by its Python name (`evil.get_data`), not its wire name, so a
pin also records the Python name the tool was given when it was pinned. That
name stays the tool's whatever the listing order, and no other tool of the
server, new or changed, is ever given a name a pinned tool holds (a new
`get-data` listed before a pinned `get_data` becomes `get_data_2`). Lock files
written before names were recorded get names on first use, in listing order.

Lock file, version 1 (keys sorted, so diffs stay small and reviewable):

    {"version": 1,
     "tools": {"<server>": {"<tool>": {"sha256": "...", "python_name": "...", "description": "...",
                                        "input_schema": {...}, "output_schema": null}}}}

The hash is authoritative; the stored definition is there so that a report can
say *what* changed and a reviewer can read the diff.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ._errors import CodemodeError, ConfigError
from ._names import MEMBER_RESERVED, to_identifier, unique_identifier
from ._tools import Tool

__all__ = [
    "LOCK_FILE_NAME",
    "ChangedTool",
    "LockFileError",
    "PinPolicy",
    "PinReport",
    "PinStore",
    "ToolDefinitionChanged",
    "ToolRef",
    "atomic_write_json",
    "canonical_json",
    "filter_pinned",
    "tool_definition",
    "tool_digest",
    "with_python_names",
]

logger = logging.getLogger("codemode")

LOCK_FILE_NAME = "codemode.lock.json"
_LOCK_VERSION = 1
_DEFINITION_FIELDS = ("description", "input_schema", "output_schema")
_REAPPROVE_HINT = "re-approve with `codemode pin --update` (or `PinStore.update(tools)` then `save()`)"


class ToolDefinitionChanged(CodemodeError):
    """A tool's definition differs from the one that was pinned: refused until re-approved."""

    code: ClassVar[str] = "tool_definition_changed"

    def __init__(self, changed: Iterable[ChangedTool]) -> None:
        self.changed = tuple(changed)
        parts = [
            f"server {c.server!r} tool {c.tool!r} ({', '.join(c.fields) or 'definition'} changed)" for c in self.changed
        ]
        super().__init__(f"tool definition changed since it was pinned: {'; '.join(parts)}; {_REAPPROVE_HINT}")

    def to_dict(self) -> dict[str, Any]:
        changed = [{"server": c.server, "tool": c.tool, "fields": list(c.fields)} for c in self.changed]
        return {**super().to_dict(), "changed": changed}


class LockFileError(ConfigError):
    """The lock file exists but cannot be read as a codemode lock file."""

    code: ClassVar[str] = "lock_file_invalid"

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(
            f"lock file {str(path)!r} is invalid: {problem}; restore it (e.g. from version control), "
            "or delete it and re-pin with `codemode pin --update` (every tool is then trusted afresh)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "path": str(self.path)}


@dataclass(frozen=True, kw_only=True, order=True)
class ToolRef:
    """A tool by its server (the `Tool.namespace`) and its wire name."""

    server: str
    tool: str


@dataclass(frozen=True, kw_only=True)
class ChangedTool:
    """A tool whose definition no longer matches its pin; `fields` names the parts
    that differ (empty when the lock file holds only the hash)."""

    server: str
    tool: str
    fields: tuple[str, ...]
    pinned_sha256: str
    current_sha256: str

    @property
    def ref(self) -> ToolRef:
        return ToolRef(server=self.server, tool=self.tool)


@dataclass(frozen=True, kw_only=True)
class PinReport:
    """How a set of tools compares with the lock file. Every tuple is sorted."""

    new: tuple[ToolRef, ...] = ()
    changed: tuple[ChangedTool, ...] = ()
    removed: tuple[ToolRef, ...] = ()
    """Pinned tools of the servers in the checked set that the set no longer has.
    Servers absent from the set entirely are not reported (they may be down)."""
    unchanged: tuple[ToolRef, ...] = ()

    @property
    def ok(self) -> bool:
        """No definition changed (new and removed tools are not refusals)."""
        return not self.changed

    def raise_for_changed(self) -> None:
        """Raises `ToolDefinitionChanged` if any definition changed."""
        if self.changed:
            raise ToolDefinitionChanged(self.changed)


@dataclass(frozen=True, kw_only=True)
class PinPolicy:
    """What `filter_pinned` does with tools that are not plainly approved.

    on_new: "pin" trusts a tool on first sight and pins it (trust on first use);
        "allow" lets it run without pinning it; "exclude" keeps it out until approved.
    on_changed: "raise" refuses the whole set with `ToolDefinitionChanged`;
        "exclude" drops the changed tools, logs a warning, and lets the rest run."""

    on_new: Literal["pin", "allow", "exclude"] = "pin"
    on_changed: Literal["raise", "exclude"] = "raise"


def _plain_json(value: Any) -> Any:
    # Schemas arrive as arbitrary Mappings/Sequences (MappingProxy, tuples);
    # hash what they mean, not which container type held them.
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys, so equal definitions give equal bytes.

    Raises `ValueError` (or `TypeError`) if `value` is not JSON data (NaN included)."""
    return json.dumps(_plain_json(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def tool_definition(tool: Tool) -> dict[str, Any]:
    """Everything about `tool` that a model is shown, as plain JSON data."""
    return {
        "server": tool.namespace,
        "name": tool.name,
        "description": tool.description,
        "input_schema": _plain_json(tool.input_schema),
        "output_schema": _plain_json(tool.output_schema) if tool.output_schema is not None else None,
    }


def tool_digest(tool: Tool) -> str:
    """The sha256 (hex) of the canonical JSON of `tool_definition(tool)`.

    Raises `ValueError` if the tool's schemas are not JSON data."""
    return hashlib.sha256(canonical_json(tool_definition(tool)).encode()).hexdigest()


def atomic_write_json(path: Path, data: Any, *, sort_keys: bool = True) -> None:
    """Write `data` as indented JSON to `path` so that readers see the old file or
    the new one, never half of one: a temporary file beside it, fsync, then `os.replace`.

    Raises `OSError` if the directory cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, kw_only=True)
class _Pin:
    sha256: str
    definition: Mapping[str, Any] | None  # None when the lock file holds only the hash
    python_name: str | None = None  # None in lock files written before names were recorded


def _pin_for(tool: Tool, python_name: str | None = None) -> _Pin:
    definition = tool_definition(tool)
    return _Pin(
        sha256=tool_digest(tool), definition={k: definition[k] for k in _DEFINITION_FIELDS}, python_name=python_name
    )


def _is_member_name(name: str) -> bool:
    return to_identifier(name, reserved=MEMBER_RESERVED) == name


def _changed_fields(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[str, ...]:
    if old is None or new is None:
        return ()
    return tuple(f for f in _DEFINITION_FIELDS if canonical_json(old.get(f)) != canonical_json(new.get(f)))


@dataclass(kw_only=True)
class PinStore:
    """The pinned tool definitions of one lock file.

    Changes are in memory until `save()`. Not safe for concurrent writers:
    the last `save()` wins."""

    path: Path | None = None
    _pins: dict[ToolRef, _Pin] = field(default_factory=dict, repr=False)
    _dirty: bool = field(default=False, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PinStore:
        """The store kept at `path`; empty (and not yet written) if the file does
        not exist.

        Raises `LockFileError` if the file is not a valid lock file, and `OSError`
        if it cannot be read."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path=path)
        except UnicodeDecodeError as exc:
            raise LockFileError(path, "not UTF-8 text") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LockFileError(path, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
        return cls(path=path, _pins=_parse_lock(path, data))

    @property
    def dirty(self) -> bool:
        """Whether there are changes `save()` has not written yet."""
        return self._dirty

    def pinned(self) -> list[ToolRef]:
        """Every pinned tool, sorted."""
        return sorted(self._pins)

    def python_names(self, tools: Iterable[Tool]) -> dict[ToolRef, str]:
        """The Python name each of `tools` gets in its namespace: a pinned tool's
        recorded name; for any other, one derived from its wire name (listing
        order) that no pinned tool of the server holds, present or not.
        `approve` records the names of what it pins; pinned tools from a lock
        file written before names were recorded get theirs recorded here (saved
        on the next `save()`), so that no new tool can take them later."""
        names: dict[ToolRef, str] = {}
        taken: dict[str, set[str]] = {}
        for pinned_ref, pinned in self._pins.items():
            if pinned.python_name is not None:
                taken.setdefault(pinned_ref.server, set()).add(pinned.python_name)
        unnamed: list[ToolRef] = []
        for tool in tools:
            ref = ToolRef(server=tool.namespace, tool=tool.name)
            known = self._pins.get(ref)
            if known is not None and known.python_name is not None:
                names[ref] = known.python_name
            elif ref not in names:
                unnamed.append(ref)
        # Pinned tools from an older lock file first, so they keep the names they had.
        unnamed.sort(key=lambda ref: ref not in self._pins)
        for ref in unnamed:
            if ref not in names:
                server_taken = taken.setdefault(ref.server, set())
                names[ref] = unique_identifier(ref.tool, server_taken, fallback="tool", reserved=MEMBER_RESERVED)
                legacy = self._pins.get(ref)
                if legacy is not None:
                    self._pins[ref] = dataclasses.replace(legacy, python_name=names[ref])
                    self._dirty = True
        return names

    def check(self, tools: Iterable[Tool]) -> PinReport:
        """Compare `tools` with the pins; changes nothing.

        Raises `ValueError` if a tool's schemas are not JSON data."""
        tools = list(tools)
        new: list[ToolRef] = []
        changed: list[ChangedTool] = []
        unchanged: list[ToolRef] = []
        for tool in tools:
            ref = ToolRef(server=tool.namespace, tool=tool.name)
            current = _pin_for(tool)
            pinned = self._pins.get(ref)
            if pinned is None:
                new.append(ref)
            elif pinned.sha256 != current.sha256:
                fields = _changed_fields(pinned.definition, current.definition)
                changed.append(
                    ChangedTool(
                        server=ref.server,
                        tool=ref.tool,
                        fields=fields,
                        pinned_sha256=pinned.sha256,
                        current_sha256=current.sha256,
                    )
                )
            else:
                unchanged.append(ref)
        present = {ToolRef(server=t.namespace, tool=t.name) for t in tools}
        servers = {t.namespace for t in tools}
        removed = [ref for ref in self._pins if ref.server in servers and ref not in present]
        return PinReport(
            new=tuple(sorted(set(new))),
            changed=tuple(sorted({c.ref: c for c in changed}.values(), key=lambda c: c.ref)),
            removed=tuple(sorted(removed)),
            unchanged=tuple(sorted(set(unchanged))),
        )

    def approve(self, tools: Iterable[Tool]) -> PinReport:
        """Pin the current definitions of `tools`, new or changed; other pins stay.
        Returns the report from before the change.

        Raises `ValueError` if a tool's schemas are not JSON data."""
        tools = list(tools)
        report = self.check(tools)
        names = self.python_names(tools)
        for tool in tools:
            ref = ToolRef(server=tool.namespace, tool=tool.name)
            pin = _pin_for(tool, names[ref])
            if self._pins.get(ref) != pin:
                self._pins[ref] = pin
                self._dirty = True
        return report

    def update(self, tools: Iterable[Tool]) -> PinReport:
        """`approve(tools)`, and forget the pins of tools their servers no longer
        offer (what `codemode pin --update` does). Returns the report from before.

        Raises `ValueError` if a tool's schemas are not JSON data."""
        report = self.approve(tools)
        self.forget(report.removed)
        return report

    def forget(self, refs: Iterable[ToolRef]) -> None:
        """Drop the pins of `refs`; unknown ones are ignored."""
        for ref in refs:
            if self._pins.pop(ref, None) is not None:
                self._dirty = True

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the lock file atomically (to `path`, else where it was loaded from).

        Raises `ValueError` if the store has no path, `OSError` if writing fails."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("PinStore has no path: pass one to save() or use PinStore.load(path)")
        tools: dict[str, dict[str, Any]] = {}
        for ref in sorted(self._pins):
            pin = self._pins[ref]
            entry: dict[str, Any] = {"sha256": pin.sha256}
            if pin.python_name is not None:
                entry["python_name"] = pin.python_name
            if pin.definition is not None:
                entry.update(pin.definition)
            tools.setdefault(ref.server, {})[ref.tool] = entry
        atomic_write_json(target, {"version": _LOCK_VERSION, "tools": tools})
        self.path = target
        self._dirty = False


def _parse_lock(path: Path, data: object) -> dict[ToolRef, _Pin]:
    if not isinstance(data, dict):
        raise LockFileError(path, "the top level is not a JSON object")
    version = data.get("version")
    if version != _LOCK_VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and version > _LOCK_VERSION:
            raise LockFileError(
                path, f"version {version} was written by a newer codemode (this one reads version {_LOCK_VERSION})"
            )
        raise LockFileError(path, f"unsupported version {version!r} (expected {_LOCK_VERSION})")
    servers = data.get("tools", {})
    if not isinstance(servers, dict):
        raise LockFileError(path, '"tools" is not an object')
    pins: dict[ToolRef, _Pin] = {}
    names: dict[str, set[str]] = {}
    for server, tools in servers.items():
        if not isinstance(tools, dict):
            raise LockFileError(path, f"tools of server {server!r} are not an object")
        for name, entry in tools.items():
            where = f"server {server!r} tool {name!r}"
            if not isinstance(entry, dict):
                raise LockFileError(path, f"{where} is not an object")
            digest = entry.get("sha256")
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise LockFileError(path, f"{where} has no valid sha256")
            has_definition = all(f in entry for f in _DEFINITION_FIELDS)
            definition = {f: entry[f] for f in _DEFINITION_FIELDS} if has_definition else None
            python_name = entry.get("python_name")
            if python_name is not None and not (isinstance(python_name, str) and _is_member_name(python_name)):
                raise LockFileError(path, f"{where} has a python_name that is not an identifier")
            if python_name is not None and python_name in names.setdefault(server, set()):
                raise LockFileError(path, f"{where} has the python_name {python_name!r} of another tool")
            if python_name is not None:
                names[server].add(python_name)
            pins[ToolRef(server=server, tool=name)] = _Pin(
                sha256=digest, definition=definition, python_name=python_name
            )
    return pins


def filter_pinned(tools: Iterable[Tool], store: PinStore, policy: PinPolicy | None = None) -> list[Tool]:
    """The tools of `tools` allowed to run under `policy` (default: trust new
    tools on first use, refuse changed ones), in their given order.

    With `on_new="pin"`, new tools are pinned and, if the store has a path, the
    lock file is saved at once, so that first use is recorded before any run.

    Raises `ToolDefinitionChanged` (code "tool_definition_changed") when a
    definition changed and `policy.on_changed == "raise"`; `ValueError` if a
    tool's schemas are not JSON data; `OSError` if saving the lock file fails."""
    policy = policy or PinPolicy()
    tools = list(tools)
    report = store.check(tools)
    if report.changed:
        if policy.on_changed == "raise":
            raise ToolDefinitionChanged(report.changed)
        for change in report.changed:
            logger.warning(
                "refusing tool %r of server %r: its %s changed since it was pinned; %s",
                change.tool,
                change.server,
                ", ".join(change.fields) or "definition",
                _REAPPROVE_HINT,
            )
    refused = {c.ref for c in report.changed}
    new = set(report.new)
    if new and policy.on_new == "exclude":
        logger.warning(
            "not running %d tool(s) that are not pinned yet: %s",
            len(new),
            ", ".join(f"{r.server}.{r.tool}" for r in sorted(new)),
        )
        refused |= new
    allowed = [t for t in tools if ToolRef(server=t.namespace, tool=t.name) not in refused]
    # Pins from an older lock file get their names before any new tool is named.
    store.python_names(tools)
    if new and policy.on_new == "pin":
        logger.info(
            "pinning %d new tool(s) on first use: %s", len(new), ", ".join(f"{r.server}.{r.tool}" for r in sorted(new))
        )
        store.approve(t for t in tools if ToolRef(server=t.namespace, tool=t.name) in new)
    if store.dirty and store.path is not None:
        store.save()
    return allowed


def with_python_names(tools: Iterable[Tool], store: PinStore) -> list[Tool]:
    """`tools`, each with `python_name` set to the name `store` gives it
    (`PinStore.python_names`), so stubs call pinned tools by their pinned names."""
    tools = list(tools)
    names = store.python_names(tools)
    return [dataclasses.replace(t, python_name=names[ToolRef(server=t.namespace, tool=t.name)]) for t in tools]
