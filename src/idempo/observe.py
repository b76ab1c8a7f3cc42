"""What idempo reports: OpenTelemetry metrics and spans, and hooks, fed by the one lifecycle.

Every guarded operation ends in one *outcome*, reported once by the driver that ran it (the
decorator and its friends: ``function``; the HTTP front: ``http``; the consumer: ``message``):

=====================  ===========================================================
``executed``           it ran and its outcome was recorded
``replayed``           it had run: the stored outcome was returned
``in_progress``        refused: another execution holds the key (409)
``mismatch``           refused: the key was used for another request (422)
``not_stored``         it had run, but its outcome was not kept: refused
``store_unavailable``  the store could not be reached (503; fail-open passes)
``lease_lost``         it ran, but another execution took the key over: not recorded
``failed``             it raised (or answered 5xx): nothing kept, the key released
=====================  ===========================================================

**OpenTelemetry** (``pip install 'idempo[otel]'``: the API only; your application configures the
SDK and exporters). Through the global providers: the counter ``idempo.operations``
(``idempo.kind``, ``idempo.outcome``, ``idempo.store``), the counter ``idempo.takeovers``, the
histogram ``idempo.store.duration`` (seconds; ``idempo.store``, ``idempo.store.operation``), and
one span per store round trip, a child of the caller's current span, carrying a hash of the
key at most. Until an SDK is configured nothing is measured: each store call pays one check.

**Hooks** (``hooks=Hooks(on_replay=...)`` on ``Idempotency``, the middlewares and the
consumers): called with an :class:`Event` for the outcomes they name. A hook may append to
``event.headers`` on an HTTP replay (the response about to be sent); an exception in a hook is
logged, never raised into the request.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = ["OUTCOMES", "Event", "Hooks", "Observer", "Outcome", "refresh", "store_kind"]

log = logging.getLogger("idempo")

Kind = Literal["function", "http", "message"]
Outcome = Literal[
    "executed",
    "replayed",
    "in_progress",
    "mismatch",
    "not_stored",
    "store_unavailable",
    "lease_lost",
    "failed",
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


@dataclass(slots=True)
class Event:
    """One outcome of one guarded operation, as hooks see it.

    ``kind``: function, http or message. ``store``: the store's URL scheme. ``error``: what
    refused or failed it, if anything. ``headers``: on an HTTP replay, the response headers
    about to be sent (append to add one); None elsewhere.
    """

    kind: Kind
    outcome: Outcome | Literal["takeover"]
    scope: str
    key: str
    store: str
    error: BaseException | None = None
    headers: list[tuple[str, str]] | None = None


EventHook = Callable[[Event], object]


@dataclass(frozen=True, slots=True)
class Hooks:
    """Callbacks for what idempo does; each takes an :class:`Event`.

    ``on_replay``: a stored outcome was returned. ``on_conflict``: refused, in progress (409).
    ``on_mismatch``: refused, key reused with another request (422). ``on_takeover``: an
    expired claim was taken over (its holder stopped mid-way). ``on_not_stored``: refused, the
    first outcome was not kept. ``on_outcome``: every outcome, whatever it is (to count what
    idempo does not).
    """

    on_replay: EventHook | None = None
    on_conflict: EventHook | None = None
    on_mismatch: EventHook | None = None
    on_takeover: EventHook | None = None
    on_not_stored: EventHook | None = None
    on_outcome: EventHook | None = None

    def for_outcome(self, outcome: str) -> EventHook | None:
        return {
            "replayed": self.on_replay,
            "in_progress": self.on_conflict,
            "mismatch": self.on_mismatch,
            "not_stored": self.on_not_stored,
            "takeover": self.on_takeover,
        }.get(outcome)


class _Telemetry:
    """The OpenTelemetry instruments, bound through the global providers (the API only)."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace

        from idempo import __version__

        self._metrics = metrics
        self._trace = trace
        meter = metrics.get_meter("idempo", __version__)
        self.tracer = trace.get_tracer("idempo", __version__)
        self.operations = meter.create_counter(
            "idempo.operations", unit="{operation}", description="Guarded operations, by outcome"
        )
        self.takeovers = meter.create_counter(
            "idempo.takeovers", unit="{claim}", description="Expired claims taken over"
        )
        self.duration = meter.create_histogram(
            "idempo.store.duration", unit="s", description="Store round trips"
        )
        self.span_kind = trace.SpanKind.CLIENT
        self.error_status = trace.Status(trace.StatusCode.ERROR)
        self._proxy_tracer = trace.ProxyTracerProvider
        self._recording = False
        self._checked_until = 0.0

    def _unset(self) -> bool:
        return type(self._metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"

    def recording(self) -> bool:
        """Whether an SDK is configured (for metrics or traces): else measure nothing. Asked
        of the global providers at most once a second, so that a check costs a clock read."""
        now = time.monotonic()
        if now >= self._checked_until:
            self._checked_until = now + 1.0
            self._recording = (
                not isinstance(self._trace.get_tracer_provider(), self._proxy_tracer)
                or not self._unset()
            )
        return self._recording


_TELEMETRY: _Telemetry | None = None
_TELEMETRY_CHECKED = False


def _telemetry() -> _Telemetry | None:
    """The instruments, or None when opentelemetry-api is not installed."""
    global _TELEMETRY, _TELEMETRY_CHECKED
    if not _TELEMETRY_CHECKED:
        _TELEMETRY_CHECKED = True
        try:
            _TELEMETRY = _Telemetry()
        except ImportError:
            _TELEMETRY = None
    return _TELEMETRY


def refresh() -> None:
    """Look at the global OpenTelemetry providers again now (idempo looks at most once a
    second): for a test, or an application, that configures its SDK after traffic began."""
    telemetry = _telemetry()
    if telemetry is not None:
        telemetry._checked_until = 0.0


def store_kind(store: object) -> str:
    """The URL scheme of a store (``memory``, ``sqlite``, ``redis``, ``postgresql``, ``mysql``),
    or its class name for a store idempo does not ship."""
    inner = getattr(store, "sync_store", store)  # a sync store served to async code
    module = type(inner).__module__
    for part, scheme in (
        ("memory", "memory"),
        ("sqlite", "sqlite"),
        ("redis", "redis"),
        ("postgres", "postgresql"),
        ("mysql", "mysql"),
    ):
        if module.startswith("idempo.stores") and part in module:
            return scheme
    return type(inner).__name__


def _key_hash(scope: str, key: str) -> str:
    return hashlib.sha256(f"{scope}\x00{key}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(slots=True)
class Observer:
    """Reports one driver's outcomes (``kind``) over one store to OpenTelemetry and the hooks.

    Built once per driver (a decorator's Idempotency, a middleware, a consumer); each report is
    a bool check when neither an SDK nor a hook wants it.
    """

    kind: Kind
    store: str
    hooks: Hooks | None = None
    _telemetry: _Telemetry | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._telemetry = _telemetry()

    @property
    def telemetry_installed(self) -> bool:
        """Whether opentelemetry-api is installed (store round trips are then wrapped)."""
        return self._telemetry is not None

    def outcome(
        self,
        outcome: Outcome,
        scope: str,
        key: str,
        *,
        error: BaseException | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        telemetry = self._telemetry
        if telemetry is not None and telemetry.recording():
            telemetry.operations.add(
                1,
                {"idempo.kind": self.kind, "idempo.outcome": outcome, "idempo.store": self.store},
            )
        if self.hooks is not None:
            self._call_hooks(outcome, scope, key, error, headers)

    def takeover(self, scope: str, key: str) -> None:
        telemetry = self._telemetry
        if telemetry is not None and telemetry.recording():
            telemetry.takeovers.add(1, {"idempo.kind": self.kind, "idempo.store": self.store})
        if self.hooks is not None and self.hooks.on_takeover is not None:
            self._call(self.hooks.on_takeover, Event(self.kind, "takeover", scope, key, self.store))

    def _call_hooks(
        self,
        outcome: Outcome,
        scope: str,
        key: str,
        error: BaseException | None,
        headers: list[tuple[str, str]] | None,
    ) -> None:
        assert self.hooks is not None
        specific = self.hooks.for_outcome(outcome)
        general = self.hooks.on_outcome
        if specific is None and general is None:
            return
        event = Event(self.kind, outcome, scope, key, self.store, error, headers)
        for hook in (specific, general):
            if hook is not None:
                self._call(hook, event)

    @staticmethod
    def _call(hook: EventHook, event: Event) -> None:
        try:
            hook(event)
        except Exception:
            log.warning("idempo: the %s hook raised; ignored", event.outcome, exc_info=True)

    # -- store round trips -------------------------------------------------------------------

    def measuring(self) -> bool:
        """Whether store round trips are being measured (an SDK is configured)."""
        telemetry = self._telemetry
        return telemetry is not None and telemetry.recording()

    @contextlib.contextmanager
    def round_trip(self, operation: str, scope: str | None, key: str | None) -> Iterator[None]:
        """Time one store round trip and wrap it in a span (call only when :meth:`measuring`).

        The span is a child of the caller's current span but is not made current itself
        (nothing runs inside a store call that could be its child): cheaper by a context
        attach and detach."""
        telemetry = self._telemetry
        assert telemetry is not None
        attributes = {"idempo.store": self.store, "idempo.store.operation": operation}
        span = telemetry.tracer.start_span(
            f"idempo.store.{operation}",
            kind=telemetry.span_kind,
            attributes=attributes
            if scope is None or key is None
            else {**attributes, "idempo.key.hash": _key_hash(scope, key)},
        )
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(telemetry.error_status)
            raise
        finally:
            telemetry.duration.record(time.perf_counter() - started, attributes)
            span.end()
