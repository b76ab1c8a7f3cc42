"""Idempotency keys and scopes: validation.

A key is chosen by the client and names one logical operation; a scope is the namespace it lives
in (normally the authenticated principal). Both are 1-255 printable ASCII characters (0x20-0x7E):
the IETF draft carries the key as a Structured Field string, whose characters are exactly these.
"""

from __future__ import annotations

import re

from idempo.errors import InvalidKeyError

__all__ = ["MAX_KEY_LENGTH", "validate_key", "validate_scope"]

MAX_KEY_LENGTH = 255
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def _validate(value: object, what: str, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidKeyError(f"idempotency {what} must be a str, not {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidKeyError(f"idempotency {what} must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"idempotency {what} is {len(value)} characters long; the limit is {MAX_KEY_LENGTH}"
        )
    if not _PRINTABLE.fullmatch(value):
        bad = next(c for c in value if not (0x20 <= ord(c) <= 0x7E))
        raise InvalidKeyError(
            f"idempotency {what} must be printable ASCII; it contains {bad!r} (U+{ord(bad):04X})"
        )
    return value


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid idempotency key, else raise :class:`InvalidKeyError`."""
    return _validate(key, "key", allow_empty=False)


def validate_scope(scope: object) -> str:
    """Return ``scope`` if valid. The empty scope is the default, shared namespace."""
    return _validate(scope, "scope", allow_empty=True)
