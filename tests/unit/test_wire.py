import pytest

from services import wire


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"a": NaN}', "NaN is not a JSON value"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"a": 1, "a": 1}', "has the key 'a' twice"),
        (b'{"o": {"k": 1, "k": 2}}', "has the key 'k' twice"),
        (b'{"a": "\\ud800"}', "unpaired UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "unpaired UTF-16 surrogate"),
        (b'["\\ude00\\ud83d"]', "unpaired UTF-16 surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": "\xff"}', r"not valid UTF-8 \(byte 7\)"),
        (b"{not json", "not valid JSON: Expecting property name"),
    ],
)
def test_json_the_path_cannot_carry_is_refused_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(wire.BadJson, match=reason):
        wire.loads(body)


def test_paired_surrogate_escapes_and_deep_enough_nesting_are_read() -> None:
    assert wire.loads(b'{"e": "\\ud83d\\ude00", "n": [[[1.5e3]]]}') == {
        "e": "\U0001f600",
        "n": [[[1500.0]]],
    }
    assert wire.loads(b"[" * 500 + b"]" * 500) is not None
