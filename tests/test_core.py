"""The Python API, used the way an agent loop would: discover, read stubs, execute."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from codemode import CodeMode, Tool, ToolNotFound
from codemode._demo import demo_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(demo_config()))
    return path


async def test_an_agent_loop_discovers_reads_stubs_and_executes(config_file: Path) -> None:
    async with CodeMode.from_config(config_file, stubs_budget=0) as cm:
        prompt = cm.system_prompt()
        assert "weather (2 tools)" in prompt and "notes (2 tools)" in prompt and "await" in prompt
        hits = cm.search_tools("save a note", limit=3)
        assert hits[0].qualified_name == "notes.add_note"
        assert hits[0].line.startswith("notes.add_note(")
        stubs = cm.stubs([hits[0].qualified_name, "weather.forecast"])
        ast.parse(stubs)
        assert "async def add_note" in stubs and "async def forecast" in stubs and "list_notes" not in stubs
        code = (
            "f = await weather.forecast(city='Oslo', days=2)\n"
            "n = await notes.add_note(text=str(f['highs_c']))\n"
            "{'note': n, 'notes': await notes.list_notes()}"
        )
        result = await cm.execute(code)
        assert result.ok, result.error
        assert result.value == {"note": 1, "notes": ["[-2.0, 0.0]"]}
        assert (config_file.parent / "codemode.lock.json").is_file(), "definitions were pinned on first use"


async def test_tool_definitions_are_valid_for_both_apis() -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    cm = CodeMode(
        tools=[
            Tool(
                name="add",
                fn=add,
                input_schema={
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            )
        ]
    )
    async with cm:
        openai = json.loads(json.dumps(cm.tool_definition("openai")))
        assert openai["type"] == "function" and openai["function"]["name"] == "execute_code"
        assert openai["function"]["parameters"]["required"] == ["code"]
        anthropic = json.loads(json.dumps(cm.tool_definition("anthropic")))
        assert (
            anthropic["name"] == "execute_code" and anthropic["input_schema"]["properties"]["code"]["type"] == "string"
        )
        assert "asyncio.gather" in anthropic["description"]
        # With the system prompt, which carries the contract, it need not be said twice.
        short = cm.tool_definition("anthropic", contract=False)["description"]
        assert "asyncio.gather" not in short and "asyncio.gather" in cm.system_prompt()
        with pytest.raises(ValueError):
            cm.tool_definition("gemini")  # type: ignore[arg-type]
        assert (await cm.execute("await tools.add(a=2, b=40)")).value == 42


async def test_unknown_stub_names_suggest_close_matches() -> None:
    async def noop() -> None:
        return None

    async with CodeMode(tools=[Tool(name="read_file", fn=noop)]) as cm:
        with pytest.raises(ToolNotFound) as info:
            cm.stubs(["tools.read_fil"])
        assert info.value.code == "tool_not_found"
        assert "tools.read_file" in str(info.value)


async def test_only_the_namespaces_a_program_names_are_loaded_into_the_run(config_file: Path) -> None:
    async with CodeMode.from_config(config_file) as cm:
        names = "sorted(k for k in globals() if not k.startswith('_'))"
        result = await cm.execute(names)
        assert "weather" not in result.value and "notes" not in result.value
        result = await cm.execute(f"n = await notes.list_notes()\n{names}")
        assert "notes" in result.value and "weather" not in result.value


async def test_observed_shapes_type_tools_that_declare_no_output(tmp_path: Path) -> None:
    async def lookup(user: str) -> dict[str, object]:
        return {"user": user, "age": len(user), "tags": ["a"]}

    tool = Tool(
        name="lookup",
        fn=lookup,
        input_schema={"type": "object", "properties": {"user": {"type": "string"}}, "required": ["user"]},
    )
    lock = tmp_path / "codemode.lock.json"
    async with CodeMode(tools=[tool], lock_file=lock, observe_shapes=True) as cm:
        assert "-> Content" in cm.stubs(["tools.lookup"])
        assert (await cm.execute("await tools.lookup(user='ada')")).ok
        stub = cm.stubs(["tools.lookup"])
        assert "-> Content" not in stub and "age: int" in stub and "observed over 1 call" in stub
    assert (tmp_path / "codemode.observed.json").is_file()
    # The pinned definition is the declared one, not the observed one.
    async with CodeMode(tools=[tool], lock_file=lock, observe_shapes=True) as again:
        assert "age: int" in again.stubs(["tools.lookup"])
        assert (await again.execute("(await tools.lookup(user='x'))['age']")).value == 1


async def test_an_untyped_tool_returns_content_and_the_contract_says_what_that_is() -> None:
    from codemode import parse_config
    from tests.fixtures.helpers import stdio_entry

    async with CodeMode(config=parse_config({"mcpServers": {"demo": stdio_entry()}})) as cm:
        stubs = cm.stubs(["demo.json_text", "demo.two_texts", "demo.weather"])
        module = ast.parse(stubs)
        alias = next(i for i, n in enumerate(module.body) if isinstance(n, ast.Assign))
        assert ast.unparse(module.body[alias]) == "Content = Any"
        # A bare alias: the contract, which a model reads with any stubs, says what it is.
        assert not isinstance(module.body[alias + 1], ast.Expr)
        assert "def json_text() -> Content:" in stubs and "def two_texts() -> Content:" in stubs
        assert "def weather(*, city: str) -> Content" not in stubs  # it declares an output schema
        # What the alias and the contract promise is what comes back.
        result = await cm.execute("[await demo.json_text(), await demo.two_texts()]")
        assert result.ok, result.error
        assert result.value == [{"items": [1, 2, 3]}, ["first", "second"]]
        for text in (cm.system_prompt(), cm.tool_definition("anthropic")["description"]):
            assert "`-> Content` means no declared type" in text and "JSON object or array" in text


async def test_the_contract_leaves_out_the_content_rule_when_every_inline_tool_is_typed() -> None:
    async def double(n: int) -> dict[str, int]:
        return {"n": 2 * n}

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    typed = Tool(name="double", fn=double, input_schema=schema, output_schema=schema)
    async with CodeMode(tools=[typed]) as cm:
        for text in (cm.system_prompt(), cm.tool_definition("anthropic")["description"]):
            assert "async def double(*, n: int) -> " in text and "Content" not in text
            assert "asyncio.gather" in text and "ToolError" in text  # the rest of the contract stays
    # Stubs not inline: which tools the model will read is unknown, so the rule stays.
    async with CodeMode(tools=[typed], stubs_budget=0) as cm:
        assert "`-> Content` means no declared type" in cm.system_prompt()


async def test_a_toolset_within_the_stubs_budget_goes_into_the_prompt_and_the_tool_definition(
    config_file: Path,
) -> None:
    async with CodeMode.from_config(config_file) as cm:
        stubs = cm.stubs()
        assert cm.inline_stubs() == stubs
        for text in (cm.system_prompt(), cm.tool_definition("openai")["function"]["description"]):
            assert stubs.rstrip() in text and "Stubs of every tool:" in text
            assert "search_tools" not in text
        # With the system prompt, the tool definition need not repeat them.
        assert "async def" not in cm.tool_definition("anthropic", contract=False)["description"]
    # A budget the stubs do not fit gives the index, and search then brings stubs.
    async with CodeMode.from_config(config_file, stubs_budget=50) as cm:
        assert cm.inline_stubs() is None
        prompt = cm.system_prompt()
        assert "weather (2 tools)" in prompt and "async def" not in prompt
        assert "async def" not in cm.tool_definition("openai")["function"]["description"]
        hits = cm.search_tools("forecast weather", limit=5, with_stubs=True)
        assert hits[0].qualified_name == "weather.forecast" and hits.stubs is not None
        assert "async def forecast" in hits.stubs
        assert hits.stubs == cm.stubs([h.qualified_name for h in hits[:3]])
        assert cm.search_tools("forecast weather").stubs is None


async def test_the_stubs_budget_comes_from_the_environment_when_not_given(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codemode import ConfigError

    monkeypatch.setenv("CODEMODE_STUBS_BUDGET", "0")
    async with CodeMode.from_config(config_file) as cm:
        assert cm.stubs_budget == 0 and "weather (2 tools)" in cm.system_prompt()
    assert CodeMode(stubs_budget=123).stubs_budget == 123
    for bad in ("lots", "-1"):
        monkeypatch.setenv("CODEMODE_STUBS_BUDGET", bad)
        with pytest.raises(ConfigError) as info:
            CodeMode()
        assert info.value.code == "config_error"
    with pytest.raises(ConfigError):
        CodeMode(stubs_budget=-5)
