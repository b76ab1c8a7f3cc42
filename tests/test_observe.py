"""OpenTelemetry and hooks, from the one lifecycle: DESIGN §9's names and attributes for a
function, an HTTP request on every adapter, and a consumed message, read back with the SDK's
in-memory metric reader and span exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from idempo import Idempotency, observe
from idempo.consumers import Consumer, Delivery, Status
from idempo.core.fingerprint import fingerprint
from idempo.errors import KeyReuseError
from idempo.observe import Event, Hooks
from idempo.stores.memory import MemoryStore
from tests.http_rig import StoreSpec, serve_http

READER = InMemoryMetricReader()
SPANS = InMemorySpanExporter()
# The global providers can be set once per process: this module sets them for the session.
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_tracer_provider)


@pytest.fixture(autouse=True)
def sdk() -> Iterator[None]:
    observe.refresh()  # idempo looks at the providers once a second; look now
    SPANS.clear()
    return


def counts(name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    """The cumulative value of every point of counter ``name``, by its attributes."""
    out: dict[tuple[tuple[str, Any], ...], float] = {}
    data = READER.get_metrics_data()
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attributes = tuple(sorted(point.attributes.items()))
                    out[attributes] = getattr(point, "value", None) or getattr(point, "count", 0)
    return out


class Delta:
    """What counter ``name`` gained between construction and :meth:`__call__`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.before = counts(name)

    def __call__(self) -> dict[tuple[tuple[str, Any], ...], float]:
        after = counts(self.name)
        return {k: v - self.before.get(k, 0) for k, v in after.items() if v - self.before.get(k, 0)}


def operation(kind: str, outcome: str, store: str) -> tuple[tuple[str, Any], ...]:
    return tuple(
        sorted({"idempo.kind": kind, "idempo.outcome": outcome, "idempo.store": store}.items())
    )


def test_a_function_reports_operations_durations_and_spans(tmp_path: Path) -> None:
    """executed, replayed, mismatch and failed for a decorated function, the store's round
    trips as idempo.store.duration points and child spans with no key in clear."""
    idem = Idempotency(store=f"sqlite:///{tmp_path / 'idempo.db'}")
    ops, durations = Delta("idempo.operations"), Delta("idempo.store.duration")

    @idem.idempotent(key=lambda order, amount: order)
    def charge(order: str, amount: int) -> dict[str, int]:
        if amount < 0:
            raise ValueError("negative")
        return {"amount": amount}

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        charge("order-secret-1", 10)
        charge("order-secret-1", 10)
        with pytest.raises(KeyReuseError):
            charge("order-secret-1", 11)
        with pytest.raises(ValueError, match="negative"):
            charge("order-secret-2", -1)
    idem.close()
    assert ops() == {
        operation("function", "executed", "sqlite"): 1,
        operation("function", "replayed", "sqlite"): 1,
        operation("function", "mismatch", "sqlite"): 1,
        operation("function", "failed", "sqlite"): 1,
    }
    round_trips = {dict(k)["idempo.store.operation"]: v for k, v in durations().items()}
    assert round_trips == {"claim": 4, "complete": 1, "release": 1}
    assert all(dict(k)["idempo.store"] == "sqlite" for k in durations())
    spans = [s for s in SPANS.get_finished_spans() if s.name.startswith("idempo.store.")]
    assert sorted(s.name for s in spans) == sorted(
        ["idempo.store.claim"] * 4 + ["idempo.store.complete", "idempo.store.release"]
    )
    for span in spans:
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id
        assert span.kind is trace.SpanKind.CLIENT
        values = [str(v) for v in (span.attributes or {}).values()]
        assert not any("order-secret" in v for v in values)  # a hash at most
        assert span.attributes is not None
        assert len(str(span.attributes["idempo.key.hash"])) == 16


def test_takeovers_are_counted_and_hooked() -> None:
    """An expired claim taken over adds to idempo.takeovers and calls on_takeover."""
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])  # the store's clock, moved by hand
    seen: list[Event] = []
    idem = Idempotency(store=store, hooks=Hooks(on_takeover=seen.append))
    takeovers = Delta("idempo.takeovers")

    @idem.idempotent(key=lambda k: k, scope="f", name="op", fingerprint=lambda k: "same")
    def op(k: str) -> int:
        return 1

    # A worker that claimed the key, then crashed: its lease runs out.
    store.claim("f/op", "k", fingerprint("same"), "dead-token", lease=30, ttl=60)
    now[0] += 31
    assert op("k") == 1
    assert sum(takeovers().values()) == 1
    assert [(e.outcome, e.scope, e.key) for e in seen] == [("takeover", "f/op", "k")]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi", "django"])
def test_http_reports_on_every_adapter_and_a_hook_adds_a_replay_header(
    adapter: str, tmp_path: Path
) -> None:
    """executed, replayed and mismatch as idempo.kind=http; on_replay appends a header to the
    replayed response, on every adapter (one mechanism, in the HTTP front)."""

    def mark(event: Event) -> None:
        assert event.headers is not None
        event.headers.append(("x-idempo-replay", f"{event.kind}:{event.outcome}"))

    ops = Delta("idempo.operations")
    store = StoreSpec.of("sqlite", tmp_path)
    with serve_http(adapter, store, hooks=Hooks(on_replay=mark)) as http:
        http.fresh()
        with http.client() as c:
            first = c.post("/charges", json={"amount": 1}, headers=http.key("h1"))
            again = c.post("/charges", json={"amount": 1}, headers=http.key("h1"))
            other = c.post("/charges", json={"amount": 2}, headers=http.key("h1"))
    assert first.status_code == 201
    assert "x-idempo-replay" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-idempo-replay"] == "http:replayed"
    assert other.status_code == 422
    assert ops() == {
        operation("http", "executed", "sqlite"): 1,
        operation("http", "replayed", "sqlite"): 1,
        operation("http", "mismatch", "sqlite"): 1,
    }


class ListDelivery(Delivery[dict[str, str]]):
    """A delivery whose broker answers are recorded (the consumer knows no broker)."""

    def __init__(self, message: dict[str, str]) -> None:
        super().__init__(message, attempt=1)
        self.acks = 0

    async def ack(self) -> None:
        self.acks += 1

    async def retry(self, delay: float) -> None:
        pass

    async def dead_letter(self, reason: str) -> None:
        pass


def test_a_consumed_message_reports_as_message() -> None:
    """A message processed, then redelivered: executed and replayed as idempo.kind=message,
    and the replay hook sees the message id."""
    seen: list[Event] = []
    counted: list[str] = []
    ops = Delta("idempo.operations")

    async def handle(message: dict[str, str]) -> str:
        return message["body"]

    async def run() -> list[Status]:
        consumer = Consumer(
            handle,
            store=observe_store(),
            name="billing",
            message_id=lambda m: m["id"],
            hooks=Hooks(on_replay=seen.append, on_outcome=lambda e: counted.append(e.outcome)),
        )
        out = []
        for _ in range(2):
            result = await consumer.process(ListDelivery({"id": "m-1", "body": "paid"}))
            out.append(result.status)
        return out

    assert asyncio.run(run()) == [Status.PROCESSED, Status.REPLAYED]
    assert ops() == {
        operation("message", "executed", "memory"): 1,
        operation("message", "replayed", "memory"): 1,
    }
    assert [(e.kind, e.outcome, e.scope, e.key) for e in seen] == [
        ("message", "replayed", "billing", "m-1")
    ]
    assert counted == ["executed", "replayed"]


def observe_store() -> Any:
    from idempo.stores.memory import AsyncMemoryStore

    return AsyncMemoryStore()


def test_a_hook_that_raises_never_breaks_the_call() -> None:
    """An exception in a hook is logged and ignored: the replay still returns its value."""

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    idem = Idempotency(store=MemoryStore(), hooks=Hooks(on_replay=broken))

    @idem.idempotent(key=lambda x: x)
    def double(x: str) -> str:
        return x * 2

    assert double("a") == "aa"
    assert double("a") == "aa"
