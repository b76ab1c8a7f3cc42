"""Typed JSON for the standard library: a type (dataclasses, enums, lists, tuples,
``dict[str, ...]``, ``X | None`` of JSON types) compiled once into a codec that turns a value of
that type into JSON data and back, checking the type both ways.

Pure: no I/O; used by :class:`idempo.serializers.DataclassSerializer`. A type JSON cannot hold
(``datetime``, ``set``, ``bytes``, an untagged union) is refused when compiled, naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any, NoReturn

from idempo.errors import SerializationError

__all__ = ["Codec", "compile_codec", "type_name"]


def type_name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp)


Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (to JSON data, from JSON data)


def _fail(message: str) -> NoReturn:
    raise SerializationError(message)


def _scalar(tp: type) -> Codec:
    def encode(v: Any) -> Any:
        # bool is an int to isinstance, but a replay of True as an int field would be 1.
        if type(v) is tp or (tp is float and type(v) is int):
            return v
        return _fail(f"expected {tp.__name__}, got {type(v).__qualname__}")

    def decode(v: Any) -> Any:
        if tp is float and type(v) is int:
            return float(v)
        return v if type(v) is tp else _fail(f"expected {tp.__name__} in the stored outcome")

    return encode, decode


def _none_codec() -> Codec:
    def check(v: Any) -> Any:
        return None if v is None else _fail(f"expected None, got {type(v).__qualname__}")

    return check, check


class _Compiler:
    """Turns a type into its codec once, at construction: no type hints are read per call."""

    def __init__(self) -> None:
        self.done: dict[Any, Codec] = {}

    def codec(self, tp: Any, where: str) -> Codec:
        if tp in self.done:
            return self.done[tp]
        if tp is Any or tp is object:
            return _JSON_VALUE
        if tp is None or tp is types.NoneType:
            return _none_codec()
        if tp in (str, int, float, bool):
            return _scalar(tp)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._enum(tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self._dataclass(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is list and len(args) == 1:
            return self._list(self.codec(args[0], where + "[]"), list)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return self._list(self.codec(args[0], where + "[]"), tuple)
        if origin is tuple and args:
            return self._tuple([self.codec(a, f"{where}[{i}]") for i, a in enumerate(args)])
        if origin is dict and len(args) == 2:
            if args[0] is not str:
                _fail(f"{where}: JSON object keys are strings; {type_name(tp)} cannot be kept")
            return self._dict(self.codec(args[1], where + "[]"))
        if origin in (typing.Union, types.UnionType):
            arms = [a for a in args if a is not types.NoneType]
            if len(arms) == 1:
                return self._optional(self.codec(arms[0], where))
            _fail(
                f"{where}: a union of {type_name(tp)} cannot be told apart in JSON; use "
                "PydanticSerializer or MsgspecSerializer (tagged unions)"
            )
        return _fail(
            f"{where}: JSON cannot hold a {type_name(tp)}; use PydanticSerializer or "
            "MsgspecSerializer, which know more types, or keep it as a str"
        )

    def _enum(self, tp: type[enum.Enum]) -> Codec:
        def encode(v: Any) -> Any:
            if type(v) is not tp:
                _fail(f"expected {tp.__qualname__}, got {type(v).__qualname__}")
            return v.value

        return encode, tp

    def _dataclass(self, cls: type) -> Codec:
        fields: list[tuple[str, Codec]] = []
        codec: Codec = (lambda v: encode(v), lambda v: decode(v))
        self.done[cls] = codec  # before the fields: a recursive dataclass refers to itself
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:  # a forward reference that does not resolve
            return _fail(f"cannot read the field types of {cls.__qualname__}: {exc}")
        for f in dataclasses.fields(cls):
            if f.init:  # fields outside __init__ are rebuilt by the class itself
                fields.append((f.name, self.codec(hints[f.name], f"{cls.__qualname__}.{f.name}")))

        def encode(v: Any) -> Any:
            if type(v) is not cls:
                _fail(f"expected {cls.__qualname__}, got {type(v).__qualname__}")
            return {name: enc(getattr(v, name)) for name, (enc, _) in fields}

        def decode(v: Any) -> Any:
            if not isinstance(v, dict):
                _fail(f"expected a {cls.__qualname__} object in the stored outcome")
            # Keys missing (a field added since) take their default; extra keys (a field
            # removed since) are dropped, so a deploy does not break the records of the day.
            return cls(**{name: dec(v[name]) for name, (_, dec) in fields if name in v})

        return codec

    @staticmethod
    def _list(item: Codec, kind: type[list[Any]] | type[tuple[Any, ...]]) -> Codec:
        enc, dec = item

        def encode(v: Any) -> Any:
            if type(v) is not kind:
                _fail(f"expected a {kind.__name__}, got {type(v).__qualname__}")
            return [enc(x) for x in v]

        return encode, lambda v: kind(dec(x) for x in v)

    @staticmethod
    def _tuple(items: list[Codec]) -> Codec:
        def encode(v: Any) -> Any:
            if type(v) is not tuple or len(v) != len(items):
                _fail(f"expected a tuple of {len(items)}, got {type(v).__qualname__}")
            return [enc(x) for (enc, _), x in zip(items, v, strict=True)]

        return encode, lambda v: tuple(dec(x) for (_, dec), x in zip(items, v, strict=True))

    @staticmethod
    def _dict(item: Codec) -> Codec:
        enc, dec = item

        def encode(v: Any) -> Any:
            if type(v) is not dict or not all(type(k) is str for k in v):
                _fail(f"expected a dict with str keys, got {type(v).__qualname__}")
            return {k: enc(x) for k, x in v.items()}

        return encode, lambda v: {k: dec(x) for k, x in v.items()}

    @staticmethod
    def _optional(item: Codec) -> Codec:
        enc, dec = item
        return (lambda v: None if v is None else enc(v)), (lambda v: None if v is None else dec(v))


_JSON_VALUE: Codec = (lambda v: v, lambda v: v)  # Any: what JSON gives back, as JSONSerializer


def compile_codec(tp: Any) -> Codec:
    """``(encode, decode)`` for ``tp``: JSON data from a value, a value from JSON data. Both
    raise SerializationError on a value of another type."""
    return _Compiler().codec(tp, type_name(tp))
