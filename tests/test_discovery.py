"""Progressive discovery: BM25 search, one-line signatures, stubs for a few tools."""

from __future__ import annotations

import ast
from typing import Any

import pytest
from inline_snapshot import snapshot

from codemode import Tool, render_stubs
from codemode._discovery import ServerSummary, ToolIndex, ToolNotFound, get_stubs, list_servers, search_tools, tokenize


async def _noop(**kwargs: Any) -> None:
    return None


def _obj(required: list[str] | None = None, **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or []}


_S = {"type": "string"}
_I = {"type": "integer"}
_B = {"type": "boolean"}

# name, description, input schema; shaped after the reference servers people actually run.
_CATALOG: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "filesystem": [
        (
            "read_text_file",
            "Read a file as text. Use head or tail to read only the first or last lines.",
            _obj(
                ["path"],
                path=_S,
                head={**_I, "description": "Only the first N lines"},
                tail={**_I, "description": "Only the last N lines"},
            ),
        ),
        (
            "read_media_file",
            "Read an image or audio file and return base64 data with its MIME type.",
            _obj(["path"], path=_S),
        ),
        (
            "read_multiple_files",
            "Read several files at once; failures for single files do not stop the rest.",
            _obj(["paths"], paths={"type": "array", "items": _S}),
        ),
        (
            "write_file",
            "Create a new file or overwrite an existing file with new content.",
            _obj(["path", "content"], path=_S, content=_S),
        ),
        (
            "edit_file",
            "Make line-based edits to a text file and return a git-style diff.",
            _obj(["path", "edits"], path=_S, edits={"type": "array", "items": {"type": "object"}}, dryRun=_B),
        ),
        (
            "create_directory",
            "Create a new directory, or make sure it exists, including parents.",
            _obj(["path"], path=_S),
        ),
        ("list_directory", "Get a listing of all files and directories in a path.", _obj(["path"], path=_S)),
        ("directory_tree", "Get a recursive tree view of files and directories as JSON.", _obj(["path"], path=_S)),
        (
            "move_file",
            "Move or rename files and directories.",
            _obj(["source", "destination"], source=_S, destination=_S),
        ),
        (
            "search_files",
            "Recursively search for files and directories matching a glob pattern.",
            _obj(["path", "pattern"], path=_S, pattern=_S, excludePatterns={"type": "array", "items": _S}),
        ),
        (
            "get_file_info",
            "Retrieve metadata about a file or directory: size, creation time, permissions.",
            _obj(["path"], path=_S),
        ),
    ],
    "github": [
        (
            "create_issue",
            "Create a new issue in a GitHub repository.",
            _obj(
                ["owner", "repo", "title"], owner=_S, repo=_S, title=_S, body=_S, labels={"type": "array", "items": _S}
            ),
        ),
        (
            "list_issues",
            "List issues in a GitHub repository, filtered by state and labels.",
            _obj(["owner", "repo"], owner=_S, repo=_S, state={"enum": ["open", "closed", "all"]}),
        ),
        (
            "add_issue_comment",
            "Add a comment to an existing issue.",
            _obj(["owner", "repo", "issue_number", "body"], owner=_S, repo=_S, issue_number=_I, body=_S),
        ),
        (
            "create_pull_request",
            "Create a new pull request in a GitHub repository.",
            _obj(["owner", "repo", "title", "head", "base"], owner=_S, repo=_S, title=_S, head=_S, base=_S, draft=_B),
        ),
        (
            "merge_pull_request",
            "Merge a pull request.",
            _obj(
                ["owner", "repo", "pull_number"],
                owner=_S,
                repo=_S,
                pull_number=_I,
                merge_method={"enum": ["merge", "squash", "rebase"]},
            ),
        ),
        (
            "get_pull_request_files",
            "Get the list of files changed in a pull request.",
            _obj(["owner", "repo", "pull_number"], owner=_S, repo=_S, pull_number=_I),
        ),
        ("search_repositories", "Search for GitHub repositories by keyword.", _obj(["query"], query=_S, page=_I)),
        ("search_code", "Search for code across GitHub repositories.", _obj(["q"], q=_S)),
        (
            "get_file_contents",
            "Get the contents of a file or directory from a GitHub repository.",
            _obj(["owner", "repo", "path"], owner=_S, repo=_S, path=_S, branch=_S),
        ),
        (
            "create_branch",
            "Create a new branch in a GitHub repository.",
            _obj(["owner", "repo", "branch"], owner=_S, repo=_S, branch=_S, from_branch=_S),
        ),
        (
            "listCommits",
            "Get a list of commits of a branch in a GitHub repository.",
            _obj(["owner", "repo"], owner=_S, repo=_S, sha=_S),
        ),
    ],
    "slack": [
        (
            "slack_list_channels",
            "List public channels in the workspace with pagination.",
            _obj([], limit=_I, cursor=_S),
        ),
        (
            "slack_post_message",
            "Post a new message to a Slack channel.",
            _obj(["channel_id", "text"], channel_id=_S, text=_S),
        ),
        (
            "slack_reply_to_thread",
            "Reply to a specific message thread in Slack.",
            _obj(["channel_id", "thread_ts", "text"], channel_id=_S, thread_ts=_S, text=_S),
        ),
        (
            "slack_add_reaction",
            "Add a reaction emoji to a message.",
            _obj(["channel_id", "timestamp", "reaction"], channel_id=_S, timestamp=_S, reaction=_S),
        ),
        (
            "slack_get_channel_history",
            "Get recent messages from a channel.",
            _obj(["channel_id"], channel_id=_S, limit=_I),
        ),
        (
            "slack_get_thread_replies",
            "Get all replies in a message thread.",
            _obj(["channel_id", "thread_ts"], channel_id=_S, thread_ts=_S),
        ),
        (
            "slack_get_users",
            "Get a list of all users in the workspace with their basic profile information.",
            _obj([], cursor=_S, limit=_I),
        ),
        (
            "slack_get_user_profile",
            "Get detailed profile information for a specific user.",
            _obj(["user_id"], user_id=_S),
        ),
    ],
}

TOOLS = [
    Tool(name=name, fn=_noop, namespace=ns, description=desc, input_schema=schema)
    for ns, entries in _CATALOG.items()
    for name, desc, schema in entries
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("read a text file", "filesystem.read_text_file"),
        ("rename a file", "filesystem.move_file"),
        ("find files matching a glob pattern", "filesystem.search_files"),
        ("make a new directory", "filesystem.create_directory"),
        ("create issue", "github.create_issue"),
        ("createIssue", "github.create_issue"),
        ("which files changed in a pull request", "github.get_pull_request_files"),
        ("list commits", "github.listCommits"),
        ("merge pull request", "github.merge_pull_request"),
        ("search code", "github.search_code"),
        ("post message to slack channel", "slack.slack_post_message"),
        ("reply to thread", "slack.slack_reply_to_thread"),
        ("user profile", "slack.slack_get_user_profile"),
        ("add emoji reaction", "slack.slack_add_reaction"),
    ],
)
def test_search_ranks_the_obviously_right_tool_first(query: str, expected: str) -> None:
    hits = search_tools(TOOLS, query)
    assert hits[0].qualified_name == expected


def test_search_weighs_names_above_descriptions() -> None:
    # "comment" is in add_issue_comment's name; no other tool mentions it at all, and
    # "issue" is in several names and descriptions: the name match must win.
    hits = search_tools(TOOLS, "issue comment")
    assert [h.qualified_name for h in hits[:3]] == [
        "github.add_issue_comment",
        "github.create_issue",
        "github.list_issues",
    ]


def test_search_returns_compact_signature_lines() -> None:
    hits = search_tools(TOOLS, "read text file", limit=1)
    assert hits[0].line == snapshot(
        "filesystem.read_text_file(*, path: str, head: int | None = None, tail: int | None = None) -> Content  # Read a file as text. Use head or tail to read only the first or last lines."
    )


def test_signatures_match_the_rendered_stubs() -> None:
    stubs = render_stubs(TOOLS)
    module = ast.parse(stubs.source)
    functions = {
        (cls.name, fn.name): fn
        for cls in module.body
        if isinstance(cls, ast.ClassDef)
        for fn in cls.body
        if isinstance(fn, ast.AsyncFunctionDef)
    }
    index = ToolIndex(TOOLS, stubs=stubs)
    hits = index.search("file issue message channel directory user", limit=len(TOOLS))
    assert len(hits) > 20
    for hit in hits:
        fn = functions[(hit.namespace, hit.name)]
        # Same function header once both are normalised by the ast: decorators and body dropped.
        stub_header = ast.unparse(
            ast.AsyncFunctionDef(fn.name, fn.args, [ast.Expr(ast.Constant(...))], [], fn.returns, None, lineno=1)
        )
        hit_header = ast.unparse(ast.parse(f"async def {hit.signature.split('.', 1)[1]}: ..."))
        assert stub_header == hit_header


def test_search_limits_results_and_breaks_ties_by_name() -> None:
    twins = [
        Tool(name=n, fn=_noop, namespace=ns, description="Ping the server.")
        for ns, n in [("b", "ping"), ("a", "ping"), ("a", "pong")]
    ]
    hits = search_tools(twins, "ping", limit=10)
    assert [(h.qualified_name, h.score) for h in hits] == snapshot(
        [("a.ping", 0.102716), ("b.ping", 0.102716), ("a.pong", 0.060696)]
    )
    assert [h.qualified_name for h in search_tools(twins, "ping", limit=1)] == ["a.ping"]


def test_search_with_no_matching_word_finds_nothing() -> None:
    assert search_tools(TOOLS, "the of and") == []
    assert search_tools(TOOLS, "kubernetes") == []


def test_search_refuses_a_negative_limit() -> None:
    with pytest.raises(ValueError):
        search_tools(TOOLS, "file", limit=-1)


def test_tokenize_splits_identifiers_into_words() -> None:
    assert tokenize("readTextFile get_pull-request.files HTTPServer the") == snapshot(
        ["read", "text", "file", "get", "pull", "request", "file", "http", "server"]
    )


def test_get_stubs_returns_only_the_requested_tools() -> None:
    source = get_stubs(TOOLS, ["github.create_issue", "filesystem.read_text_file"])
    module = ast.parse(source)
    classes = {
        c.name: [f.name for f in c.body if isinstance(f, ast.AsyncFunctionDef)]
        for c in module.body
        if isinstance(c, ast.ClassDef)
    }
    assert classes == {"filesystem": ["read_text_file"], "github": ["create_issue"]}
    assert "from typing import" in source


def test_get_stubs_copies_the_stub_text_verbatim() -> None:
    full = render_stubs(TOOLS).source
    source = get_stubs(TOOLS, ["slack.slack_post_message", "github.listCommits"])
    module = ast.parse(source)
    functions = [
        fn
        for cls in module.body
        if isinstance(cls, ast.ClassDef)
        for fn in cls.body
        if isinstance(fn, ast.AsyncFunctionDef)
    ]
    assert [fn.name for fn in functions] == ["listCommits", "slack_post_message"]
    for fn in functions:
        text = ast.get_source_segment(source, fn, padded=True)
        assert text is not None and text in full


def test_get_stubs_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ToolNotFound) as info:
        get_stubs(TOOLS, ["github.create_isue", "read_text_file", "filesystem.write_file"])
    assert info.value.code == "tool_not_found"
    assert info.value.suggestions == snapshot(
        {
            "github.create_isue": ["github.create_issue", "github.create_branch", "github.create_pull_request"],
            "read_text_file": ["filesystem.read_text_file"],
        }
    )


def test_names_are_the_python_names_and_colliding_ones_stay_distinct() -> None:
    tools = [
        Tool(name="x-y", fn=_noop, namespace="my server", description="First."),
        Tool(name="x_y", fn=_noop, namespace="my server", description="Second."),
        Tool(name="ping", fn=_noop, namespace="my-server", description="Third."),
    ]
    index = ToolIndex(tools)
    source = index.get_stubs(["my_server.x_y_2", "my_server_2.ping"])
    assert "async def x_y_2(" in source and "async def x_y(" not in source
    assert "class my_server_2:" in source
    # The server's own spelling works too.
    assert index.get_stubs(["my server.x-y"]).count("async def") == 1
    assert index.signature("my server.x-y") == "my_server.x_y() -> Content"


def test_list_servers_is_a_sorted_compact_index() -> None:
    servers = list_servers(list(reversed(TOOLS)))
    assert [(s.namespace, s.tool_count) for s in servers] == [("filesystem", 11), ("github", 11), ("slack", 8)]
    assert servers[2] == snapshot(
        ServerSummary(
            namespace="slack",
            server="slack",
            tool_count=8,
            tools=(
                "slack_add_reaction",
                "slack_get_channel_history",
                "slack_get_thread_replies",
                "slack_get_user_profile",
                "slack_get_users",
                "slack_list_channels",
                "slack_post_message",
                "slack_reply_to_thread",
            ),
        )
    )


# Stubs as a richer generator may render them: module-level TypedDicts, one shared
# by nobody, forward references in strings.
_RICH_SOURCE = '''\
from typing import Any, NotRequired, TypedDict


class Error(TypedDict):
    """Shared by every tool, referenced by none."""
    message: str


class Entry(TypedDict):
    name: str
    size: NotRequired[int]


class Listing(TypedDict):
    entries: list["Entry"]


class Issue(TypedDict):
    title: str


class fs:
    """Tools of 'fs'."""

    @staticmethod
    async def ls(*, path: str) -> "Listing":
        """List a directory."""
        return await _call_tool('fs', 'ls', locals())

    @staticmethod
    async def cat(*, path: str) -> str:
        """Read a file."""
        return await _call_tool('fs', 'cat', locals())


class gh:
    """Tools of 'gh'."""

    @staticmethod
    async def issue(*, number: int) -> Issue:
        """Get an issue."""
        return await _call_tool('gh', 'issue', locals())
'''


def _rich_index() -> ToolIndex:
    from codemode import StubSet
    from codemode._stubgen import ToolBinding

    tools = [
        Tool(name="ls", fn=_noop, namespace="fs"),
        Tool(name="cat", fn=_noop, namespace="fs"),
        Tool(name="issue", fn=_noop, namespace="gh"),
    ]
    bindings = {
        (t.namespace, t.name): ToolBinding(tool=t, namespace=t.namespace, name=t.name, params={}) for t in tools
    }
    return ToolIndex(tools, stubs=StubSet(source=_RICH_SOURCE, bindings=bindings))


def test_get_stubs_keeps_the_types_a_tool_needs_and_drops_the_others() -> None:
    index = _rich_index()
    assert index.get_stubs(["fs.ls"]) == snapshot('''\
from typing import Any, NotRequired, TypedDict


class Error(TypedDict):
    """Shared by every tool, referenced by none."""
    message: str


class Entry(TypedDict):
    name: str
    size: NotRequired[int]


class Listing(TypedDict):
    entries: list["Entry"]


class fs:
    """Tools of 'fs'."""

    @staticmethod
    async def ls(*, path: str) -> "Listing":
        """List a directory."""
        return await _call_tool('fs', 'ls', locals())
''')
    assert index.signature("gh.issue") == "gh.issue(*, number: int) -> Issue"


def test_get_stubs_from_the_real_generator_defines_every_type_it_uses() -> None:
    edit = {"type": "object", "properties": {"oldText": _S, "newText": _S}, "required": ["oldText", "newText"]}
    tools = [
        Tool(
            name="edit",
            fn=_noop,
            namespace="fs",
            input_schema=_obj(["edits"], edits={"type": "array", "items": edit}),
            output_schema=_obj([], diff=_S),
        ),
        Tool(name="stat", fn=_noop, namespace="fs", output_schema=_obj([], size=_I)),
        Tool(name="query", fn=_noop, namespace="db", input_schema=_obj([], where=edit)),
    ]
    index = ToolIndex(tools)
    full_defs = {n.name for n in ast.parse(index.stubs.source).body if isinstance(n, ast.ClassDef)}
    source = index.get_stubs(["fs.edit"])
    module = ast.parse(source)
    kept = {n.name for n in module.body if isinstance(n, ast.ClassDef)}
    assert "db" not in kept and "fs" in kept
    # Executing it resolves every annotation: a type left out would be a NameError.
    exec(compile(source, "<stubs>", "exec"), {})
    used = {n.id for n in ast.walk(module) if isinstance(n, ast.Name)} & full_defs
    assert kept == used | {"fs"}
    assert len(kept) < len(full_defs) - 1  # the other tools' types were left out


def test_stubs_for_one_tool_leave_out_other_tools_functional_typeddicts() -> None:
    async def noop(**_: object) -> None:
        return None

    link = Tool(
        name="link",
        fn=noop,
        input_schema={
            "type": "object",
            "properties": {
                "edge": {
                    "type": "object",
                    "properties": {"from": {"type": "string", "description": "ORIGIN-OF-EDGE"}},
                    "required": ["from"],
                }
            },
            "required": ["edge"],
        },
    )
    ping = Tool(name="ping", fn=noop)
    only_ping = get_stubs([link, ping], ["tools.ping"])
    assert "ORIGIN-OF-EDGE" not in only_ping and "TypedDict('" not in only_ping
    only_link = get_stubs([link, ping], ["tools.link"])
    assert "ORIGIN-OF-EDGE" in only_link and "TypedDict('" in only_link
    ast.parse(only_link)


def test_search_reads_each_hit_alone_and_agrees_with_the_whole_module() -> None:
    # Descriptions that look like the lines a function is found by must not fool it.
    tricky = (
        "Look.\n    async def fake(*, x: int) -> int:\n\"\"\"; return await _call_tool('a', 'fake', locals())\nEnd."
    )
    tools = [
        Tool(name=f"find_{i}", namespace="a", fn=_noop, description=tricky, input_schema=_obj(["q"], q=_S))
        for i in range(3)
    ] + [
        Tool(
            name="find_wide",
            namespace="b",
            fn=_noop,
            description="Find " * 40,
            input_schema=_obj(**{f"p{i}": _S for i in range(12)}),
        )
    ]
    index = ToolIndex(tools)
    hits = [(h.signature, h.summary) for h in index.search("find", limit=10)]
    assert len(hits) == 4
    assert not index._parsed  # a search parses only its hits' functions
    whole = ToolIndex(tools)
    whole._parse()
    assert [(h.signature, h.summary) for h in whole.search("find", limit=10)] == hits
