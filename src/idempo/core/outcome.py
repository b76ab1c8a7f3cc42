"""Outcomes: how a result is kept in a record, and how it comes back.

Stores keep outcomes as opaque bytes. The engine wraps them in a small versioned envelope::

    b"\\x01" | kind (1 byte) | len(serializer name) (1 byte) | serializer name | payload

``kind`` is ``v`` (a value the serializer wrote) or ``n`` (not stored: the first execution
completed but its result was too large or could not be serialized; the payload says why). The
envelope version lets records written today be read by later releases.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from idempo.core.jsontext import compact_json
from idempo.errors import OutcomeNotStoredError, SerializationError

__all__ = [
    "FORMAT_VERSION",
    "JSONSerializer",
    "NotStored",
    "PickleSerializer",
    "Serializer",
    "decode",
    "Encoded",
    "Keep",
    "RELEASE",
    "Release",
    "encode_not_stored",
    "encode_result",
    "encode_value",
    "replayed",
]

FORMAT_VERSION = 1
_VALUE = b"v"
_NOT_STORED = b"n"


@runtime_checkable
class Serializer(Protocol):
    """Turns results into bytes and back. ``name`` is recorded with every outcome."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


# Built once (json.dumps with non-default arguments builds a new encoder on every call, and
# JSONEncoder.encode a new C encoder): the same text.
_JSON_ENCODE = compact_json(ensure_ascii=False, allow_nan=False)
# What json.loads does with bytes, without its encoding detection: outcomes are written as UTF-8.
_JSON_DECODE = json.JSONDecoder().decode


def json_loads(data: bytes) -> Any:
    """``json.loads(data)`` for the UTF-8 JSON text idempo writes."""
    if type(data) is bytes and not data.startswith(b"\xef\xbb\xbf"):
        return _JSON_DECODE(data.decode("utf-8", "surrogatepass"))
    return json.loads(data)


class JSONSerializer:
    """The default: JSON text, UTF-8. Keeps what JSON can: dict, list, str, int, float, bool,
    None. A replay returns what JSON gives back (tuples become lists, dict keys become str)."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        try:
            return _JSON_ENCODE(value).encode()
        except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: a cycle
            raise SerializationError(
                f"the JSON serializer cannot keep a {type(value).__name__} result ({exc}); return "
                "JSON-compatible data, or pass serializer= (e.g. PickleSerializer())",
                value=value,
            ) from exc

    def loads(self, data: bytes) -> Any:
        return json_loads(data)


class PickleSerializer:
    """Keeps any picklable Python value. Only for stores no untrusted party can write to:
    unpickling runs code."""

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(
                f"cannot pickle a {type(value).__name__} result ({exc})", value=value
            ) from exc

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


@dataclass(frozen=True, slots=True)
class NotStored:
    """A completed execution whose result was not kept."""

    reason: str


def _envelope(kind: bytes, serializer: str, payload: bytes) -> bytes:
    name = serializer.encode()
    if len(name) > 255:
        raise ValueError("serializer name too long")
    return bytes([FORMAT_VERSION]) + kind + bytes([len(name)]) + name + payload


def encode_value(serializer: Serializer, payload: bytes) -> bytes:
    return _envelope(_VALUE, serializer.name, payload)


def encode_not_stored(reason: str) -> bytes:
    return _envelope(_NOT_STORED, "", json.dumps({"reason": reason}).encode())


def decode(serializer: Serializer, data: bytes) -> Any:
    """The kept value, or a :class:`NotStored` marker. Raises SerializationError if the record
    was written by another serializer or a newer format."""
    if len(data) < 3 or data[0] != FORMAT_VERSION:
        version = data[0] if data else None
        raise SerializationError(
            f"stored outcome has format version {version}; this idempo reads {FORMAT_VERSION}"
        )
    kind, name_len = data[1:2], data[2]
    name = data[3 : 3 + name_len].decode()
    payload = data[3 + name_len :]
    if kind == _NOT_STORED:
        return NotStored(json.loads(payload)["reason"])
    if name != serializer.name:
        raise SerializationError(
            f"stored outcome was written by the {name!r} serializer; this one is "
            f"{serializer.name!r}"
        )
    try:
        return serializer.loads(payload)
    except Exception as exc:
        raise SerializationError(f"cannot decode the stored outcome: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Encoded:
    """A result ready to be kept: ``data`` for the store, and whether the value itself is in it.

    When the value cannot be kept, ``data`` is a not-stored marker (so a retry is refused rather
    than run again) and ``error`` says why, if it is an error rather than a size limit."""

    data: bytes
    stored: bool
    error: SerializationError | None = None


def encode_result(serializer: Serializer, value: Any, max_bytes: int) -> Encoded:
    try:
        payload = serializer.dumps(value)
    except SerializationError as exc:
        exc.value = value
        return Encoded(encode_not_stored(f"not serializable: {exc}"), stored=False, error=exc)
    if len(payload) > max_bytes:
        reason = f"too large to keep: {len(payload)} bytes, the limit is {max_bytes}"
        return Encoded(encode_not_stored(reason), stored=False)
    return Encoded(encode_value(serializer, payload), stored=True)


def replayed(
    serializer: Serializer, data: bytes, *, scope: str, key: str, what: str = "result"
) -> Any:
    """The value kept in ``data``, for a replay: the one place a not-stored marker becomes
    :class:`~idempo.errors.OutcomeNotStoredError` (``what``: "result", or "response" over HTTP).
    The operation is not run again: it ran, only its result is missing."""
    value = decode(serializer, data)
    if isinstance(value, NotStored):
        raise OutcomeNotStoredError(
            f"idempotency key {key!r} already ran, but its {what} was not kept "
            f"({value.reason}); use a new key to run the operation again",
            reason=value.reason,
            key=key,
            scope=scope,
        )
    return value


@dataclass(frozen=True, slots=True)
class Keep:
    """Keep ``data`` (an outcome envelope) as the key's outcome."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Release:
    """Keep nothing: free the key, so that a retry runs the operation again."""


RELEASE = Release()
