"""Fingerprints: a hash of what identifies a request, canonical across serializations.

Two requests that mean the same thing must get the same fingerprint even when their bytes differ:
``{"a": 1, "b": 2}`` and ``{"b":2,"a":1}``; ``f(1, b=2)`` and ``f(a=1, b=2)``; ``1.0`` and ``1``.
We canonicalize into a JSON text in the spirit of RFC 8785 (JCS): object members sorted by key,
no insignificant white space, integral floats written as integers, non-finite numbers refused.
Types JSON lacks are written as tagged objects (``{"$bytes": ...}``); keys of plain mappings
that start with ``$`` are escaped (``$$...``), so that tagged objects cannot collide with plain
data, and a mapping whose keys collide once written as text (``1`` and ``"1"``) is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import inspect
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from idempo.core.jsontext import compact_json
from idempo.errors import FingerprintError

__all__ = [
    "bind_call",
    "canonical_json",
    "fingerprint",
    "fingerprint_call",
    "fingerprint_json_bytes",
    "simple_names",
]

# JSON numbers are doubles for most parsers; integers beyond 2**53 keep their exact digits.
_MAX_SAFE_FLOAT_INT = 2**53


def _canonical(value: Any, path: str) -> Any:
    """Turn ``value`` into plain JSON data with a single spelling per meaning."""
    # Fast paths for the exact built-in types (subclasses such as enums take the slow path).
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value
    if kind is dict and all(type(k) is str and not k.startswith("$") for k in value):
        return {k: _canonical(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return _canonical(value.value, path)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FingerprintError(f"cannot fingerprint {value!r} at {path}: not a finite number")
        if value.is_integer() and abs(value) < _MAX_SAFE_FLOAT_INT:
            return int(value)
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                if isinstance(k, bool) or not isinstance(k, int | float | enum.Enum | uuid.UUID):
                    raise FingerprintError(
                        f"cannot fingerprint mapping key {k!r} at {path}: keys must be str"
                    )
                k = str(_canonical(k, path))
            elif k.startswith("$"):
                k = "$" + k  # "$..." keys of plain data never look like a tagged type
            if k in out:
                raise FingerprintError(
                    f"cannot fingerprint the mapping at {path}: two keys are both {k!r} once "
                    "written as text"
                )
            out[k] = _canonical(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [_canonical(v, f"{path}{{}}") for v in value]
        return {"$set": sorted(items, key=_dumps)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise FingerprintError(f"cannot fingerprint {value!r} at {path}: not a finite number")
        return {"$decimal": str(value.normalize())}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return {"$" + type(value).__name__: value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$timedelta": value.total_seconds()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _canonical(fields, path)
    model_dump = getattr(value, "model_dump", None)  # pydantic v2 models, without importing it
    if callable(model_dump):
        return _canonical(model_dump(mode="json"), path)
    raise FingerprintError(
        f"cannot fingerprint a {type(value).__name__} at {path}; pass fingerprint= to choose "
        "what identifies the call, or key= to name it yourself"
    )


# One encoder, built once: json.dumps with non-default arguments builds a new one per call (and
# JSONEncoder.encode a new C encoder). _canonical builds a fresh tree, so no cycle reaches it.
_dumps = compact_json(sort_keys=True, ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (see the module docstring)."""
    return _dumps(_canonical(value, "$"))


def fingerprint(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    try:
        text = canonical_json(value)
    except RecursionError:
        raise FingerprintError(
            "cannot fingerprint a value that contains itself (or is nested too deeply)"
        ) from None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint_json_bytes(body: bytes) -> str:
    """Fingerprint a JSON document given as bytes; raises ``ValueError`` if it is not JSON."""
    return fingerprint(json.loads(body))


def fingerprint_call(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """Fingerprint a call by its bound arguments: positional or keyword, defaults filled in."""
    return fingerprint(bind_call(signature, args, kwargs, simple_names(signature)))


def bind_call(
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    simple: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The call's arguments by parameter name (used to feed ``key=`` callables).

    ``simple``: :func:`simple_names` of the signature, computed once by the caller (hashing a
    Signature per call would cost more than binding)."""
    if simple is not None and not kwargs and len(args) == len(simple):
        # Every parameter is positional-or-keyword without a default, and each was given
        # positionally: binding cannot fail and is a zip (Signature.bind costs ~10x more).
        return dict(zip(simple, args, strict=True))
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def simple_names(signature: inspect.Signature) -> tuple[str, ...] | None:
    """The parameter names if every parameter is positional-or-keyword without a default (a
    positional call of exactly that many arguments then binds by zip), else None."""
    params = signature.parameters.values()
    if all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params):
        return tuple(signature.parameters)
    return None
