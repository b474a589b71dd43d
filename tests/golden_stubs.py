"""Golden stubs: what a model reads for each public reference server, kept in
`stubs/` so a change to the generator (or a server) shows up as a diff.

    python -m tests.golden_stubs           # regenerate stubs/*.py
    python -m tests.golden_stubs --check   # exit 1 on drift (the test suite runs this)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio

from codemode import CodeMode, parse_config

STUBS = Path(__file__).resolve().parent.parent / "stubs"


async def render_all() -> dict[str, str]:
    """{server: file text}, one server at a time so each file stands alone: the
    stubs a model reads, under a header that names their template and input."""
    from tests.test_reference_servers import reference_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "files"
        root.mkdir()
        servers = reference_config(root)["mcpServers"]
        out = {}
        for name, entry in servers.items():
            async with CodeMode(config=parse_config({"mcpServers": {name: entry}})) as cm:
                if cm.failures:
                    raise RuntimeError(f"{name}: {cm.failures[name].message}")
                stubs = cm.sandbox.stubs(cm.tools())
                assert stubs.source == cm.stubs()  # what a model reads, under the file's header
                out[name] = stubs.header + stubs.source
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden_stubs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on drift")
    args = parser.parse_args(argv)
    rendered = anyio.run(render_all)
    drift = []
    for name, source in rendered.items():
        path = STUBS / f"{name}.py"
        if args.check:
            if not path.is_file() or path.read_text() != source:
                drift.append(path.name)
        else:
            STUBS.mkdir(exist_ok=True)
            path.write_text(source)
            print(f"wrote {path}", file=sys.stderr)
    if drift:
        print(
            f"stubs drifted: {', '.join(drift)}; run `python -m tests.golden_stubs` and review the diff",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
