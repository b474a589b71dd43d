from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# One guest build for the whole run, kept out of the user's cache directory.
os.environ.setdefault("CODEMODE_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "codemode"))
# Upstream servers' stderr logs go to a scratch directory, not the user's.
os.environ.setdefault("CODEMODE_LOG_DIR", tempfile.mkdtemp(prefix="codemode-test-logs-"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["wasm", "restricted"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Semantics hold on both backends."""
    yield request.param
