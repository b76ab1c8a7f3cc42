"""Typed results: a replay gives back the type the first call returned (Pydantic, msgspec,
dataclasses), on real stores, for def and async def; and clear errors for what cannot be kept."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest

from idempo import Idempotency, JSONSerializer
from idempo.errors import OutcomeNotStoredError, SerializationError
from idempo.serializers import (
    DataclassSerializer,
    MsgspecSerializer,
    PydanticSerializer,
    TypedSerializer,
    serializer_for,
)
from tests.conftest import async_idempotency_on, sync_idempotency_on

KINDS = [
    pytest.param("memory", marks=pytest.mark.memory),
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class PydOrder(pydantic.BaseModel):
    id: str
    amount: int
    placed: dt.datetime


class StructOrder(msgspec.Struct):
    id: str
    amount: int
    tags: list[str]


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class DcOrder:
    id: str
    amount: float
    color: Color
    lines: list[Line]
    note: str | None = None
    meta: dict[str, int] = dataclasses.field(default_factory=dict)
    dims: tuple[int, int] = (0, 0)


def make_pyd(order_id: str) -> PydOrder:
    return PydOrder(id=order_id, amount=5, placed=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC))


def make_struct(order_id: str) -> StructOrder:
    return StructOrder(id=order_id, amount=5, tags=["a", "b"])


def make_dc(order_id: str) -> DcOrder:
    return DcOrder(
        id=order_id,
        amount=5,
        color=Color.BLUE,
        lines=[Line("x", 2)],
        meta={"k": 1},
        dims=(3, 4),
    )


MAKERS: dict[str, tuple[type, Callable[[str], Any]]] = {
    "pydantic": (PydOrder, make_pyd),
    "msgspec": (StructOrder, make_struct),
    "dataclass": (DcOrder, make_dc),
}


@pytest.fixture(params=KINDS)
def idem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Idempotency]:
    with sync_idempotency_on(request.param, tmp_path) as idem:
        yield idem


@pytest.fixture(params=KINDS)
async def aidem(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Idempotency]:
    async with async_idempotency_on(request.param, tmp_path) as idem:
        yield idem


# Field types JSON cannot hold; at module level, where get_type_hints resolves them.
@dataclasses.dataclass
class Stamped:
    at: dt.datetime


@dataclasses.dataclass
class Tagged:
    tags: set[str]


@dataclasses.dataclass
class Either:
    v: int | str


@dataclasses.dataclass
class Keyed:
    by_id: dict[int, str]


# -- round trips through the decorator -------------------------------------------------------


@pytest.mark.parametrize("flavor", list(MAKERS))
@pytest.mark.parametrize("inferred", [True, False], ids=["inferred", "named"])
def test_replay_gives_back_the_same_type(idem: Idempotency, flavor: str, inferred: bool) -> None:
    """def: the replay is an equal object of the returned type, and the body ran once."""
    tp, make = MAKERS[flavor]
    runs: list[str] = []
    serializer = TypedSerializer() if inferred else TypedSerializer(tp)

    def create(order_id: str) -> Any:
        runs.append(order_id)
        return make(order_id)

    create.__annotations__["return"] = tp  # the annotation the inferred serializer reads
    wrapped = idem.idempotent(key=lambda order_id: order_id, serializer=serializer)(create)
    first = wrapped("o-1")
    again = wrapped("o-1")
    assert type(again) is tp
    assert again == first == make("o-1")
    assert runs == ["o-1"]


@pytest.mark.parametrize("flavor", list(MAKERS))
async def test_async_replay_gives_back_the_same_type(aidem: Idempotency, flavor: str) -> None:
    """async def: the annotation of an async def is its result's type, and replays keep it."""
    tp, make = MAKERS[flavor]
    runs: list[str] = []

    async def create(order_id: str) -> Any:
        runs.append(order_id)
        return make(order_id)

    create.__annotations__["return"] = tp
    wrapped = aidem.idempotent(key=lambda order_id: order_id, serializer=TypedSerializer())(create)
    first = await wrapped("o-1")
    again = await wrapped("o-1")
    assert type(again) is tp
    assert again == first == make("o-1")
    assert runs == ["o-1"]


def test_generic_return_types_round_trip(idem: Idempotency) -> None:
    """list[Model], Model | None and list[Struct] keep their items' types on replay."""

    @idem.idempotent(serializer=TypedSerializer())
    def many(n: int) -> list[PydOrder]:
        return [make_pyd(f"o-{i}") for i in range(n)]

    @idem.idempotent(serializer=TypedSerializer())
    def maybe(found: bool) -> PydOrder | None:
        return make_pyd("o") if found else None

    @idem.idempotent(serializer=TypedSerializer())
    def structs(n: int) -> list[StructOrder]:
        return [make_struct(str(i)) for i in range(n)]

    assert many(2) == many(2) == [make_pyd("o-0"), make_pyd("o-1")]
    assert all(type(o) is PydOrder for o in many(2))
    assert maybe(True) == maybe(True) == make_pyd("o")
    assert maybe(False) is None
    assert maybe(False) is None
    assert structs(1) == structs(1) == [make_struct("0")]


def test_serializer_on_the_idempotency_object_binds_per_function(tmp_path: Path) -> None:
    """Idempotency(serializer=TypedSerializer()) binds each decorated function to its own type."""
    idem = Idempotency(f"sqlite:///{tmp_path / 'i.db'}", serializer=TypedSerializer())

    @idem.idempotent
    def pyd(order_id: str) -> PydOrder:
        return make_pyd(order_id)

    @idem.idempotent
    def dc(order_id: str) -> DcOrder:
        return make_dc(order_id)

    pyd("a"), dc("a")
    assert type(pyd("a")) is PydOrder
    assert type(dc("a")) is DcOrder
    idem.close()


# -- what cannot be kept ---------------------------------------------------------------------


def test_a_result_of_another_type_is_an_error_and_not_run_twice(idem: Idempotency) -> None:
    """Returning a dict where the annotation says PydOrder: SerializationError with the live
    value; the retry is refused (OutcomeNotStoredError), the body is not run again."""
    runs: list[int] = []

    @idem.idempotent(serializer=TypedSerializer())
    def create(order_id: str) -> PydOrder:
        runs.append(1)
        return {"id": order_id}  # type: ignore[return-value]

    with pytest.raises(SerializationError, match="keeps PydOrder results, not dict") as info:
        create("o-1")
    assert info.value.value == {"id": "o-1"}
    with pytest.raises(OutcomeNotStoredError):
        create("o-1")
    assert runs == [1]


@pytest.mark.parametrize("flavor", list(MAKERS))
def test_a_subclass_is_refused(flavor: str) -> None:
    """A subclass would replay as its base: refused, for every backend."""
    tp, make = MAKERS[flavor]
    value = make("o")
    sub = type("Sub", (tp,), {})
    if flavor == "dataclass":
        sub = dataclasses.dataclass(sub)
        instance = sub(**{f.name: getattr(value, f.name) for f in dataclasses.fields(tp)})
    elif flavor == "pydantic":
        instance = sub(**value.model_dump())
    else:
        instance = sub(**msgspec.structs.asdict(value))
    with pytest.raises(SerializationError, match="Sub"):
        serializer_for(tp).dumps(instance)


def test_a_generic_holding_another_type_is_refused() -> None:
    """list[Model] holding a dict fails at the first call, not at the replay."""
    for serializer in (PydanticSerializer(list[PydOrder]), MsgspecSerializer(list[StructOrder])):
        with pytest.raises(SerializationError, match="cannot keep this result"):
            serializer.dumps([{"id": "x"}])
    with pytest.raises(SerializationError, match="expected Line, got dict"):
        DataclassSerializer(list[Line]).dumps([{"sku": "x", "qty": 1}])


def test_a_dataclass_field_json_cannot_hold_is_refused_at_decoration(idem: Idempotency) -> None:
    """datetime, set, bytes, untagged unions, int-keyed dicts: refused when decorating, with
    the field named and the way out."""

    def stamped() -> Stamped:
        raise AssertionError("never called")

    with pytest.raises(SerializationError, match=r"Stamped\.at: JSON cannot hold a datetime"):
        idem.idempotent(serializer=TypedSerializer())(stamped)
    for cls, what in [(Tagged, "tags"), (Either, "union"), (Keyed, "keys are strings")]:
        with pytest.raises(SerializationError, match=what):
            DataclassSerializer(cls)
    with pytest.raises(SerializationError, match="bytes"):
        DataclassSerializer(bytes)


def test_a_missing_annotation_is_refused_at_decoration(idem: Idempotency) -> None:
    """TypedSerializer() on an unannotated function says so when decorating."""

    def bare(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(SerializationError, match="no return annotation"):
        idem.idempotent(serializer=TypedSerializer())(bare)


def test_an_unbound_typed_serializer_says_how_to_bind_it() -> None:
    """TypedSerializer() used outside @idempotent has no type: a clear error, not a guess."""
    with pytest.raises(SerializationError, match="bound by @idempotent"):
        TypedSerializer().dumps(1)


def test_pydantic_and_msgspec_refuse_types_they_cannot_encode() -> None:
    """A type the backend has no schema for is refused at construction."""

    class Opaque:
        pass

    with pytest.raises(SerializationError, match="pydantic cannot keep"):
        PydanticSerializer(Opaque)
    with pytest.raises(SerializationError, match=r"does not know .*Opaque"):
        MsgspecSerializer(Opaque)
    with pytest.raises(SerializationError, match=r"does not know .*Opaque"):
        MsgspecSerializer(list[Opaque])


# -- the stored form -------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", list(MAKERS))
def test_payload_is_plain_json_never_pickle(flavor: str) -> None:
    """Every typed serializer writes JSON (data, not code) under the envelope name json."""
    tp, make = MAKERS[flavor]
    serializer = serializer_for(tp)
    assert serializer.name == "json"
    assert isinstance(json.loads(serializer.dumps(make("o"))), dict)


def test_records_written_as_plain_json_replay_typed(tmp_path: Path) -> None:
    """Switching a function from JSONSerializer to a typed one keeps today's records: they
    replay validated into the type."""
    url = f"sqlite:///{tmp_path / 'i.db'}"
    plain = Idempotency(url, serializer=JSONSerializer())
    typed = Idempotency(url)

    @plain.idempotent(name="create")
    def create_v1(order_id: str) -> dict[str, Any]:
        return {"sku": order_id, "qty": 2}

    @typed.idempotent(name="create", serializer=TypedSerializer())
    def create_v2(order_id: str) -> Line:
        raise AssertionError("the record replays; the body does not run")

    assert create_v1("x") == {"sku": "x", "qty": 2}
    assert create_v2("x") == Line("x", 2)
    plain.close()
    typed.close()


def test_a_changed_return_type_fails_at_replay_not_with_a_wrong_object(tmp_path: Path) -> None:
    """A record that does not validate as the new type raises SerializationError on replay."""
    url = f"sqlite:///{tmp_path / 'i.db'}"
    idem = Idempotency(url)

    @idem.idempotent(name="op", serializer=TypedSerializer())
    def v1(x: str) -> Line:
        return Line(x, 1)

    @idem.idempotent(name="op", serializer=TypedSerializer())
    def v2(x: str) -> PydOrder:
        raise AssertionError("not run: the key is taken")

    v1("k")
    with pytest.raises(SerializationError, match="cannot decode the stored outcome"):
        v2("k")
    idem.close()


# -- the standard-library backend ------------------------------------------------------------


def test_dataclass_codec_is_strict_and_forgiving_where_it_should_be() -> None:
    """bool is not an int, an int is a float; missing keys take defaults, extra keys drop."""

    @dataclasses.dataclass
    class Point:
        x: int
        y: float
        label: str = "p"

    s = DataclassSerializer(Point)
    with pytest.raises(SerializationError, match="expected int, got bool"):
        s.dumps(Point(True, 1.0))
    assert s.loads(s.dumps(Point(1, 2))) == Point(1, 2.0)
    assert type(s.loads(s.dumps(Point(1, 2))).y) is float
    assert s.loads(b'{"x": 1, "y": 2.5, "gone": 1}') == Point(1, 2.5)
    with pytest.raises(SerializationError, match="cannot keep this result as JSON"):
        DataclassSerializer(dict[str, Any]).dumps({"nan": float("nan")})


def test_recursive_dataclasses_round_trip() -> None:
    """A dataclass that refers to itself is compiled once and round trips."""

    @dataclasses.dataclass
    class Node:
        name: str
        children: list[Node] = dataclasses.field(default_factory=list)

    globals()["Node"] = Node  # get_type_hints resolves the string annotation from here
    try:
        tree = Node("root", [Node("a"), Node("b", [Node("c")])])
        s = DataclassSerializer(Node)
        assert s.loads(s.dumps(tree)) == tree
    finally:
        del globals()["Node"]


def test_importing_serializers_imports_neither_pydantic_nor_msgspec() -> None:
    """The extras stay optional: idempo.serializers and a dataclass round trip import neither."""
    code = (
        "import sys, dataclasses\n"
        "from idempo.serializers import TypedSerializer\n"
        "@dataclasses.dataclass\n"
        "class A:\n"
        "    x: int\n"
        "s = TypedSerializer(A)\n"
        "assert s.loads(s.dumps(A(1))) == A(1)\n"
        "assert 'pydantic' not in sys.modules and 'msgspec' not in sys.modules, sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_result_that_contains_itself_is_a_serialization_error() -> None:
    """The JSON encoders run without a circular check (built once, shared by threads): a cycle
    still ends in SerializationError, with the live value on it, never a RecursionError."""
    from idempo.core.outcome import JSONSerializer
    from idempo.errors import SerializationError

    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(SerializationError) as caught:
        JSONSerializer().dumps(loop)
    assert caught.value.value is loop


def test_json_round_trips_the_text_it_writes() -> None:
    """The decoder skips json.loads' encoding detection; a BOM or a str still goes through it."""
    from idempo.core.outcome import JSONSerializer, json_loads

    value = {"é": ["\U0001f600", 1.5, None, True], "k": "v"}
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(value)) == value
    assert json_loads(b"\xef\xbb\xbf[1]") == [1]
    assert json_loads(bytearray(b"[2]")) == [2]
