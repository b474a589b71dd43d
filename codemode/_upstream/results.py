"""What an MCP tool result becomes inside the sandbox: one rule, applied in order.

1. `isError: true` -> raise `ToolError`; its message is the result's text content.
2. `structuredContent` present -> that data is the value. When the tool declares
   an `outputSchema`, the data is validated against it; a mismatch is a `ToolError`
   (so is a missing `structuredContent`: the spec requires it then).
3. Otherwise the `content` blocks: none -> `None`, one -> its value, several ->
   a list of their values. A block's value is:
   - text: the text, or the parsed JSON when the whole text is a JSON object or
     array (scalars stay text, so an id like "007" is not turned into 7);
   - image / audio: `{"type", "mimeType", "data" (base64), "size" (bytes)}`;
   - embedded resource: `{"type": "resource", "uri", "mimeType", "text"}` or with
     `"blob"` (base64) and `"size"` instead of `"text"`;
   - resource link: `{"type": "resource_link", "uri", "name", ...}`, which model
     code follows with the server's `read_resource` (see `resources`);
   - anything else: the block minus `annotations`/`_meta`. Nothing is dropped.

The mapping reads the wire shape (camelCase JSON), so it does not depend on the
SDK's model classes; `to_value` also accepts the SDK's `CallToolResult`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import jsonschema
import referencing.exceptions

from .._errors import ToolError

__all__ = ["to_value"]

# A server's error text goes to the model; a megabyte stack trace helps no one.
_MAX_ERROR_CHARS = 4_000
_DROPPED_KEYS = frozenset({"annotations", "_meta"})


def to_value(
    result: Any, *, output_schema: Mapping[str, Any] | None = None, redact: Callable[[str], str] = lambda text: text
) -> Any:
    """The sandbox value of an MCP `CallToolResult` (wire dict or SDK model).
    An error's text is passed through `redact` before it is capped (a cap inside
    a secret would leave its start for a later redaction to miss).

    Raises `ToolError` when the result is an error, or its structured content
    does not match `output_schema` (or is missing although a schema is declared)."""
    wire = _wire(result)
    content = wire.get("content") or []
    if not isinstance(content, list):
        content = []
    if wire.get("isError"):
        raise ToolError(_error_message(content, redact))
    structured = wire.get("structuredContent")
    if output_schema:
        if structured is None:
            raise ToolError("the tool declares an output schema but returned no structured content")
        problem = _schema_mismatch(structured, output_schema)
        if problem:
            raise ToolError(f"the tool's result does not match its output schema: {problem}")
    if structured is not None:
        return structured
    values = [block_value(block) for block in content if isinstance(block, Mapping)]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def block_value(block: Mapping[str, Any]) -> Any:
    """The value of one content block (see the module docstring)."""
    kind = block.get("type")
    if kind == "text":
        return _text_value(str(block.get("text", "")))
    if kind in ("image", "audio"):
        data = str(block.get("data", ""))
        return {"type": kind, "mimeType": block.get("mimeType"), "data": data, "size": _b64_size(data)}
    if kind == "resource":
        resource = block.get("resource")
        resource = resource if isinstance(resource, Mapping) else {}
        value: dict[str, Any] = {"type": "resource", "uri": resource.get("uri"), "mimeType": resource.get("mimeType")}
        if "blob" in resource:
            blob = str(resource.get("blob", ""))
            value.update(blob=blob, size=_b64_size(blob))
        else:
            value["text"] = resource.get("text")
        return value
    return {k: v for k, v in block.items() if k not in _DROPPED_KEYS}


def _wire(result: Any) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    dump = getattr(result, "model_dump", None)
    if dump is None:
        raise TypeError(f"not an MCP tool result: {type(result).__name__}")
    wire: Mapping[str, Any] = dump(by_alias=True, mode="json", exclude_none=True)
    return wire


def _text_value(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return text


def _b64_size(data: str) -> int:
    """Decoded length of base64 `data`, without decoding it."""
    compact = "".join(data.split())
    return max(0, len(compact) * 3 // 4 - compact[-2:].count("="))


def _error_message(content: list[Any], redact: Callable[[str], str]) -> str:
    texts = [str(b.get("text", "")) for b in content if isinstance(b, Mapping) and b.get("type") == "text"]
    message = redact("\n".join(t for t in texts if t).strip()) or "the tool reported an error without a message"
    if len(message) > _MAX_ERROR_CHARS:
        message = message[:_MAX_ERROR_CHARS] + f"…[truncated {len(message) - _MAX_ERROR_CHARS} characters]"
    return message


@cache
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _schema_mismatch(data: Any, schema: Mapping[str, Any]) -> str | None:
    try:
        validator = _validator(json.dumps(schema, sort_keys=True, default=repr))
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    except (jsonschema.exceptions.SchemaError, referencing.exceptions.Unresolvable, TypeError, ValueError):
        # A server's broken schema says nothing about its data; do not fail the call on it.
        return None
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{path}: {error.message}" if path else error.message
