"""The stub generator: JSON Schema -> typed Python the model reads and the sandbox runs."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from inline_snapshot import snapshot

from codemode import StubSet, Tool, render_stubs
from codemode._names import clean_text


async def _noop(**_: Any) -> None:
    return None


def tool(
    name: str = "t",
    *,
    namespace: str = "tools",
    description: str = "",
    properties: dict[str, Any] | None = None,
    required: list[str] | None = None,
    output: Any = None,
    **schema: Any,
) -> Tool:
    input_schema: dict[str, Any] = {"type": "object", "properties": properties or {}, **schema}
    if required is not None:
        input_schema["required"] = required
    return Tool(
        name=name,
        namespace=namespace,
        fn=_noop,
        description=description,
        input_schema=input_schema,
        output_schema=output,
    )


def load(stubs: StubSet) -> tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]:
    """Execute the stubs as the sandbox does; the calls their `_call_tool` saw."""
    calls: list[tuple[str, str, dict[str, Any]]] = []

    async def _call_tool(ns: str, name: str, args: dict[str, Any]) -> Any:
        calls.append((ns, name, dict(args)))
        return {"ok": True}

    namespace: dict[str, Any] = {"_call_tool": _call_tool, "__name__": "stubs"}
    # dont_inherit: this module's `from __future__ import annotations` must not apply.
    exec(compile(stubs.runtime_source, "<stubs>", "exec", dont_inherit=True), namespace)
    return namespace, calls


def signature_of(source: str, cls: str, fn: str) -> str:
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.AsyncFunctionDef) and item.name == fn:
                    args = [
                        f"{a.arg}: {ast.unparse(a.annotation)}" + (f" = {ast.unparse(d)}" if d else "")
                        for a, d in zip(item.args.kwonlyargs, item.args.kw_defaults)
                        if a.annotation
                    ]
                    return f"({', '.join(args)}) -> {ast.unparse(item.returns) if item.returns else ''}"
    raise AssertionError(f"no {cls}.{fn}")


def class_source(source: str, name: str) -> str:
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return ast.get_source_segment(source, node) or ""
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == name:
            return ast.get_source_segment(source, node) or ""
    raise AssertionError(f"no {name}")


# -- representative schemas ---------------------------------------------------

EDIT_FILE = tool(
    "edit_file",
    namespace="filesystem",
    description="Make line-based edits to a text file.\nReturns a git-style diff.",
    properties={
        "path": {"type": "string", "description": "File to edit."},
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "One replacement.",
                "properties": {
                    "oldText": {"type": "string", "description": "Text to search for; must match exactly."},
                    "newText": {"type": "string"},
                },
                "required": ["oldText", "newText"],
                "additionalProperties": False,
            },
        },
        "dryRun": {"type": "boolean", "default": False, "description": "Preview without writing."},
        "encoding": {"enum": ["utf-8", "latin-1"], "default": "utf-8"},
        "options": {
            "type": "object",
            "properties": {"backup": {"type": "boolean"}, "mode": {"type": ["integer", "null"]}},
            "additionalProperties": {"type": "string"},
        },
        "tags": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    required=["path", "edits"],
    output={
        "type": "object",
        "properties": {"diff": {"type": "string"}, "changed": {"type": "integer", "minimum": 0}},
        "required": ["diff"],
    },
)

TREE = tool(
    "walk",
    namespace="tree",
    description="Walk a tree.",
    properties={
        "root": {"$ref": "#/$defs/Node"},
        "legacy": {"$ref": "#/definitions/Leaf"},
        "kind": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        "label": {"oneOf": [{"const": "a"}, {"const": 1}, {"const": True}]},
        "weight": {"type": "number", "nullable": True},
    },
    required=["root"],
    **{
        "$defs": {
            "Node": {
                "type": "object",
                "description": "A node and its children.",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["name"],
            },
        },
        "definitions": {"Leaf": {"type": "object", "properties": {"value": {"type": "number"}}}},
    },
)


def test_rich_schema_renders_typed_dicts_literals_unions_and_defaults() -> None:
    assert render_stubs([EDIT_FILE]).source == snapshot('''\
from typing import Literal, NotRequired, TypedDict


class Edit(TypedDict):
    """One replacement.

    oldText: Text to search for; must match exactly."""
    oldText: str
    newText: str


class Options(TypedDict, total=False):
    """Other keys are allowed too, with values of type str."""
    backup: bool
    mode: int | None


class EditFileResult(TypedDict):
    """changed: minimum=0"""
    diff: str
    changed: NotRequired[int]


class filesystem:

    @staticmethod
    async def edit_file(
        *,
        path: str,
        edits: list[Edit],
        dryRun: bool = False,
        encoding: Literal['utf-8', 'latin-1'] = 'utf-8',
        options: Options | None = None,
        tags: dict[str, int] | None = None,
    ) -> EditFileResult:
        """Make line-based edits to a text file.
        Returns a git-style diff.

        dryRun: Preview without writing."""
''')


def test_a_mostly_optional_typed_dict_marks_its_required_keys_instead() -> None:
    # `total=False` and one `Required[]` say the same as four `NotRequired[]`, in fewer tokens.
    props = {k: {"type": "string"} for k in ("uri", "mimeType", "text", "blob", "a-b")}
    item = {"type": "object", "title": "Part", "properties": props, "required": ["uri"]}
    shaped = {"type": "object", "title": "Shaped", "properties": dict(list(props.items())[:4]), "required": ["uri"]}
    stubs = render_stubs(
        [tool("read", output={"type": "object", "properties": {"p": item, "s": shaped}, "required": ["p", "s"]})]
    )
    assert "}, total=False)" in stubs.source and "class Shaped(TypedDict, total=False):" in stubs.source
    assert "    'uri': Required[str],\n    'mimeType': str," in stubs.source
    namespace, _ = load(stubs)
    for name in ("Part", "Shaped"):
        assert namespace[name].__required_keys__ == {"uri"}
        assert namespace[name].__optional_keys__ == set(list(props)[: 4 if name == "Shaped" else 5]) - {"uri"}
    _assert_only_definitions(stubs)


def test_recursive_refs_render_typed_dicts_that_refer_to_themselves() -> None:
    stubs = render_stubs([TREE])
    assert stubs.source == snapshot('''\
from typing import Any, Literal, NotRequired, TypedDict

Content = Any


class Node(TypedDict):
    """A node and its children."""
    name: str
    children: NotRequired['list[Node]']
    parent: NotRequired['Node | None']


class Leaf(TypedDict):
    value: NotRequired[float]


class tree:

    @staticmethod
    async def walk(
        *,
        root: Node,
        legacy: Leaf | None = None,
        kind: str | int | None = None,
        label: Literal['a', 1, True] | None = None,
        weight: float | None = None,
    ) -> Content:
        """Walk a tree."""
''')
    namespace, _ = load(stubs)  # forward references are quoted, so this executes
    node = namespace["Node"]
    assert node.__required_keys__ == {"name"}
    assert node.__optional_keys__ == {"children", "parent"}


def test_hostile_names_and_text_render_as_escaped_docstrings_and_mangled_names() -> None:
    stubs = render_stubs(
        [
            tool(
                "read-file\u200b",
                namespace="evil server",
                description='Reads.\x1b[2J"""\nimport os\n\\',
                properties={
                    "class": {"enum": ["a'b", '"""'], "description": "'''\U000e0069gnore"},
                    "a-b": {"type": "object", "properties": {"import": {"type": "string"}}, "description": "x\\"},
                },
                required=["class"],
            )
        ],
        namespace_docs={"evil server": 'Docs """ with quotes "'},
    )
    assert stubs.source == snapshot('''\
from typing import Any, Literal, NotRequired, TypedDict

Content = Any


AB = TypedDict(\'AB\', {
    \'import\': NotRequired[str],
})
"""x\\\\"""


class evil_server:
    """Docs \\"\\"\\" with quotes \\""""

    @staticmethod
    async def read_file(*, class_: Literal["a\'b", \'"""\'], a_b: AB | None = None) -> Content:
        """Reads.\\"\\"\\"
        import os
        \\\\
        The server calls this tool \'read-file\\\\u200b\'.

        class_: \'\'\'gnore. Sent as \'class\'.
        a_b: x\\\\. Sent as \'a-b\'."""
''')


# -- schema features ------------------------------------------------------------


def test_nested_objects_are_named_for_their_property_and_list_items_in_the_singular() -> None:
    source = render_stubs(
        [
            tool(
                "edit_file",
                namespace="filesystem",
                properties={
                    "edits": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"range": {"type": "object", "properties": {"start": {"type": "integer"}}}},
                        },
                    },
                },
            )
        ]
    ).source
    assert "edits: list[Edit] | None = None" in source
    assert "class Edit(TypedDict):\n    range: NotRequired[Range]" in source
    # Dependencies first: the module executes top to bottom.
    assert source.index("class Range(") < source.index("class Edit(")


def test_identical_types_within_a_namespace_are_written_once() -> None:
    obj = {"type": "object", "properties": {"x": {"type": "integer"}}}
    tools = [
        tool("a-b", properties={"o": obj}),
        tool("c", output=obj),
        tool("d", namespace="other", properties={"o": obj}),
    ]
    source = render_stubs(tools).source
    classes = [n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.bases]
    # One per namespace, named by the strongest hint: the property beats the tool's result.
    assert classes == ["O", "DO"]
    assert signature_of(source, "tools", "a_b") == "(o: O | None = None) -> Content"
    assert signature_of(source, "tools", "c") == "() -> O"
    assert signature_of(source, "other", "d") == "(o: DO | None = None) -> Content"
    assert render_stubs(tools).source == source


def test_different_types_with_one_name_get_their_tool_name_then_a_suffix() -> None:
    def obj(key: str) -> dict[str, Any]:
        return {"type": "object", "properties": {key: {"type": "integer"}}}

    tools = [tool("a", properties={"o": obj("x")}), tool("b", properties={"o": obj("y")})]
    tools.append(tool("b-c", properties={"o": obj("z")}))
    tools.append(tool("b_c", properties={"o": obj("w")}))
    source = render_stubs(tools).source
    classes = [n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.bases]
    assert classes == ["O", "BO", "BCO", "BCO_2"]
    assert render_stubs(tools).source == source


def test_types_are_named_by_title_then_defs_name_then_shared_words() -> None:
    entity = {"type": "object", "properties": {"name": {"type": "string"}}}
    status = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    tools = [
        tool("titled", properties={"e": {**entity, "title": "knowledge graph entity"}}),
        tool(
            "by_ref",
            properties={"n": {"$ref": "#/$defs/point"}},
            **{"$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}}}},
        ),
        tool("delete_entities", output=status),
        tool("delete_relations", output=status),
    ]
    source = render_stubs(tools).source
    assert signature_of(source, "tools", "titled") == "(e: KnowledgeGraphEntity | None = None) -> Content"
    assert signature_of(source, "tools", "by_ref") == "(n: Point | None = None) -> Content"
    assert signature_of(source, "tools", "delete_relations") == "() -> DeleteResult"


def test_union_options_are_named_by_their_tag() -> None:
    def option(tag: dict[str, Any], key: str) -> dict[str, Any]:
        return {"type": "object", "properties": {"type": tag, key: {"type": "string"}}}

    block = {
        "anyOf": [
            option({"enum": ["image", "audio"]}, "data"),
            option({"const": "resource"}, "uri"),
            {"type": "object", "properties": {"other": {"type": "integer"}}},
        ]
    }
    source = render_stubs([tool("read", properties={"blocks": {"type": "array", "items": block}})]).source
    assert signature_of(source, "tools", "read") == (
        "(blocks: list[ImageAudioBlock | ResourceBlock | BlockOption3] | None = None) -> Content"
    )


def test_a_description_that_only_repeats_the_names_is_left_out() -> None:
    entity = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "The name of the entity"},
            "entityType": {"type": "string", "description": "The type of the entity"},
            "observations": {"type": "array", "description": "Observations about the entity, oldest first"},
        },
    }
    stubs = render_stubs(
        [
            tool(
                "delete_entities",
                properties={
                    "entities": {"type": "array", "items": entity},
                    "entityNames": {"type": "array", "description": "An array of entity names to delete"},
                    "limit": {"type": "integer", "description": "The limit", "maximum": 5},
                },
            )
        ]
    )
    namespace, _ = load(stubs)
    assert inspect.getdoc(namespace["Entity"]) == "observations: Observations about the entity, oldest first"
    assert inspect.getdoc(namespace["tools"].delete_entities) == "Calls the tool 'delete_entities'.\n\nlimit: maximum=5"


def test_enum_and_const_become_literals_and_hostile_values_go_through_repr() -> None:
    hostile = "'] ; import os ; x = ['"
    source = render_stubs(
        [
            tool(
                properties={
                    "mode": {"enum": ["r", "w", hostile, 1, True, None]},
                    "fixed": {"const": "v1"},
                    "ratio": {"enum": [0.5, 1.5]},
                },
                required=["mode", "fixed", "ratio"],
            )
        ]
    ).source
    assert signature_of(source, "tools", "t") == (
        "(mode: Literal['r', 'w', \"'] ; import os ; x = ['\", 1, True] | None, fixed: Literal['v1'], "
        "ratio: float) -> Content"
    )


def test_huge_enums_fall_back_to_the_value_type_with_a_note() -> None:
    stubs = render_stubs([tool(properties={"n": {"enum": list(range(100_000))}}, required=["n"])])
    assert signature_of(stubs.source, "tools", "t") == "(n: int) -> Content"
    assert "n: One of 100000 values: 0, 1, 2, 3, 4, …" in stubs.source
    assert len(stubs.source) < 2_000


def test_unions_come_from_any_of_one_of_and_type_lists() -> None:
    source = render_stubs([TREE]).source
    assert "kind: str | int | None = None" in source
    assert "label: Literal['a', 1, True] | None = None" in source
    assert (
        signature_of(
            render_stubs(
                [tool(properties={"v": {"type": ["string", "array"], "items": {"type": "integer"}}}, required=["v"])]
            ).source,
            "tools",
            "t",
        )
        == "(v: str | list[int]) -> Content"
    )


@pytest.mark.parametrize(
    "schema",
    [
        {"type": ["string", "null"]},
        {"type": "string", "nullable": True},
        {"anyOf": [{"type": "string"}, {"type": "null"}]},
        {"oneOf": [{"type": "null"}, {"type": "string"}]},
        {"enum": ["a", None]},
    ],
)
def test_nullable_forms_become_optional(schema: dict[str, Any]) -> None:
    source = render_stubs([tool(properties={"v": schema}, required=["v"])]).source
    assert signature_of(source, "tools", "t").startswith("(v: ") and " | None) -> Content" in signature_of(
        source, "tools", "t"
    )


def test_additional_properties_give_a_dict_or_a_note_on_the_typed_dict() -> None:
    source = render_stubs([EDIT_FILE]).source
    assert "tags: dict[str, int] | None = None" in source
    assert '"""Other keys are allowed too, with values of type str."""' in class_source(source, "Options")


def test_refs_to_defs_and_definitions_share_one_typed_dict() -> None:
    source = render_stubs([TREE]).source
    assert signature_of(source, "tree", "walk").startswith("(root: Node, legacy: Leaf | None = None")
    assert source.count("class Node(TypedDict)") == 1


def test_a_root_ref_still_gives_parameters() -> None:
    schema = {
        "$ref": "#/$defs/Args",
        "$defs": {"Args": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}},
    }
    stubs = render_stubs([Tool(name="s", fn=_noop, input_schema=schema)])
    assert signature_of(stubs.source, "tools", "s") == "(q: str) -> Content"


def test_scalar_defaults_are_shown_only_when_they_fit_the_type() -> None:
    source = render_stubs(
        [
            tool(
                properties={
                    "limit": {"type": "integer", "default": 10},
                    "ratio": {"type": "number", "default": 1},
                    "wrong": {"type": "integer", "default": "10"},  # would be sent, and rejected
                    "inf": {"type": "number", "default": float("inf")},  # `inf` is not valid source
                    "items": {"type": "array", "default": [1, 2]},
                    "huge": {"type": "string", "default": "x" * 10_000},
                }
            )
        ]
    ).source
    assert signature_of(source, "tools", "t") == (
        "(limit: int = 10, ratio: float = 1, wrong: int | None = None, inf: float | None = None, "
        "items: list[Any] | None = None, huge: str | None = None) -> Content"
    )
    assert 'wrong: Default: "10".' in source
    assert "items: Default: [1, 2]." in source


def test_output_schema_gives_the_return_type_and_without_one_it_is_any() -> None:
    source = render_stubs(
        [
            EDIT_FILE,
            tool("plain", namespace="filesystem"),
            tool("count", namespace="filesystem", output={"type": "integer"}),
        ]
    ).source
    assert signature_of(source, "filesystem", "edit_file").endswith(") -> EditFileResult")
    assert signature_of(source, "filesystem", "plain") == "() -> Content"
    assert signature_of(source, "filesystem", "count") == "() -> int"


def test_a_schema_it_cannot_express_becomes_any_with_the_schema_in_the_docstring() -> None:
    stubs = render_stubs(
        [
            tool(
                properties={
                    "when": {"type": "date"},
                    "both": {"allOf": [{"type": "string"}, {"pattern": '"""'}]},
                }
            )
        ]
    )
    namespace, _ = load(stubs)
    assert signature_of(stubs.source, "tools", "t") == "(when: Any = None, both: Any = None) -> Content"
    assert inspect.getdoc(namespace["tools"].t) == (
        "Calls the tool 't'.\n\n"
        'when: Type not expressible (unknown type); schema: {"type": "date"}\n'
        'both: Type not expressible (allOf); schema: {"allOf": [{"type": "string"}, {"pattern": "\\"\\"\\""}]}'
    )


def test_an_input_schema_that_is_not_keyword_parameters_is_shown_in_the_docstring() -> None:
    stubs = render_stubs(
        [
            Tool(name="shapes", fn=_noop, input_schema={"oneOf": [{"type": "object"}]}),
            Tool(
                name="none", fn=_noop, input_schema={"type": "object", "properties": {}, "additionalProperties": False}
            ),
        ]
    )
    namespace, _ = load(stubs)
    assert inspect.getdoc(namespace["tools"].shapes) == (
        'Calls the tool \'shapes\'.\nInput schema (not expressible as parameters): {"oneOf": [{"type": "object"}]}'
    )
    assert inspect.getdoc(namespace["tools"].none) == "Calls the tool 'none'."


def test_two_servers_with_a_tool_of_the_same_name_do_not_collide() -> None:
    stubs = render_stubs([tool("search", namespace="github"), tool("search", namespace="notion")])
    namespace, calls = load(stubs)
    asyncio.run(namespace["github"].search())
    asyncio.run(namespace["notion"].search())
    assert calls == [("github", "search", {}), ("notion", "search", {})]
    assert stubs.bindings[("github", "search")].tool.namespace == "github"
    assert stubs.bindings[("notion", "search")].tool.namespace == "notion"


# -- untrusted names ------------------------------------------------------------


def test_tool_names_that_are_not_identifiers_are_mangled_and_bound() -> None:
    stubs = render_stubs([tool("read-file", namespace="my server"), tool("2fa.verify", namespace="my server")])
    assert sorted(stubs.bindings) == [("my_server", "n_2fa_verify"), ("my_server", "read_file")]
    assert stubs.bindings[("my_server", "read_file")].tool.name == "read-file"
    # A name made an identifier by `-` -> `_` needs no note; one changed otherwise does.
    assert "The server calls this tool 'read-file'." not in stubs.source
    with_doc = render_stubs([tool("2fa.verify", description="Verify.")]).source
    assert "The server calls this tool '2fa.verify'." in with_doc


def test_names_colliding_after_mangling_get_suffixes_in_input_order() -> None:
    stubs = render_stubs(
        [tool("get-item"), tool("get_item"), tool("get item"), tool("x", namespace="a-b"), tool("x", namespace="a_b")]
    )
    assert [(k, b.tool.name) for k, b in stubs.bindings.items()] == [
        (("tools", "get_item"), "get-item"),
        (("tools", "get_item_2"), "get_item"),
        (("tools", "get_item_3"), "get item"),
        (("a_b", "x"), "x"),
        (("a_b_2", "x"), "x"),
    ]


def test_tool_and_namespace_names_never_shadow_the_types_annotations_use() -> None:
    stubs = render_stubs(
        [
            tool("str", namespace="list", properties={"a": {"type": "string"}}, required=["a"]),
            tool("Any"),
            tool("after", properties={"b": {"type": "string"}}, required=["b"]),
        ]
    )
    assert sorted(stubs.bindings) == [("list_", "str_"), ("tools", "Any_"), ("tools", "after")]
    namespace, _ = load(stubs)
    assert namespace["tools"].after.__annotations__ == {"b": str, "return": Any}


HOSTILE_KEYS = ["class", "__class__", "self", "import", "locals", "_call_tool", "1st", "a-b", "", "lambda"]


def test_hostile_parameter_names_become_safe_names_mapped_back_to_wire_names() -> None:
    stubs = render_stubs([tool(properties={k: {"type": "string"} for k in HOSTILE_KEYS})])
    params = stubs.bindings[("tools", "t")].params
    assert dict(params) == {
        "class_": "class",
        "class__": "__class__",
        "self_": "self",
        "import_": "import",
        "locals_": "locals",
        "call_tool": "_call_tool",
        "n_1st": "1st",
        "a_b": "a-b",
        "arg": "",
        "lambda_": "lambda",
    }
    namespace, calls = load(stubs)
    asyncio.run(namespace["tools"].t(**{py: f"v-{wire}" for py, wire in params.items()}))
    [(_, _, sent)] = calls
    assert {params[py]: value for py, value in sent.items()} == {k: f"v-{k}" for k in HOSTILE_KEYS}


def test_typed_dict_keys_that_are_not_names_use_the_functional_form() -> None:
    stubs = render_stubs(
        [
            tool(
                properties={
                    "o": {
                        "type": "object",
                        "properties": {k: {"type": "integer"} for k in HOSTILE_KEYS},
                        "required": ["class"],
                    }
                }
            )
        ]
    )
    namespace, _ = load(stubs)
    typed = namespace["O"]
    assert set(typed.__annotations__) == set(HOSTILE_KEYS)  # the wire keys, exactly
    assert typed.__required_keys__ == {"class"}


# -- untrusted text and the shape of the module ---------------------------------

HOSTILE_TEXT = [
    '"""',
    "'''",
    '""',
    '"',
    'ends with a quote"',
    "a\\",
    "\\",
    "\\\\n",
    "\\N{BULLET}",
    "\\x41\\u0041",
    'x"""; import os; os.system("id"); """',
    "\n import os",
    'line\n"""\nimport os\n"""',
    "\x1b[31mred\x1b[0m text",
    "zero\u200bwidth\u200d joined\ufeff",
    "tagged" + "".join(chr(0xE0000 + ord(c)) for c in "run rm -rf") + " text",
    "nul\x00 bell\x07 \ud800 surrogate",
    "tab\tand\r\nCRLF\u2028LS",
    "{{ jinja }} {% raw %} {# c #}",
    "    indented\n        more",
]


def _hostile_corpus() -> tuple[list[Tool], dict[str, str]]:
    tools: list[Tool] = []
    for i, text in enumerate(HOSTILE_TEXT):
        tools.append(tool(f"t{i}", namespace=f"ns{i}", description=text))  # docstring == the text
        tools.append(
            tool(
                text or "empty",
                namespace=f"ns{i}",
                description=text,
                properties={
                    text: {"type": "object", "description": text, "properties": {"k": {"type": "string"}}},
                    **{k: {"enum": [text, k], "default": text, "description": text} for k in HOSTILE_KEYS},
                },
                output={"type": "object", "description": text, "properties": {text: {"const": text}}},
            )
        )
    docs = {f"ns{i}": text for i, text in enumerate(HOSTILE_TEXT)}
    return tools, docs


def _is_constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
    )


def _assert_annotation(node: ast.expr | None) -> None:
    """Names, subscripts, `|`, `None`, Literal values, and quoted forward
    references that are themselves such annotations: nothing that runs."""
    assert node is not None
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "Literal":
        values = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        assert all(_is_constant(v) for v in values), ast.dump(node)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        _assert_annotation(ast.parse(node.value, mode="eval").body)
    elif isinstance(node, ast.Constant):
        assert node.value is None
    elif isinstance(node, ast.Subscript):
        _assert_annotation(node.value)
        for item in node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]:
            _assert_annotation(item)
    elif isinstance(node, ast.BinOp):
        assert isinstance(node.op, ast.BitOr)
        _assert_annotation(node.left)
        _assert_annotation(node.right)
    else:
        assert isinstance(node, ast.Name), ast.dump(node)


def _assert_only_definitions(stubs: StubSet) -> None:
    """Both forms hold definitions only; the model's has no function bodies,
    the sandbox's forwards each call, on the same lines."""
    assert stubs.source.count("\n") == stubs.runtime_source.count("\n")
    for source, runtime in ((stubs.source, False), (stubs.runtime_source, True)):
        _assert_definitions(source, runtime=runtime)


def _assert_definitions(source: str, *, runtime: bool) -> None:
    assert not source.startswith("#")  # no header: every line is for the model
    tree = ast.parse(source)
    previous: ast.stmt | None = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.module == "typing" and previous is None
        elif isinstance(node, ast.ClassDef) and [ast.unparse(b) for b in node.bases] == ["TypedDict"]:
            assert not node.decorator_list
            assert [ast.unparse(k) for k in node.keywords] in ([], ["total=False"])
            body = node.body
            if isinstance(body[0], ast.Expr):
                assert isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
                body = body[1:]
            for field in body:
                assert isinstance(field, ast.AnnAssign) and field.value is None
                assert isinstance(field.target, ast.Name)
                _assert_annotation(field.annotation)
        elif isinstance(node, ast.ClassDef):
            assert not node.bases and not node.decorator_list and not node.keywords
            methods = node.body
            if isinstance(methods[0], ast.Expr):
                docstring, *methods = methods
                assert isinstance(docstring.value, ast.Constant)
            for method in methods:
                assert isinstance(method, ast.AsyncFunctionDef)
                assert [ast.unparse(d) for d in method.decorator_list] == ["staticmethod"]
                args = method.args
                assert not (args.posonlyargs or args.args or args.vararg or args.kwarg)
                for arg, default in zip(args.kwonlyargs, args.kw_defaults):
                    _assert_annotation(arg.annotation)
                    assert default is None or _is_constant(default)
                _assert_annotation(method.returns)
                doc, *ret = method.body
                assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                assert [ast.unparse(r) for r in ret] == (
                    [f"return await _call_tool({node.name!r}, {method.name!r}, locals())"] if runtime else []
                )
                assert not ret or ret[0].lineno == doc.end_lineno  # same lines in both forms
        elif isinstance(node, ast.Assign) and ast.unparse(node) == "Content = Any":  # the untyped result
            pass
        elif isinstance(node, ast.Assign):  # a TypedDict with keys that are not names
            [target] = node.targets
            call = node.value
            assert isinstance(target, ast.Name) and isinstance(call, ast.Call)
            assert ast.unparse(call.func) == "TypedDict"
            assert [ast.unparse(k) for k in call.keywords] in ([], ["total=False"])
            name, fields = call.args
            assert isinstance(name, ast.Constant) and name.value == target.id
            assert isinstance(fields, ast.Dict)
            for key, value in zip(fields.keys, fields.values):
                assert isinstance(key, ast.Constant) and isinstance(key.value, str)
                _assert_annotation(value)
        elif isinstance(node, ast.Expr):  # only the docstring of such a TypedDict
            assert isinstance(previous, ast.Assign) and ast.unparse(previous) != "Content = Any"
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        else:
            raise AssertionError(f"unexpected top-level statement: {ast.dump(node)[:200]}")
        previous = node


def test_hostile_tools_render_a_module_of_definitions_only_that_executes() -> None:
    tools, docs = _hostile_corpus()
    stubs = render_stubs(tools, namespace_docs=docs)
    _assert_only_definitions(stubs)
    namespace, calls = load(stubs)
    for (ns, name), binding in stubs.bindings.items():
        asyncio.run(getattr(namespace[ns], name)(**{py: None for py in binding.params}))
    assert len(calls) == len(tools)
    assert "import os" not in {ast.unparse(n) for n in ast.walk(ast.parse(stubs.source)) if isinstance(n, ast.stmt)}


def test_every_docstring_holds_exactly_the_cleaned_text() -> None:
    tools, docs = _hostile_corpus()
    stubs = render_stubs(tools, namespace_docs=docs)
    namespace, _ = load(stubs)
    for i, text in enumerate(HOSTILE_TEXT):
        expected = inspect.cleandoc(clean_text(text))
        ns = stubs.bindings[(f"ns{i}", f"t{i}")].namespace
        assert inspect.getdoc(namespace[ns]) == expected
        assert inspect.getdoc(getattr(namespace[ns], f"t{i}")) == expected
    typed_dict_docs: dict[str, str] = {}
    body = ast.parse(stubs.source).body
    for node, after in zip(body, [*body[1:], None]):
        if isinstance(node, ast.ClassDef) and node.bases:
            typed_dict_docs[node.name] = ast.get_docstring(node) or ""
        elif isinstance(node, ast.Assign) and isinstance(after, ast.Expr):  # functional form
            assert isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
            typed_dict_docs[ast.unparse(node.targets[0])] = inspect.cleandoc(after.value.value)
    assert len(typed_dict_docs) == 2 * len(HOSTILE_TEXT)  # an object parameter and a result each
    for (ns, name), binding in stubs.bindings.items():
        i = int(binding.tool.namespace[2:])
        signature = ast.parse(f"def f{signature_of(stubs.source, ns, name)}: pass").body[0]
        names = {n.id for n in ast.walk(signature) if isinstance(n, ast.Name)}
        used = names & typed_dict_docs.keys()
        assert len(used) == (0 if name == f"t{i}" else 2)
        for type_name in used:
            assert typed_dict_docs[type_name] == inspect.cleandoc(clean_text(HOSTILE_TEXT[i]))
    for invisible in ["\u200b", "\u200d", "\ufeff", "\U000e0072", "\x1b", "\x00", "\x07", "\u2028"]:
        assert invisible not in stubs.source


def test_text_that_is_only_invisible_characters_falls_back_to_a_plain_description() -> None:
    namespace, _ = load(render_stubs([tool("t", description="\u200b\U000e0041\x1b[0m")]))
    assert inspect.getdoc(namespace["tools"].t) == "Calls the tool 't'."


# -- garbage never crashes ---------------------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _cyclic() -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {}}
    schema["properties"]["self"] = schema
    return schema


def _laughs() -> dict[str, Any]:
    """Each definition is a union of ten of the next: 10**12 paths in a few lines."""
    defs: dict[str, Any] = {f"D{i}": {"anyOf": [{"$ref": f"#/$defs/D{i + 1}"}] * 10} for i in range(12)}
    defs["D12"] = {"type": "string"}
    return {"$ref": "#/$defs/D0", "$defs": defs}


GARBAGE: list[Any] = [
    None,
    1,
    "string",
    [1, 2],
    True,
    False,
    {"type": 5},
    {"type": ["x", 3]},
    {"type": {"a": 1}},
    {"enum": 3},
    {"enum": []},
    {"enum": [{"a": 1}, [1]]},
    {"const": float("nan")},
    {"const": 10**5000},
    {"anyOf": "x"},
    {"anyOf": []},
    {"anyOf": [None, 1]},
    {"oneOf": [{"$ref": 3}]},
    {"allOf": [{}, {}]},
    {"$ref": "#/$defs/Missing"},
    {"$ref": "https://example.com/schema.json"},
    {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}},
    {"$ref": "#/$defs/L", "$defs": {"L": {"type": "array", "items": {"$ref": "#/$defs/L"}}}},
    {"type": "array", "items": "x"},
    {"type": "array", "items": [1, {"type": "string"}]},
    {"type": "object", "properties": [1]},
    {"type": "object", "properties": {"a": None}, "required": "a"},
    {"type": "object", "properties": {1: {"type": "string"}}, "required": [1, None]},
    {"type": "object", "additionalProperties": "x"},
    {"properties": {"": {}}},
    {"type": "string", "description": 5, "default": object()},
    _deep(1000),
    _cyclic(),
    _laughs(),
    {"enum": [str(i) * 50 for i in range(10_000)]},
]


@pytest.mark.parametrize("schema", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_schemas_never_crash_and_give_a_module_that_executes(schema: Any) -> None:
    started = time.monotonic()
    tools = [
        tool(properties={"p": schema}, output=schema),
        Tool(
            name="root",
            fn=_noop,
            input_schema=schema if isinstance(schema, dict) else {"x": schema},
            output_schema=schema if isinstance(schema, dict) else None,
        ),
    ]
    stubs = render_stubs(tools)
    _assert_only_definitions(stubs)
    load(stubs)
    # A hang guard against exponential walks (the billion-laughs schema), not a
    # speed check: an exponential render takes hours, a linear one milliseconds.
    assert time.monotonic() - started < 60
    assert len(stubs.source) < 50_000


def test_huge_descriptions_and_names_are_cut() -> None:
    stubs = render_stubs([tool("n" * 100_000, description="d" * 1_000_000)])
    assert len(stubs.source) < 10_000


# -- type checking ------------------------------------------------------------------

_USAGE = """

async def _use() -> None:
    result = await filesystem.edit_file(path="a.txt", edits=[{"oldText": "a", "newText": "b"}],
                                        options={"backup": True})
    diff: str = result["diff"]
    root: Node = {"name": "r", "children": [{"name": "c", "parent": None}]}
    await tree.walk(root=root, label=True, weight=None)
    await filesystem.edit_file(path="a.txt", edits=[{"oldText": "a"}])  # type: ignore[typeddict-item]
    await filesystem.edit_file(path="a.txt", edits=[], encoding="ascii")  # type: ignore[arg-type]
    await tree.walk(root={"name": 1})  # type: ignore[typeddict-item]
"""


def test_rendered_stubs_type_check_with_mypy(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    garbage = [
        tool(f"g{i}", namespace="garbage", properties={"p": schema}, output=schema) for i, schema in enumerate(GARBAGE)
    ]
    stubs = render_stubs([EDIT_FILE, TREE, *_hostile_corpus()[0], *garbage])
    prelude = (
        "from typing import Any\n\n\nasync def _call_tool(ns: str, tool: str, args: dict[str, object]) -> Any: ...\n"
    )
    path = tmp_path / "stubs_check.py"
    path.write_text(prelude + stubs.source + _USAGE, encoding="utf-8")
    # The ignores above must each be needed (--warn-unused-ignores): wrong
    # calls are errors, so the types are precise, not merely valid.
    cache = Path(tempfile.gettempdir()) / "codemode-test-mypy-cache"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-warn-return-any",
            "--warn-unused-ignores",
            # the model's form has no function bodies, as in a .pyi
            "--disable-error-code",
            "empty-body",
            "--no-error-summary",
            "--cache-dir",
            str(cache),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
