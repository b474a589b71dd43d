"""The dispatcher's quick argument check agrees with jsonschema exactly."""

from __future__ import annotations

import itertools
from typing import Any

import jsonschema
import pytest

from codemode._sandbox.dispatch import _fast_check

VALUES: list[Any] = [0, 1, -7, 1.0, 1.5, float("inf"), True, False, None, "", "x", [], [1], {}, {"a": 1}]

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": kind}}, "required": ["a"]}
    for kind in ("string", "integer", "number", "boolean", "null", "array", "object")
] + [
    {
        "type": "object",
        "properties": {"a": {"type": "integer", "description": "d"}, "b": {}},
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"a": {"type": "string", "title": "A", "default": "x"}}, "required": []},
    {"type": "object"},
    {"properties": {"a": {"type": "number"}}, "required": ["a", "b"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_quick_check_agrees_with_jsonschema(schema: dict[str, Any]) -> None:
    fast = _fast_check(schema)
    assert fast is not None, "schema is in the quick subset"
    full = jsonschema.Draft202012Validator(schema)
    cases: list[dict[str, Any]] = [{}]
    cases += [{"a": v} for v in VALUES]
    cases += [{"a": v, "b": w} for v, w in itertools.product(VALUES[:6], VALUES[6:9])]
    cases += [{"zzz": 1}, {"a": 1, "zzz": None}]
    for arguments in cases:
        assert fast(arguments) == full.is_valid(arguments), (schema, arguments)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}},
        {"type": "object", "properties": {"a": {"enum": [1, 2]}}},
        {"type": "object", "properties": {"a": {"type": ["string", "null"]}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"type": "string"}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "array"},
        {"anyOf": [{"type": "object"}]},
    ],
)
def test_anything_richer_goes_to_jsonschema(schema: dict[str, Any]) -> None:
    assert _fast_check(schema) is None
