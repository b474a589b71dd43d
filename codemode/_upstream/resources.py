"""Following resource links: the `read_resource` tool of a server that serves resources.

A tool may return resource links (`{"type": "resource_link", "uri": ...}`, see
`results`) instead of the data itself. Model code follows one with

    contents = await everything.read_resource(uri=link["uri"])

in the namespace of the server that returned it. The hub offers that tool for
each connected server that serves resources (it declares the capability and
lists at least one resource or resource template), as one more `Tool` of its
namespace, so stubs, argument checks, call limits and result size
caps apply to it as to any tool, and it obeys the server's allow/deny lists as a
tool named `read_resource` (an `allow` list must name it). A server with its own
tool of that name keeps it; ours is then not offered.

What a read returns is a list of the resource's contents (a URI may name
several), each `{"uri", "mimeType", "text"}` or, for binary data,
`{"uri", "mimeType", "blob" (base64), "size" (bytes)}`. The URI and the contents
come from the model and the server: both are untrusted, and this module only
reshapes them; the host's result size cap applies when they enter the sandbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._tools import Tool
from .results import _b64_size

__all__ = ["READ_RESOURCE", "contents_value", "read_resource_tool"]

READ_RESOURCE = "read_resource"
"""The tool's name, in stubs and for allow/deny patterns."""

_DESCRIPTION = (
    "Read one of this server's resources by URI, e.g. the `uri` of a resource link one of its tools returned. "
    "One entry per part of the contents."
)
_INPUT_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"uri": {"type": "string"}},
    "required": ["uri"],
    "additionalProperties": False,
}
_OUTPUT_SCHEMA: Mapping[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "title": "ResourceContents",
        "properties": {
            "uri": {"type": "string"},
            "mimeType": {"type": "string"},
            "text": {"type": "string", "description": "The contents, for text."},
            "blob": {"type": "string", "description": "The contents, base64-encoded, for binary data."},
            "size": {"type": "integer", "description": "Bytes in `blob`, decoded."},
        },
        "required": ["uri"],
    },
}


def read_resource_tool(namespace: str, read: Callable[[str, str], Awaitable[Any]]) -> Tool:
    """The `read_resource` tool of `namespace`; `read(namespace, uri)` does the reading
    (`Hub.read_resource`, which checks the allow/deny lists on every call)."""

    async def read_resource(uri: str) -> Any:
        return await read(namespace, uri)

    return Tool(
        name=READ_RESOURCE,
        namespace=namespace,
        fn=read_resource,
        description=_DESCRIPTION,
        input_schema=_INPUT_SCHEMA,
        output_schema=_OUTPUT_SCHEMA,
    )


def contents_value(result: Any) -> list[dict[str, Any]]:
    """The sandbox value of a `ReadResourceResult` (wire dict or SDK model): its
    contents as plain dicts, `annotations` and `_meta` left out."""
    dump = getattr(result, "model_dump", None)
    wire = dump(by_alias=True, mode="json", exclude_none=True) if dump is not None else result
    contents = wire.get("contents") if isinstance(wire, Mapping) else None
    values: list[dict[str, Any]] = []
    for item in contents if isinstance(contents, list) else []:
        if not isinstance(item, Mapping):
            continue
        value: dict[str, Any] = {"uri": str(item.get("uri", ""))}
        if item.get("mimeType") is not None:
            value["mimeType"] = str(item["mimeType"])
        if "blob" in item:
            blob = str(item.get("blob", ""))
            value.update(blob=blob, size=_b64_size(blob))
        else:
            value["text"] = str(item.get("text", ""))
        values.append(value)
    return values
