"""Token accounting for a scripted conversation, as a model API would bill it.

Each turn the client sends the whole request again: tool definitions, system
prompt and every message so far, serialized as the JSON body of an
Anthropic-style Messages request (`{"tools": [...], "system": ..., "messages":
[...]}`, in the order the API caches them). We count the o200k_base BPE tokens
of that text (`bpe-openai`, which embeds the vocabulary and works offline).
Output tokens are those of what the model generates: each tool call's name and
JSON input, and the text of its answer.

Prompt caching: at each turn the tokens the request shares, as a prefix, with
the previous turn's request are read from the cache and billed at
`CACHE_READ_PRICE` (10 %, Anthropic's cache-read price); everything else at
100 % (or, in the second figure, at `CACHE_WRITE_PRICE`, 125 %: written to the
cache for the next turn). A task starts with a cold cache.

Model time per turn is modelled, not measured (no model is called):
time to first token + input tokens / prefill rate + output tokens / decode rate.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import bpe_openai  # type: ignore[import-untyped]

__all__ = ["CACHE_READ_PRICE", "CACHE_WRITE_PRICE", "Conversation", "ModelTiming", "TurnCost", "count", "encode"]

ENCODING = "o200k_base"
CACHE_READ_PRICE = 0.10
CACHE_WRITE_PRICE = 1.25
"""Anthropic's price for writing the 5-minute cache, as a share of the input price."""

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_encoding = bpe_openai.get_encoding(ENCODING)


def encode(text: str) -> list[int]:
    # encode_ordinary: text that happens to spell a special token is still text.
    return list(_encoding.encode_ordinary(text))


def count(text: str) -> int:
    return len(encode(text))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True, kw_only=True)
class ModelTiming:
    """How long a model turn is modelled to take."""

    ttft_s: float = 1.80
    prefill_tps: float = 5_000.0
    decode_tps: float = 63.0

    SOURCES: ClassVar[dict[str, str]] = {
        "ttft_s": "Artificial Analysis, Claude Sonnet 4.5 via Anthropic: median time to first token 1.80 s "
        "(their ~1k-token prompt workload)",
        "decode_tps": "Artificial Analysis, Claude Sonnet 4.5 via Anthropic: median output speed 63 tokens/s",
        "prefill_tps": "assumption (no public per-token prefill figure for hosted frontier models): 5,000 input "
        "tokens/s on top of the time to first token",
    }

    def turn_s(self, input_tokens: int, output_tokens: int) -> float:
        return self.ttft_s + input_tokens / self.prefill_tps + output_tokens / self.decode_tps

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttft_s": self.ttft_s,
            "prefill_tps": self.prefill_tps,
            "decode_tps": self.decode_tps,
            "formula": "per turn: ttft_s + input_tokens / prefill_tps + output_tokens / decode_tps",
            "sources": dict(self.SOURCES),
        }


@dataclass(frozen=True, kw_only=True)
class TurnCost:
    input_tokens: int
    cached_input_tokens: int
    """Of `input_tokens`, the prefix shared with the previous turn's request."""
    output_tokens: int
    tool_s: float
    """Measured wall time of the tool calls this turn's output asked for (0 for the answer)."""
    tool_calls: int

    @property
    def billed_input_cached(self) -> float:
        return self.input_tokens - self.cached_input_tokens * (1 - CACHE_READ_PRICE)

    @property
    def billed_input_cached_write(self) -> float:
        """As `billed_input_cached`, with every token not read from the cache written to it at the write premium."""
        uncached = self.input_tokens - self.cached_input_tokens
        return self.cached_input_tokens * CACHE_READ_PRICE + uncached * CACHE_WRITE_PRICE

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "tool_s": round(self.tool_s, 6),
            "tool_calls": self.tool_calls,
        }


@dataclass
class Conversation:
    """The messages of one scripted conversation, and what each turn cost.

    Call `model_turn(content)` with the assistant's content blocks; it counts
    the request that produced them (everything before) and the output. Then
    `tool_results(...)` appends the user message with the results."""

    system: str
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: list[TurnCost] = field(default_factory=list)
    _previous: list[int] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def request_text(self) -> str:
        return dumps({"tools": self.tools, "system": self.system, "messages": self.messages})

    def tool_use_id(self) -> str:
        # Shaped like the API's ids (`toolu_01` + 22 base62 characters); seeded, so runs repeat.
        return "toolu_01" + "".join(self._rng.choice(_BASE62) for _ in range(22))

    def model_turn(self, content: list[dict[str, Any]]) -> None:
        request = encode(self.request_text())
        shared = _common_prefix(request, self._previous)
        self._previous = request
        self.messages.append({"role": "assistant", "content": content})
        self.turns.append(
            TurnCost(
                input_tokens=len(request),
                cached_input_tokens=shared,
                output_tokens=sum(_output_tokens(block) for block in content),
                tool_s=0.0,
                tool_calls=sum(1 for block in content if block.get("type") == "tool_use"),
            )
        )

    def tool_results(self, results: list[tuple[str, str, bool]], elapsed_s: float) -> None:
        """Append one user message with `(tool_use_id, text, is_error)` results; the
        measured `elapsed_s` is charged to the turn that asked for them."""
        blocks: list[dict[str, Any]] = []
        for tool_use_id, text, is_error in results:
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": text}
            if is_error:
                block["is_error"] = True
            blocks.append(block)
        self.messages.append({"role": "user", "content": blocks})
        last = self.turns[-1]
        self.turns[-1] = TurnCost(
            input_tokens=last.input_tokens,
            cached_input_tokens=last.cached_input_tokens,
            output_tokens=last.output_tokens,
            tool_s=last.tool_s + elapsed_s,
            tool_calls=last.tool_calls,
        )


def _output_tokens(block: dict[str, Any]) -> int:
    """What the model generates for a block: a tool call's name and JSON input
    (the API, not the model, assigns the id), or the text."""
    if block.get("type") == "tool_use":
        return count(dumps({"name": block["name"], "input": block["input"]}))
    return count(str(block.get("text", "")))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in chunks first: the prefixes are long and almost always equal.
    step = 1024
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i
