"""The Idempotency-Key header is an RFC 9651 Structured Field Item: a String, parameters
allowed and ignored; a bare key leniently; anything else a clear InvalidKeyError (400)."""

from __future__ import annotations

import pytest

from idempo.core.http import parse_key_header
from idempo.errors import InvalidKeyError


@pytest.mark.parametrize(
    ("wire", "key"),
    [
        ('"k1"', "k1"),
        ('"k1";v=1', "k1"),  # parameters are valid RFC 9651 and ignored
        ('"k1";a;b="x"', "k1"),
        ('  "k1"\t', "k1"),
        (r'"a\"b\\c"', 'a"b\\c'),  # escapes undone
        ("k1", "k1"),  # bare, leniently
        ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
        ("7", "7"),
    ],
)
def test_keys_that_parse(wire: str, key: str) -> None:
    """Strings (with or without parameters and escapes) and bare keys give the key."""
    assert parse_key_header([wire]) == key


@pytest.mark.parametrize(
    "wire",
    [
        '"',  # a lone quote was accepted as the key '"'
        '"a',  # unterminated
        '"a" b',  # text after the string
        '"a";',  # a dangling parameter delimiter
        '""',  # empty
        'a"b',  # a bare key with a quote: `"abc"` and `abc` would be ambiguous
        "a,b",  # two values joined by a WSGI server
        '"' + "x" * 256 + '"',  # too long
        '"caf\xe9"',  # not ASCII
        "",
    ],
)
def test_keys_that_are_refused(wire: str) -> None:
    """Malformed fields are InvalidKeyError (400), never a key."""
    with pytest.raises(InvalidKeyError):
        parse_key_header([wire])


def test_absent_and_repeated_headers() -> None:
    """No header is no key; two headers are malformed."""
    assert parse_key_header([]) is None
    with pytest.raises(InvalidKeyError):
        parse_key_header(['"a"', '"b"'])
