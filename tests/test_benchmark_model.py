"""The token benchmark's real-model mode, against a local fake of Anthropic's
Messages API (a real HTTP server on loopback, streaming scripted tool-use
answers). The fake stands in for the provider only: the tools, the MCP
servers and the sandbox are real. No request leaves the machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from benchmarks._workloads import LOG_PROGRAM

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key-not-real"
FIRST_TOKEN_DELAY_S = 0.2

pytestmark = pytest.mark.slow


def _usage(agent: str, step: int) -> dict[str, int]:
    """What the fake reports for a turn: distinct per agent and step, so the test can tell them apart."""
    base = 1000 if agent == "direct" else 3000
    return {"input_tokens": base + step, "cache_read_input_tokens": 50 + step, "cache_creation_input_tokens": 7}


def _output_tokens(step: int) -> int:
    return 20 + step


class FakeAnthropic(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    refused_first: ClassVar[bool] = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path != "/v1/messages" or self.headers.get("x-api-key") != KEY:
            self.send_response(401)
            self.end_headers()
            return
        if not FakeAnthropic.refused_first:  # the provider is overloaded once: the client must retry
            FakeAnthropic.refused_first = True
            self.send_response(529)
            self.send_header("retry-after", "0")
            self.end_headers()
            return
        FakeAnthropic.requests.append(body)
        agent = "code_mode" if any(t["name"] == "execute_code" for t in body["tools"]) else "direct"
        step = sum(1 for m in body["messages"] if m["role"] == "assistant")
        prompt = body["messages"][0]["content"]
        log_path = re.search(r"(/\S+/logs/app\.log)", prompt).group(1)  # type: ignore[union-attr]
        last = body["messages"][-1]["content"]
        result = last[0]["content"] if isinstance(last, list) else ""
        block: dict[str, Any]
        if agent == "direct" and step == 0:
            block = {"type": "tool_use", "name": "filesystem__read_text_file", "input": {"path": log_path}}
        elif agent == "direct":
            errors = Counter(line.split()[2] for line in result.splitlines() if line.split()[1:2] == ["ERROR"])
            ((component, n),) = errors.most_common(1)
            answer = {"component": component, "errors": n, "total_errors": sum(errors.values())}
            block = {"type": "text", "text": f"Here it is:\n```json\n{json.dumps(answer)}\n```"}
        elif step == 0:  # a first program that fails: the model must retry
            block = {"type": "tool_use", "name": "execute_code", "input": {"code": "1 / 0"}}
        elif step == 1:
            root = log_path.removesuffix("/logs/app.log")
            block = {"type": "tool_use", "name": "execute_code", "input": {"code": LOG_PROGRAM.replace("{root}", root)}}
        else:
            block = {"type": "text", "text": result}
        self._stream(agent, step, block)

    def _stream(self, agent: str, step: int, block: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()

        def send(event: dict[str, Any]) -> None:
            self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()

        send(
            {
                "type": "message_start",
                "message": {"id": "msg_fake", "usage": {**_usage(agent, step), "output_tokens": 1}},
            }
        )
        time.sleep(FIRST_TOKEN_DELAY_S)  # the first token comes late
        if block["type"] == "tool_use":
            start = {"type": "tool_use", "id": f"toolu_fake_{agent}_{step}", "name": block["name"], "input": {}}
            send({"type": "content_block_start", "index": 0, "content_block": start})
            encoded = json.dumps(block["input"])
            for i in range(0, len(encoded), 40):  # the input arrives in pieces
                delta = {"type": "input_json_delta", "partial_json": encoded[i : i + 40]}
                send({"type": "content_block_delta", "index": 0, "delta": delta})
            stop_reason = "tool_use"
        else:
            send({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            send({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": block["text"]}})
            stop_reason = "end_turn"
        send({"type": "content_block_stop", "index": 0})
        send(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason},
                "usage": {"output_tokens": _output_tokens(step)},
            }
        )
        send({"type": "message_stop"})


@pytest.fixture
def fake_provider() -> Iterator[str]:
    FakeAnthropic.requests, FakeAnthropic.refused_first = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAnthropic)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_real_model_mode_records_the_providers_usage_ttft_success_and_retries(
    fake_provider: str, tmp_path: Path
) -> None:
    env = {**os.environ, "ANTHROPIC_BASE_URL": fake_provider, "ANTHROPIC_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            *("-m", "benchmarks.tokens", "--model", "anthropic:fake-model"),
            "--task",
            "log_errors",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads((tmp_path / "tokens_model.json").read_text())
    assert (data["provider"], data["model"]) == ("anthropic", "fake-model")
    (task,) = data["tasks"]
    direct, code = task["direct"], task["code_mode"]
    # Success is judged against ground truth: the fake's direct answer was computed from the real
    # file the filesystem server returned, code mode's from the real sandbox run.
    assert direct["success"] and code["success"], (direct["problem"], code["problem"])
    assert direct["model_turns"] == 2 and code["model_turns"] == 3
    for run, agent in ((direct, "direct"), (code, "code_mode")):
        steps = range(run["model_turns"])
        assert [t["input_tokens"] for t in run["turns"]] == [_usage(agent, s)["input_tokens"] for s in steps]
        assert run["input_tokens"] == sum(sum(_usage(agent, s).values()) for s in steps)
        assert run["output_tokens"] == sum(_output_tokens(s) for s in steps)
        assert run["cache_read_input_tokens"] == sum(50 + s for s in steps)
        assert all(t["ttft_s"] >= FIRST_TOKEN_DELAY_S for t in run["turns"])  # a lower bound the fake imposes
        assert run["upstream_calls"] == 1
    # The overloaded first request was retried; the failing first program was a retry for the model.
    assert direct["http_retries"] == 1 and code["http_retries"] == 0
    assert direct["tool_errors"] == 0 and code["tool_errors"] == 1
    # The model saw the real tool results: the direct agent's second request carried the log.
    second = [r for r in FakeAnthropic.requests if not any(t["name"] == "execute_code" for t in r["tools"])][1]
    assert second["messages"][-1]["content"][0]["content"].count(" ERROR ") > 10
    assert (tmp_path / "tokens_model.md").read_text() in proc.stdout
