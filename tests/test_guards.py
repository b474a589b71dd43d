"""The guard both network surfaces share (`codemode._serve.guards`): Host, Origin,
token and body, with one problem shape, on a real uvicorn server."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx
import pytest

from codemode import HttpSettings
from codemode._serve.guards import origin_allowed, read_tokens_file
from tests.test_http import assert_problem, serving

pytestmark = pytest.mark.anyio


async def raw_request(client: httpx.AsyncClient, data: bytes, *, read_timeout: float = 10) -> bytes:
    """Send bytes as they are (httpx always adds a Host) and read the answer until the server closes."""
    port = client.base_url.port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        with anyio.fail_after(read_timeout + 5):
            while chunk := await anyio.to_thread.run_sync(sock.recv, 65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def test_a_request_without_host_is_refused() -> None:
    async with serving() as client:
        # HTTP/1.0 lets a client leave Host out; the guard does not.
        answer = await raw_request(client, b"GET /v1/servers HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"application/problem+json" in head and b'"missing_host"' in body


async def test_a_stalled_body_is_answered_408_and_the_connection_freed() -> None:
    async with serving(body_timeout_s=0.5) as client:
        # Promises 1,000 bytes, sends 10, then waits: the connection must not be held.
        request = (
            b"POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"code": "'
        )
        answer = await raw_request(client, request)
        after = await client.post("/v1/execute", json={"code": "1 + 1"})
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in body
    assert after.json()["value"] == 2


async def test_docs_and_schema_need_the_token_too() -> None:
    async with serving(token="s3cret") as client:
        docs = await client.get("/docs")
        schema = await client.get("/openapi.json")
        redoc = await client.get("/redoc")
        health = await client.get("/healthz")
        authorized = await client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"})
    for response in (docs, schema, redoc):
        assert_problem(response, 401, "unauthorized")
    assert health.status_code == 200 and authorized.status_code == 200


async def test_each_token_of_a_tokens_file_is_a_client(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("\ufeff# team tokens\nalpha-token alice\nbeta-token bob  # the other one\n")
    tokens = read_tokens_file(str(path))
    assert tokens == {"alpha-token": "alice", "beta-token": "bob"}
    async with serving(tokens=tokens) as client:
        alice = await client.post("/v1/execute", json={"code": "1"}, headers={"Authorization": "Bearer alpha-token"})
        bob = await client.post("/v1/execute", json={"code": "2"}, headers={"Authorization": "Bearer beta-token"})
        nobody = await client.post("/v1/execute", json={"code": "3"}, headers={"Authorization": "Bearer alpha"})
    assert alice.json()["value"] == 1 and bob.json()["value"] == 2
    assert_problem(nobody, 401, "unauthorized")


def test_a_bad_tokens_file_is_a_clear_error(tmp_path: Path) -> None:
    empty, twice = tmp_path / "empty", tmp_path / "twice"
    empty.write_text("# nothing\n")
    twice.write_text("t one\nt two\n")
    for path, words in [(empty, "holds no token"), (twice, "already given"), (tmp_path / "missing", "cannot read")]:
        with pytest.raises(ValueError, match=words):
            read_tokens_file(str(path))


def test_a_tokens_file_alone_allows_a_public_bind() -> None:
    assert not HttpSettings(host="0.0.0.0", tokens={"t": "alice"}).problems()


def test_origins_loopback_exact_any_port_and_star() -> None:
    allowed = ("https://app.example", "http://dev.example:*")
    assert origin_allowed("http://localhost:5173", allowed)
    assert origin_allowed("https://[::1]", allowed)
    assert origin_allowed("https://app.example/", allowed)
    assert origin_allowed("http://dev.example:8080", allowed)
    assert not origin_allowed("http://dev.example.evil:8080", allowed)
    assert not origin_allowed("http://app.example", allowed)  # another scheme is another origin
    assert not origin_allowed("null", allowed)
    assert origin_allowed("https://anything.example", ("*",))
