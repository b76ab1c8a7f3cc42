"""Celery tasks that run their effect once: ``IdempotentTask``, a task base class.

    app.conf.idempo_store = "redis://localhost:6379/1"

    @app.task(base=IdempotentTask, acks_late=True)
    def charge(order_id: str, amount: int) -> dict: ...

With ``acks_late`` a broker redelivers a task whose worker died before the ack (SIGKILL, OOM,
a Redis broker's visibility timeout), and a producer may publish one task twice. Each delivery
runs the engine's one lifecycle (:mod:`idempo._sync.engine`) under (scope = the task's name,
key = the task id, or ``idempo_key(*args, **kwargs)``, fingerprint = the arguments)::

    acquire ├─ Replay ─────────▶ return the first run's stored result (body not run)
            ├─ Reject(in flight) ▶ self.retry(countdown=until the holder's lease ends)
            ├─ Reject(reused) ──▶ raise KeyReuseError (the task fails; acked)
            └─ Held ─▶ body under held.heartbeat()
                        ├─ returned ─▶ held.finish(value) ─▶ return value
                        └─ raised ───▶ release the claim ─▶ raise (Celery retries as usual)

Settings (``app.conf``; a task attribute of the same name, e.g. ``@app.task(...,
idempo_lease=120)``, overrides the app's): ``idempo_store`` (required: a store URL, or a sync
:class:`~idempo.stores.base.Store`), ``idempo_store_options`` (a dict for the store's
constructor), ``idempo_ttl``, ``idempo_lease``, ``idempo_wait``, ``idempo_max_outcome_bytes``,
``idempo_in_progress_delay`` (a cap on a duplicate's retry countdown), ``idempo_serializer``
(an idempo Serializer; default: Celery's ``result_serializer`` through kombu, so a replay
gives back what the result backend would). See docs/celery.md.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

try:
    import celery
    import kombu.serialization
    from celery.exceptions import ImproperlyConfigured
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "idempo.celery needs Celery: pip install 'idempo[celery]'", name=exc.name
    ) from exc

from idempo._sync.engine import Engine, Held
from idempo.core.decide import Reject, Replay
from idempo.core.keys import validate_key
from idempo.core.operation import Operation
from idempo.core.policy import DEFAULT_LEASE, DEFAULT_MAX_OUTCOME_BYTES, DEFAULT_TTL, Policy
from idempo.errors import (
    InProgressError,
    InvalidKeyError,
    LeaseLostError,
    SerializationError,
    StoreError,
    StoreUnavailableError,
)
from idempo.stores import open_store
from idempo.stores.base import Store

__all__ = ["IdempotentTask", "ResultSerializer"]

log = logging.getLogger("idempo.celery")

# A duplicate retries just after the holder's lease ends (a crashed holder can be taken over
# then), by this margin; a store that is down is retried with a backoff up to the cap.
_MARGIN = 0.05
_STORE_RETRY_CAP = 60.0
_UNSET = object()

# kombu's registry, typed here (its functions carry no annotations).
_kombu_dumps: Callable[..., tuple[str, str, str | bytes]] = kombu.serialization.dumps
_kombu_loads: Callable[..., Any] = kombu.serialization.loads


class ResultSerializer:
    """Keeps results as Celery's result serializer writes them (kombu's registry: ``json`` by
    default, with its datetime, UUID, Decimal and bytes support), so a replayed value is one
    Celery can send to the result backend again, of the same type the first run returned."""

    def __init__(self, codec: str = "json") -> None:
        self.codec = codec
        self.name = f"celery-{codec}"
        self._content_type, self._encoding, _ = _kombu_dumps(None, serializer=codec)

    def dumps(self, value: Any) -> bytes:
        try:
            _, encoding, payload = _kombu_dumps(value, serializer=self.codec)
        except Exception as exc:
            raise SerializationError(
                f"Celery's {self.codec!r} serializer cannot keep a {type(value).__name__} "
                f"result ({exc})",
                value=value,
            ) from exc
        return payload if isinstance(payload, bytes) else payload.encode(encoding or "utf-8")

    def loads(self, data: bytes) -> Any:
        return _kombu_loads(data, self._content_type, self._encoding, accept={self._content_type})


class IdempotentTask(celery.Task):  # type: ignore[misc]  # celery ships no type hints
    """A Celery task base whose body runs once per task id (or ``idempo_key``).

    A redelivered or duplicate task returns the first run's stored result without running its
    body; ``self.request.idempo_replayed`` says which happened (signal handlers can read it).
    A body that raises releases its claim, so Celery's own retry or redelivery runs it again.
    A duplicate that finds another worker running the task is retried (``self.retry``) just
    after that worker's lease ends; these retries are not limited by ``max_retries``, since the
    task is not failing, only waiting (a crashed holder is taken over then).

    ``idempo_key``: a callable of the task's arguments returning the key (default: the task
    id). ``idempo_fingerprint``: a callable of the arguments returning what identifies the
    request (default: all of them); a key reused with other arguments fails with
    KeyReuseError. Called directly (``task(...)``, no task id) without ``idempo_key``, the body
    runs as a plain function call.
    """

    idempo_key: Callable[..., str] | None = None
    idempo_fingerprint: Callable[..., Any] | None = None
    idempo_ttl: float | None = None
    idempo_lease: float | None = None
    idempo_wait: float | None = None
    idempo_max_outcome_bytes: int | None = None
    idempo_in_progress_delay: float | None = None

    _idempo_operation: Operation | None = None
    _idempo_policy: Policy | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        in_worker = not request.called_directly and not request.is_eager
        operation = self._operation()
        scope, derived, fingerprint = operation.identify(args, kwargs)
        if operation.key is not None:
            key = derived
        elif request.id:
            key = _task_key(request.id)
        else:
            return super().__call__(*args, **kwargs)
        if not request.called_directly:
            request.idempo_replayed = False
        policy = self._policy()
        engine = Engine(_store_for(self.app))
        try:
            decision = engine.acquire(scope, key, fingerprint, policy)
        except StoreUnavailableError as exc:
            if not in_worker:
                raise
            delay = min(_STORE_RETRY_CAP, exc.retry_after * 2 ** min(request.retries, 6))
            log.warning(
                "idempo: %s[%s]: store unavailable (%s); not run, retrying in %.1fs",
                self.name,
                key,
                exc,
                delay,
            )
            raise self._retry_waiting(exc, delay) from None
        match decision:
            case Replay():
                log.info("idempo: %s[%s] already ran; returning its stored result", self.name, key)
                if not request.called_directly:
                    request.idempo_replayed = True
                return engine.replay(decision.outcome, scope=scope, key=key, policy=policy)
            case Reject(error=InProgressError() as busy) if in_worker:
                delay = busy.retry_after + _MARGIN
                cap = self._setting("in_progress_delay", None)
                if cap is not None:
                    delay = min(float(cap), delay)
                log.info(
                    "idempo: %s[%s] is running elsewhere; retrying in %.2fs", self.name, key, delay
                )
                raise self._retry_waiting(busy, delay)
            case Reject():
                raise decision.error
        return self._run(decision, args, kwargs)

    def _run(self, held: Held, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # A takeover (held.takeover) is logged by the engine: the earlier worker stopped
        # mid-task, so its effects may be partly applied.
        try:
            with held.heartbeat():
                value = super().__call__(*args, **kwargs)
        except BaseException:
            # Not kept: free the key so that Celery's retry (or a redelivery) runs the body.
            held.release_quietly()
            raise
        try:
            return held.finish(value, unstorable="log")
        except (LeaseLostError, StoreUnavailableError, StoreError) as exc:
            # The body ran and its value is live: the task succeeded, so Celery gets it. A
            # retry from here would run the body again once the claim frees itself (lost
            # lease: another worker took over and records its own run).
            log.error(
                "idempo: %s[%s] ran but its result is not recorded (%s: %s); a later duplicate "
                "may run it again",
                self.name,
                held.key,
                type(exc).__name__,
                exc,
            )
            return value

    def _retry_waiting(self, exc: Exception, countdown: float) -> Exception:
        """``self.retry`` that does not count against ``max_retries``: waiting for another
        worker or for the store is not the task failing, and giving up would lose it."""
        previous = self.__dict__.get("override_max_retries", _UNSET)
        try:
            retry: Exception = self.retry(
                exc=exc, countdown=countdown, max_retries=self.request.retries + 1, throw=False
            )
        finally:
            # Celery keeps an explicit max_retries on the task object for autoretry_for; do
            # not let this one leak into the task's next execution.
            if previous is _UNSET:
                self.__dict__.pop("override_max_retries", None)
            else:
                self.override_max_retries = previous
        return retry

    def _operation(self) -> Operation:
        """Scope (the task's name), key and fingerprint from the arguments; built once."""
        if self._idempo_operation is None:
            self._idempo_operation = Operation(
                self.run,
                key=_plain(self, "idempo_key"),
                scope="",
                fingerprint=_plain(self, "idempo_fingerprint"),
                name=self.name,
            )
        return self._idempo_operation

    def _policy(self) -> Policy:
        if self._idempo_policy is None:
            conf = self.app.conf
            serializer = conf.get("idempo_serializer") or ResultSerializer(
                conf.get("result_serializer") or "json"
            )
            self._idempo_policy = Policy(
                ttl=float(self._setting("ttl", DEFAULT_TTL)),
                lease=float(self._setting("lease", DEFAULT_LEASE)),
                wait=float(self._setting("wait", 0.0)),
                max_outcome_bytes=int(
                    self._setting("max_outcome_bytes", DEFAULT_MAX_OUTCOME_BYTES)
                ),
                serializer=serializer,
            )
        return self._idempo_policy

    def _setting(self, name: str, default: float | None) -> Any:
        value = getattr(self, f"idempo_{name}", None)
        if value is None:
            value = self.app.conf.get(f"idempo_{name}")
        return default if value is None else value


def _plain(task: celery.Task, name: str) -> Any:
    """A callable task attribute as given: a function set by ``@app.task(idempo_key=...)`` is
    a class attribute, which plain attribute access would bind to the task."""
    value = inspect.getattr_static(task, name, None)
    return value.__func__ if isinstance(value, staticmethod) else value


def _task_key(task_id: str) -> str:
    try:
        return validate_key(task_id)
    except InvalidKeyError as exc:
        raise InvalidKeyError(
            f"task id {task_id!r} is not a valid idempotency key ({exc}); use ids of 1-255 "
            "printable ASCII characters, or set idempo_key"
        ) from exc


# One store per app and process: a prefork child must not use connections its parent opened.
_stores: weakref.WeakKeyDictionary[celery.Celery, tuple[int, Store]] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def _store_for(app: celery.Celery) -> Store:
    pid = os.getpid()
    cached = _stores.get(app)
    if cached is not None and cached[0] == pid:
        return cached[1]
    with _stores_lock:
        cached = _stores.get(app)
        if cached is not None and cached[0] == pid:
            return cached[1]
        configured = app.conf.get("idempo_store")
        if configured is None:
            raise ImproperlyConfigured(
                "idempo.celery: set app.conf.idempo_store to the idempo store URL (e.g. "
                "'redis://localhost:6379/1' or 'postgresql://app@db/app'); IdempotentTask "
                "keeps each task's result there"
            )
        if isinstance(configured, str):
            store = open_store(configured, **(app.conf.get("idempo_store_options") or {}))
        elif isinstance(configured, Store):
            store = configured
        else:
            raise ImproperlyConfigured(
                f"app.conf.idempo_store must be a store URL or a sync Store, not "
                f"{type(configured).__name__}"
            )
        _stores[app] = (pid, store)
        return store
