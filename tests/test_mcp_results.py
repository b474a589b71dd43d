"""The one rule that turns an MCP tool result into a sandbox value."""

from __future__ import annotations

import base64
from typing import Any

import mcp_types as types
import pytest

from codemode import ToolError
from codemode._upstream.results import to_value

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(58)).decode()
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def test_is_error_raises_tool_error_with_the_text_content() -> None:
    with pytest.raises(ToolError) as info:
        to_value({"isError": True, "content": [text("no such file"), text("try again")]})
    assert info.value.code == "tool_error"
    assert info.value.message == "no such file\ntry again"


def test_is_error_wins_over_structured_content_and_schema() -> None:
    with pytest.raises(ToolError):
        to_value({"isError": True, "content": [], "structuredContent": {"city": "x"}}, output_schema=WEATHER_SCHEMA)


def test_is_error_without_text_still_has_a_message() -> None:
    with pytest.raises(ToolError) as info:
        to_value({"isError": True, "content": []})
    assert info.value.message == "the tool reported an error without a message"


def test_a_huge_error_message_is_truncated_with_a_marker() -> None:
    with pytest.raises(ToolError) as info:
        to_value({"isError": True, "content": [text("x" * 10_000)]})
    assert len(info.value.message) < 4_100
    assert info.value.message.endswith("[truncated 6000 characters]")


def test_structured_content_is_the_value_when_it_matches_the_output_schema() -> None:
    result = {"content": [text('{"city": "Oslo", "celsius": 3}')], "structuredContent": {"city": "Oslo", "celsius": 3}}
    assert to_value(result, output_schema=WEATHER_SCHEMA) == {"city": "Oslo", "celsius": 3}


def test_structured_content_not_matching_the_output_schema_is_a_tool_error() -> None:
    with pytest.raises(ToolError) as info:
        to_value(
            {"content": [], "structuredContent": {"city": "Oslo", "celsius": "warm"}}, output_schema=WEATHER_SCHEMA
        )
    assert "celsius" in info.value.message


def test_missing_structured_content_with_an_output_schema_is_a_tool_error() -> None:
    with pytest.raises(ToolError):
        to_value({"content": [text("hi")]}, output_schema=WEATHER_SCHEMA)


def test_structured_content_without_a_schema_is_returned_as_is() -> None:
    assert to_value({"content": [text("ignored")], "structuredContent": {"a": [1, 2]}}) == {"a": [1, 2]}


def test_a_broken_output_schema_does_not_fail_the_call() -> None:
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    assert to_value({"content": [], "structuredContent": {"a": 1}}, output_schema=broken) == {"a": 1}


def test_text_is_returned_as_text() -> None:
    assert to_value({"content": [text("hello")]}) == "hello"


def test_json_object_or_array_text_is_parsed() -> None:
    assert to_value({"content": [text(' {"items": [1, 2]}\n')]}) == {"items": [1, 2]}
    assert to_value({"content": [text("[1, 2]")]}) == [1, 2]


def test_scalar_json_text_stays_text() -> None:
    assert to_value({"content": [text("007")]}) == "007"
    assert to_value({"content": [text("true")]}) == "true"
    assert to_value({"content": [text("{not json}")]}) == "{not json}"


def test_several_blocks_become_a_list() -> None:
    assert to_value({"content": [text("first"), text("second")]}) == ["first", "second"]


def test_no_content_is_none() -> None:
    assert to_value({"content": []}) is None


def test_images_and_audio_come_back_as_small_typed_dicts() -> None:
    result = {
        "content": [
            {"type": "image", "mimeType": "image/png", "data": PNG, "annotations": {"priority": 1}},
            {"type": "audio", "mimeType": "audio/wav", "data": "AAEC"},
        ]
    }
    assert to_value(result) == [
        {"type": "image", "mimeType": "image/png", "data": PNG, "size": 66},
        {"type": "audio", "mimeType": "audio/wav", "data": "AAEC", "size": 3},
    ]


def test_embedded_resources_and_links_are_kept() -> None:
    result = {
        "content": [
            {"type": "resource", "resource": {"uri": "file:///a.txt", "mimeType": "text/plain", "text": "A"}},
            {"type": "resource", "resource": {"uri": "file:///b.bin", "blob": "AAE=", "mimeType": None}},
            {"type": "resource_link", "uri": "file:///c", "name": "c", "_meta": {"x": 1}},
        ]
    }
    assert to_value(result) == [
        {"type": "resource", "uri": "file:///a.txt", "mimeType": "text/plain", "text": "A"},
        {"type": "resource", "uri": "file:///b.bin", "mimeType": None, "blob": "AAE=", "size": 2},
        {"type": "resource_link", "uri": "file:///c", "name": "c"},
    ]


def test_sdk_models_are_read_like_wire_dicts() -> None:
    result = types.CallToolResult(
        content=[types.ImageContent(type="image", data=PNG, mime_type="image/png")],
        structured_content=None,
    )
    assert to_value(result) == {"type": "image", "mimeType": "image/png", "data": PNG, "size": 66}
    error = types.CallToolResult(content=[types.TextContent(type="text", text="boom")], is_error=True)
    with pytest.raises(ToolError, match="boom"):
        to_value(error)
