"""Observed output shapes for tools that declare no outputSchema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from inline_snapshot import snapshot

from codemode._observed import ObservedShapesError, ShapeRecorder, is_observed, observed_note
from codemode._schema_types import annotation_for


def _schema(*values: Any, **caps: int) -> dict[str, Any] | None:
    recorder = ShapeRecorder(**caps)  # type: ignore[arg-type]
    for value in values:
        recorder.observe("fs", "stat", value)
    return recorder.inferred_output_schema("fs", "stat")


def test_nothing_observed_gives_no_schema() -> None:
    assert ShapeRecorder().inferred_output_schema("fs", "stat") is None


def test_keys_seen_in_every_result_are_required_and_others_optional() -> None:
    schema = _schema(
        {"name": "a.txt", "size": 3, "tags": ["x"]},
        {"name": "b", "size": 2.5, "mtime": None, "tags": []},
    )
    assert schema == snapshot(
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "size": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "mtime": {"type": "null"},
            },
            "required": ["name", "size", "tags"],
            "x-codemode-observed": True,
            "x-codemode-observations": 2,
        }
    )


def test_values_of_several_types_become_unions() -> None:
    schema = _schema({"id": 1}, "not found", None, [1, "two", True])
    assert schema == snapshot(
        {
            "anyOf": [
                {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
                {"type": "array", "items": {"type": ["string", "integer", "boolean"]}},
                {"type": ["string", "null"]},
            ],
            "x-codemode-observed": True,
            "x-codemode-observations": 4,
        }
    )
    assert annotation_for(schema) == "dict[str, Any] | list[str | int | bool] | str | None"


def test_arrays_of_objects_merge_their_items() -> None:
    schema = _schema([{"path": "a", "size": 1}, {"path": "b", "error": "denied"}], [])
    assert schema == snapshot(
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "size": {"type": "integer"}, "error": {"type": "string"}},
                "required": ["path"],
            },
            "x-codemode-observed": True,
            "x-codemode-observations": 2,
        }
    )


def test_depth_keys_and_items_are_capped() -> None:
    deep = {"a": {"b": {"c": {"d": 1}}}}
    assert _schema(deep, max_depth=2) == snapshot(
        {
            "type": "object",
            "properties": {
                "a": {
                    "type": "object",
                    "properties": {"b": {"type": "object", "properties": {}, "additionalProperties": True}},
                    "required": ["b"],
                }
            },
            "required": ["a"],
            "x-codemode-observed": True,
            "x-codemode-observations": 1,
        }
    )
    wide = _schema({f"k{i}": i for i in range(10)}, {"k0": 0, "other": 1}, max_keys=3)
    assert wide is not None
    assert list(wide["properties"]) == ["k0", "k1", "k2"] and wide["additionalProperties"] is True
    assert wide["required"] == ["k0"]
    sampled = _schema([1, 2, "three"], max_items=2)
    assert sampled is not None and sampled["items"] == {"type": "integer"}


def test_non_json_values_are_recorded_as_any() -> None:
    assert _schema({"when": object()}) == snapshot(
        {
            "type": "object",
            "properties": {"when": {}},
            "required": ["when"],
            "x-codemode-observed": True,
            "x-codemode-observations": 1,
        }
    )


def test_shapes_survive_a_save_and_load_round_trip_and_keep_merging(tmp_path: Path) -> None:
    path = tmp_path / "codemode.observed.json"
    recorder = ShapeRecorder.load(path)
    recorder.observe("fs", "stat", {"name": "a", "size": 1})
    recorder.observe("web", "fetch", "<html>")
    recorder.save()
    assert not recorder.dirty
    assert [p.name for p in tmp_path.iterdir()] == ["codemode.observed.json"]

    reloaded = ShapeRecorder.load(path)
    assert reloaded.inferred_output_schema("fs", "stat") == recorder.inferred_output_schema("fs", "stat")
    reloaded.observe("fs", "stat", {"name": "b"})
    assert reloaded.observations("fs", "stat") == 2
    schema = reloaded.inferred_output_schema("fs", "stat")
    assert schema is not None and schema["required"] == ["name"]
    assert reloaded.inferred_output_schema("web", "fetch") == snapshot(
        {"type": "string", "x-codemode-observed": True, "x-codemode-observations": 1}
    )


def test_forget_drops_one_tool_or_a_whole_server() -> None:
    recorder = ShapeRecorder()
    for tool in ("stat", "read"):
        recorder.observe("fs", tool, 1)
    recorder.observe("web", "fetch", 1)
    recorder.forget("fs", "stat")
    assert recorder.observations("fs", "stat") == 0 and recorder.observations("fs", "read") == 1
    recorder.forget("fs")
    assert recorder.observations("fs", "read") == 0 and recorder.observations("web", "fetch") == 1


@pytest.mark.parametrize(
    "content",
    [
        "{oops",
        '{"version": 2, "tools": {}}',
        '{"version": 1, "tools": {"fs": {"stat": {"types": {"string": {"n": 0}}}}}}',
        '{"version": 1, "tools": {"fs": {"stat": {"types": {"object": {"n": 1, "keys": {"a": {"types": {"string": {"n": 5}}}}, "open": false}}}}}}',
    ],
)
def test_a_corrupt_shapes_file_gives_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "codemode.observed.json"
    path.write_text(content)
    with pytest.raises(ObservedShapesError) as info:
        ShapeRecorder.load(path)
    assert info.value.code == "observed_shapes_invalid"
    assert str(path) in info.value.message


def test_an_observed_schema_is_labelled_as_not_declared() -> None:
    schema = _schema({"ok": True}, {"ok": False})
    assert is_observed(schema)
    assert observed_note(schema) == "Returns (observed over 2 calls, not declared): may differ on other calls."
    declared = {"type": "object"}
    assert not is_observed(declared) and observed_note(declared) is None


def test_the_shapes_file_keeps_counts_so_merges_stay_exact(tmp_path: Path) -> None:
    recorder = ShapeRecorder(path=tmp_path / "shapes.json")
    recorder.observe("fs", "stat", {"name": "a", "size": 1})
    recorder.observe("fs", "stat", {"name": "b"})
    recorder.save()
    assert json.loads((tmp_path / "shapes.json").read_text()) == snapshot(
        {
            "version": 1,
            "tools": {
                "fs": {
                    "stat": {
                        "types": {
                            "object": {
                                "n": 2,
                                "keys": {
                                    "name": {"types": {"string": {"n": 2}}},
                                    "size": {"types": {"integer": {"n": 1}}},
                                },
                                "open": False,
                            }
                        }
                    }
                }
            },
        }
    )
