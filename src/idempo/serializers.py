"""Typed results: serializers bound to a return type, so that a replay gives back that type.

    @idem.idempotent(key=..., serializer=TypedSerializer())      # from the return annotation
    def create_order(order_id: str) -> Order: ...

    @idem.idempotent(key=..., serializer=TypedSerializer(Order))  # or named

:class:`TypedSerializer` picks the backend from the type: Pydantic (models, and anything a
``TypeAdapter`` takes), msgspec (Structs) or the standard library (dataclasses of JSON types).
Each writes plain JSON and reads it back *through the type*: nothing is unpickled, so the
store holds data, never code. The envelope records ``json``, the format, not the type, so a
record written by :class:`~idempo.JSONSerializer` replays as the typed value after a switch, and
a changed return type is checked when a replay is decoded (a mismatch raises
SerializationError, never a wrong object).

What a serializer cannot keep raises :class:`~idempo.errors.SerializationError`: a result of
another type (a subclass included: its replay would lose the subclass) when the call returns,
and a type JSON cannot hold (a dataclass field of ``datetime``) when the function is decorated.
Pydantic and msgspec are imported only when a type needs them (extras ``pydantic``,
``msgspec``).
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable
from typing import Any

from idempo.core.jsontext import compact_json
from idempo.core.outcome import Serializer, json_loads
from idempo.core.typed_json import compile_codec, type_name
from idempo.errors import SerializationError

__all__ = [
    "DataclassSerializer",
    "MsgspecSerializer",
    "PydanticSerializer",
    "TypedSerializer",
    "serializer_for",
]

_JSON_ENCODE = compact_json(ensure_ascii=False, allow_nan=False)


def _check_exact(tp: Any, value: Any) -> None:
    """A class-bound serializer keeps exactly that class: a subclass would come back as its
    base, and another type would not come back at all."""
    if isinstance(tp, type) and type(value) is not tp:
        raise SerializationError(
            f"this serializer keeps {tp.__qualname__} results, not {type(value).__qualname__}",
            value=value,
        )


class PydanticSerializer:
    """Keeps a Pydantic model (or any type a ``pydantic.TypeAdapter`` takes: ``list[Model]``,
    ``Model | None``, dataclasses, ``datetime``...) as JSON, and validates it back on replay."""

    name = "json"

    def __init__(self, tp: Any) -> None:
        try:
            import pydantic
            import pydantic_core
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise ImportError(
                "PydanticSerializer needs pydantic: pip install idempo[pydantic]"
            ) from exc
        self.type = tp
        try:
            self._adapter: Any = pydantic.TypeAdapter(tp)
        except pydantic.PydanticSchemaGenerationError as exc:
            raise SerializationError(f"pydantic cannot keep {type_name(tp)}: {exc}") from exc
        self._errors: tuple[type[Exception], ...] = (
            pydantic.ValidationError,
            pydantic_core.PydanticSerializationError,
            ValueError,
            TypeError,
        )

    def dumps(self, value: Any) -> bytes:
        _check_exact(self.type, value)
        try:
            data: bytes = self._adapter.dump_json(value, warnings="error")
            # Decoding now is what proves a replay will work: a value of another type inside a
            # generic (list[Model] holding a dict) fails here, not on the retry.
            self._adapter.validate_json(data)
        except self._errors as exc:
            raise SerializationError(
                f"cannot keep this result as {type_name(self.type)}: {exc}", value=value
            ) from exc
        return data

    def loads(self, data: bytes) -> Any:
        return self._adapter.validate_json(data)


class MsgspecSerializer:
    """Keeps a msgspec Struct (or any type msgspec encodes: ``list[Struct]``, dataclasses,
    ``datetime``...) as JSON, and decodes it back through the type."""

    name = "json"

    def __init__(self, tp: Any) -> None:
        try:
            import msgspec
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise ImportError(
                "MsgspecSerializer needs msgspec: pip install idempo[msgspec]"
            ) from exc
        self.type = tp
        try:
            self._decoder: Any = msgspec.json.Decoder(tp)
            custom = _msgspec_custom(msgspec.inspect.type_info(tp), set())
        except TypeError as exc:
            raise SerializationError(f"msgspec cannot keep {type_name(tp)}: {exc}") from exc
        if custom is not None:
            # msgspec accepts any class given hooks; without them it could encode, never decode.
            raise SerializationError(
                f"msgspec cannot keep {type_name(tp)}: it does not know {custom.__qualname__}"
            )
        self._encoder: Any = msgspec.json.Encoder()
        self._errors: tuple[type[Exception], ...] = (msgspec.MsgspecError, TypeError, ValueError)

    def dumps(self, value: Any) -> bytes:
        _check_exact(self.type, value)
        try:
            data: bytes = self._encoder.encode(value)
            self._decoder.decode(data)  # a replay must decode: prove it now
        except self._errors as exc:
            raise SerializationError(
                f"cannot keep this result as {type_name(self.type)}: {exc}", value=value
            ) from exc
        return data

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data)


def _msgspec_custom(info: Any, seen: set[int]) -> type | None:
    """The first class in ``info`` (a msgspec type tree) that msgspec knows only through hooks."""
    if id(info) in seen:
        return None
    seen.add(id(info))
    if type(info).__name__ == "CustomType":
        cls: type = info.cls
        return cls
    children = [getattr(info, a, None) for a in ("item_type", "key_type", "value_type")]
    children += list(getattr(info, "types", ()) or ()) + list(getattr(info, "item_types", ()) or ())
    children += [f.type for f in getattr(info, "fields", ()) or ()]
    for child in children:
        if child is not None and (found := _msgspec_custom(child, seen)) is not None:
            return found
    return None


class DataclassSerializer:
    """Standard library only: keeps a dataclass (nested dataclasses, enums, ``list``,
    ``tuple``, ``dict[str, ...]``, ``X | None`` of JSON types) as JSON and rebuilds it on replay.
    A field JSON cannot hold (``datetime``, ``set``, ``bytes``, an untagged union) is refused
    here, when the function is decorated; ``Any`` fields come back as JSON gives them."""

    name = "json"

    def __init__(self, tp: Any) -> None:
        self.type = tp
        self._encode, self._decode = compile_codec(tp)

    def dumps(self, value: Any) -> bytes:
        try:
            return _JSON_ENCODE(self._encode(value)).encode()
        except SerializationError as exc:
            raise SerializationError(
                f"cannot keep this result as {type_name(self.type)}: {exc}", value=value
            ) from exc
        # an Any field holding what JSON cannot, or a cycle (RecursionError)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"cannot keep this result as JSON: {exc}", value=value
            ) from exc

    def loads(self, data: bytes) -> Any:
        return self._decode(json_loads(data))


# -- the front -------------------------------------------------------------------------------


def _mentions(tp: Any, test: Callable[[type], bool]) -> bool:
    if isinstance(tp, type) and test(tp):
        return True
    return any(_mentions(a, test) for a in typing.get_args(tp))


def _is_pydantic(tp: type) -> bool:
    base = _module_attr("pydantic", "BaseModel")
    return base is not None and issubclass(tp, base)


def _is_msgspec(tp: type) -> bool:
    base = _module_attr("msgspec", "Struct")
    return base is not None and issubclass(tp, base)


def _module_attr(module: str, attr: str) -> Any:
    """``module.attr`` if the module is already imported: a type cannot be a pydantic model
    unless pydantic was imported, so the check never imports an optional dependency."""
    mod = sys.modules.get(module)
    return getattr(mod, attr, None)


def serializer_for(tp: Any) -> Serializer:
    """The serializer for ``tp``: Pydantic when it mentions a model, msgspec when it mentions a
    Struct, else the standard-library one."""
    if _mentions(tp, _is_pydantic):
        return PydanticSerializer(tp)
    if _mentions(tp, _is_msgspec):
        return MsgspecSerializer(tp)
    return DataclassSerializer(tp)


class TypedSerializer:
    """A serializer bound to a type. ``TypedSerializer(Order)`` keeps ``Order`` results;
    ``TypedSerializer()`` takes the type from the decorated function's return annotation, read
    once when ``@idempotent`` decorates it (an ``async def``'s annotation is its result's)."""

    name = "json"

    def __init__(self, tp: Any = None) -> None:
        self.type = tp
        self._inner: Serializer | None = None if tp is None else serializer_for(tp)

    def for_function(self, func: Callable[..., Any]) -> Serializer:
        """The serializer for ``func``'s results (called by ``@idempotent`` at decoration)."""
        if self._inner is not None:
            return self._inner
        try:
            hints = typing.get_type_hints(func)
        except Exception as exc:
            raise SerializationError(
                f"cannot read the return annotation of {func.__qualname__}: {exc}; pass the "
                "type, TypedSerializer(Model)"
            ) from exc
        if "return" not in hints:
            raise SerializationError(
                f"{func.__qualname__} has no return annotation; annotate it or pass the type, "
                "TypedSerializer(Model)"
            )
        return serializer_for(hints["return"])

    def _bound(self) -> Serializer:
        if self._inner is None:
            raise SerializationError(
                "TypedSerializer() without a type is bound by @idempotent to a function's "
                "return annotation; elsewhere pass the type, TypedSerializer(Model)"
            )
        return self._inner

    def dumps(self, value: Any) -> bytes:
        return self._bound().dumps(value)

    def loads(self, data: bytes) -> Any:
        return self._bound().loads(data)
