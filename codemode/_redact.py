"""Redacting configured secrets from what leaves a run.

The secrets are the values of servers' `env` and `headers` (and credentials in
their URLs), `Config.secrets()`. A server may echo one in a successful result,
model code may print it or encode it, and a tool's exception may quote it; none
of that may reach the model or the logs. So the host redacts, after the guest
has returned, every string that leaves: the value, stdout, the error, the call
log, each event, and the records of codemode's loggers. Tool results are also
redacted as they enter the guest (`Hub`), so code never holds the literal.

Each secret is matched in the forms code or a server most plausibly turns it
into: literal; JSON-escaped; URL-encoded (`quote`, `quote_plus`); hex (lower
and upper case); base64 in the standard and URL-safe alphabets, with or without
padding, and at each of the three byte offsets a secret can sit at inside a
longer encoded string (only the characters that depend on the secret alone are
matched, so what surrounds it does not matter). Any match becomes `***`.

Limits, stated plainly: a value shorter than `MIN_SECRET_CHARS` is not treated
as a secret (`DEBUG=1` in an `env` must not blank every "1"); any other
transformation (reversed, split, XORed, compressed) is not recognised. The
guest never gets the literal from a tool result, but code that was given a
secret some other way can still disguise it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from ._errors import ExecutionError, TracebackLine
from ._result import RunResult

__all__ = ["MIN_SECRET_CHARS", "REDACTED", "Redactor", "install_log_redaction"]

REDACTED = "***"
MIN_SECRET_CHARS = 4
# An encoded form shorter than this would match by chance in ordinary text.
_MIN_FORM_CHARS = 4
_LOGGERS = ("codemode", "codemode.http", "codemode.mcp")


def _base64_cores(secret: bytes) -> set[str]:
    """For each alphabet and each offset k in 0..2 of the secret inside a longer
    byte string: the base64 characters that depend on the secret's bytes only."""
    n = len(secret)
    cores: set[str] = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + secret).decode("ascii").rstrip("=")
        # Character i covers bits [6i, 6i + 6); the secret covers [8k, 8(k + n)).
        start, end = -(-8 * k // 6), (8 * (k + n)) // 6
        core = encoded[start:end]
        cores.add(core)
        cores.add(core.replace("+", "-").replace("/", "_"))
    return cores


def forms(secret: str) -> set[str]:
    """Every string `secret` is matched as (see the module docstring)."""
    raw = secret.encode("utf-8", "surrogatepass")
    found = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        raw.hex(),
        raw.hex().upper(),
        *_base64_cores(raw),
    }
    return {f for f in found if len(f) >= _MIN_FORM_CHARS}


class Redactor:
    """Replaces every form of the given secrets with `***`. Immutable; cheap
    when there are no secrets (every method returns its input)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS)
        patterns = sorted({f for s in self.secrets for f in forms(s)}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, patterns))) if patterns else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """`text` with every form of every secret replaced."""
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

    def value(self, value: Any) -> Any:
        """JSON-like `value` with every string in it (keys too) redacted; other
        objects are returned as they are. Shared or cyclic parts are handled."""
        if self._pattern is None:
            return value
        return self._value(value, {}, 0)

    def _value(self, value: Any, memo: dict[int, Any], depth: int) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, (dict, list, tuple)):
            return value
        if id(value) in memo:
            return memo[id(value)]
        if depth > 200:  # deeper than any JSON the guest or a server may send: say so, do not recurse
            return REDACTED
        out: Any
        if isinstance(value, dict):
            out = memo[id(value)] = {}
            for k, v in value.items():
                out[self._value(k, memo, depth + 1)] = self._value(v, memo, depth + 1)
            return out
        out = memo[id(value)] = []
        out.extend(self._value(v, memo, depth + 1) for v in value)
        return tuple(out) if isinstance(value, tuple) else out

    def error(self, error: ExecutionError) -> ExecutionError:
        """A copy of `error` whose text attributes (message, traceback lines,
        type names, tool names) are redacted."""
        if self._pattern is None:
            return error
        # Not `copy.copy`: the error classes take keyword-only arguments it cannot replay.
        clone = type(error).__new__(type(error))
        clone.__dict__.update(vars(error))
        for name, attr in vars(error).items():
            if isinstance(attr, str):
                setattr(clone, name, self.text(attr))
            elif isinstance(attr, list) and all(isinstance(f, TracebackLine) for f in attr):
                setattr(
                    clone, name, [dataclasses.replace(f, name=self.text(f.name), text=self.text(f.text)) for f in attr]
                )
        clone.args = tuple(self.text(a) if isinstance(a, str) else a for a in error.args)
        return clone

    def result(self, result: RunResult) -> RunResult:
        """`result` with its value, stdout, error and call log redacted."""
        if self._pattern is None:
            return result
        calls = [
            dataclasses.replace(
                call,
                arguments=self.value(call.arguments),
                error_message=self.text(call.error_message) if call.error_message is not None else None,
            )
            for call in result.tool_calls
        ]
        return dataclasses.replace(
            result,
            value=self.value(result.value),
            stdout=self.text(result.stdout),
            error=self.error(result.error) if result.error is not None else None,
            tool_calls=calls,
        )


class _RedactingFilter(logging.Filter):
    """Redacts the message, arguments and exception text of each record on
    codemode's loggers, for every `Redactor` installed."""

    def __init__(self) -> None:
        super().__init__()
        self.redactors: list[Redactor] = []
        self._formatter = logging.Formatter()

    def redact(self, text: str) -> str:
        for redactor in self.redactors:
            text = redactor.text(text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactors:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed format: keep it, redacted
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


_filter = _RedactingFilter()


def install_log_redaction(redactor: Redactor) -> Any:
    """Redact `redactor`'s secrets from codemode's log records (loggers
    "codemode", "codemode.http", "codemode.mcp") until the returned callable is
    called. Handlers that format `exc_info` themselves see the redacted
    `exc_text`, which `logging.Formatter` prefers."""
    if not redactor:
        return lambda: None
    if not _filter.redactors:
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(_filter)
    _filter.redactors.append(redactor)

    def uninstall() -> None:
        if redactor in _filter.redactors:
            _filter.redactors.remove(redactor)
        if not _filter.redactors:
            for name in _LOGGERS:
                logging.getLogger(name).removeFilter(_filter)

    return uninstall
