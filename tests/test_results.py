"""A run's result on the host: values JSON cannot hold are a clear user error
(both backends, which share the guest runtime), and `max_result` holds even
against a guest whose encoder is patched (wasm: the guest's own checks are
advisory)."""

from __future__ import annotations

import pytest

from codemode import Limits, ResultNotSerializable, Sandbox, SandboxCrashed

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("code", "path", "value_type"),
    [
        ("{(1, 2): 3}", "result", "tuple"),
        ("x = [1]\nx.append(x)\nx", "result[1]", "list"),
        ("[{'k': {'ok': 1, 'bad': {(1, 2): 3}}}]", "result[0]['k']['bad']", "tuple"),
        ("d = {'a': []}\nd['a'].append(d)\n[0, d]", "result[1]['a'][0]", "dict"),
    ],
)
async def test_a_result_json_cannot_hold_names_its_type_and_path(
    backend: str, code: str, path: str, value_type: str
) -> None:
    result = await Sandbox(backend=backend).run(code)  # type: ignore[arg-type]
    error = result.error
    assert isinstance(error, ResultNotSerializable), error
    assert error.code == "result_not_serializable"
    assert (error.path, error.value_type) == (path, value_type), error.to_dict()
    assert 0 < len(error.value_repr) <= 300 and path in error.message


async def test_a_set_whose_ordering_raises_is_a_user_error() -> None:
    # RestrictedPython refuses dunder methods, so this one is wasm only.
    code = "class K:\n    def __lt__(self, other):\n        raise ValueError('no order')\n[{'k': {K(), K()}}]"
    result = await Sandbox().run(code)
    error = result.error
    assert isinstance(error, ResultNotSerializable), error
    assert (error.path, error.value_type) == ("result[0]['k']", "set"), error.to_dict()
    assert "ValueError" in error.message


_PATCHED = "import runtime, json\nruntime.encode_value = lambda value, limit: (json.dumps(value), False)\n"


async def test_max_result_holds_on_the_host_against_a_patched_encoder() -> None:
    limits = Limits(max_result=64_000)
    result = await Sandbox().run(_PATCHED + "'x' * 500_000", limits=limits)
    assert result.error is None, result.error
    assert result.value_truncated
    assert isinstance(result.value, str) and len(result.value) <= 64_000 + 64 and "truncated" in result.value
    # Past what any honest answer takes, the answer is refused unread.
    huge = await Sandbox().run(_PATCHED + "'x' * 2_000_000", limits=limits)
    assert isinstance(huge.error, SandboxCrashed), huge.error
    # An honest guest's truncated value fits the limit, escapes included.
    honest = await Sandbox().run("'\\x00\"' * 100_000", limits=Limits(max_result=1000))
    assert honest.value_truncated and len(honest.value) < 1100, len(honest.value)
