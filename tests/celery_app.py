"""The Celery app the worker processes of tests/test_celery.py run.

    python -m celery -A tests.celery_app worker --pool=solo -Q QUEUE ...

Configured from the environment (set by the test): IDEMPO_CELERY_BROKER, IDEMPO_CELERY_QUEUE,
IDEMPO_CELERY_STORE (+ IDEMPO_CELERY_STORE_OPTIONS, JSON), IDEMPO_CELERY_LEASE, and
IDEMPO_CELERY_EVENTS + IDEMPO_CELERY_PREFIX: the Redis where the tasks count their effects and
report what happened (both workers and the test see it). A one-shot flag there,
``hold:POINT:ORDER``, makes a task stop at POINT until it is killed or ``release:ORDER`` is pushed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import kombu.serialization
import redis
from celery import Celery, signals
from kombu import Queue

from idempo.celery import IdempotentTask

# The longest a held task waits to be killed; the tests kill it within seconds.
HOLD_TIMEOUT = 60


def broker_options(broker: str, prefix: str) -> dict[str, Any]:
    """Transport options for the test's broker, shared by the workers and the producer."""
    if broker.startswith("redis"):
        # A short visibility timeout, so that a killed worker's message is redelivered within
        # seconds; the prefix keeps this test's queues and unacked index apart.
        return {
            "global_keyprefix": f"{prefix}broker:",
            "visibility_timeout": 5,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    return {}


def configure(app: Celery, *, broker: str, queue: str, prefix: str) -> None:
    """What the workers and the producer must agree on."""
    app.conf.update(
        broker_url=broker,
        broker_transport_options=broker_options(broker, prefix),
        broker_connection_retry_on_startup=True,
        task_default_queue=queue,
        # Not auto-deleted (the queue must outlive a killed worker to redeliver its message);
        # expires if a test run is killed before its teardown deletes it.
        task_queues=[Queue(queue, durable=False, queue_arguments={"x-expires": 600_000})],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
    )


app = Celery("tests.celery_app")
PREFIX = os.environ.get("IDEMPO_CELERY_PREFIX", "idempo-celery:")
if "IDEMPO_CELERY_BROKER" in os.environ:
    configure(
        app,
        broker=os.environ["IDEMPO_CELERY_BROKER"],
        queue=os.environ["IDEMPO_CELERY_QUEUE"],
        prefix=PREFIX,
    )
    app.conf.idempo_store = os.environ["IDEMPO_CELERY_STORE"]
    app.conf.idempo_store_options = json.loads(os.environ.get("IDEMPO_CELERY_STORE_OPTIONS", "{}"))
    app.conf.idempo_lease = float(os.environ.get("IDEMPO_CELERY_LEASE", "3"))

_events: redis.Redis | None = None


def events() -> redis.Redis:
    global _events
    if _events is None:
        _events = redis.Redis.from_url(os.environ["IDEMPO_CELERY_EVENTS"])
    return _events


def report(kind: str, **fields: Any) -> None:
    """Tell the test what happened (kombu's JSON: results hold datetimes)."""
    _, _, payload = kombu.serialization.dumps(fields, serializer="json")
    events().rpush(f"{PREFIX}{kind}", payload)


def hold(point: str, order: str) -> None:
    """Stop here, once, if the test asked for it: say so, then wait to be killed or let go."""
    if events().getdel(f"{PREFIX}hold:{point}:{order}"):
        events().rpush(f"{PREFIX}held", f"{point}:{order}:{os.getpid()}")
        deadline = time.monotonic() + HOLD_TIMEOUT
        # In short rounds: redis-py's socket timeout (5 s by default) would cut a long one.
        while time.monotonic() < deadline:
            if events().blpop([f"{PREFIX}release:{order}"], timeout=1):
                return


def effect(order: str) -> None:
    events().incr(f"{PREFIX}effects:{order}")


def receipt(order: str, amount: int) -> dict[str, Any]:
    # A fresh id per run: equal receipts mean a replay, not a second run. The datetime
    # checks that Celery's JSON (kombu's) keeps its type through the store.
    return {"order": order, "amount": amount, "run": uuid.uuid4().hex, "at": datetime.now(UTC)}


@app.task(base=IdempotentTask, acks_late=True)
def charge(order: str, amount: int, work: float = 0.0) -> dict[str, Any]:
    hold("before_effect", order)
    effect(order)
    if work:
        time.sleep(work)  # simulated work, so that duplicates overlap
    hold("after_effect", order)
    return receipt(order, amount)


@app.task(base=IdempotentTask, acks_late=True, idempo_key=lambda order, amount: order)
def charge_order(order: str, amount: int) -> dict[str, Any]:
    effect(order)
    return receipt(order, amount)


class Flaky(Exception):
    pass


@app.task(
    base=IdempotentTask,
    acks_late=True,
    autoretry_for=(Flaky,),
    retry_kwargs={"countdown": 0.1, "max_retries": 3},
)
def flaky(order: str, amount: int) -> dict[str, Any]:
    if events().getdel(f"{PREFIX}fail:{order}"):
        raise Flaky(order)
    effect(order)
    return receipt(order, amount)


@signals.worker_ready.connect
def _ready(sender: Any, **_: Any) -> None:
    events().rpush(f"{PREFIX}ready", str(sender.hostname))


@signals.task_success.connect
def _succeeded(sender: Any, result: Any, **_: Any) -> None:
    request = sender.request
    report(
        "results",
        id=request.id,
        task=sender.name,
        result=result,
        replayed=getattr(request, "idempo_replayed", None),
        retries=request.retries,
        hostname=request.hostname,
    )


@signals.task_failure.connect
def _failed(sender: Any, task_id: str, exception: BaseException, **_: Any) -> None:
    report("failures", id=task_id, task=sender.name, error=type(exception).__name__)


@signals.task_retry.connect
def _retried(request: Any, reason: Any, **_: Any) -> None:
    # ``reason`` is Celery's Retry; the error behind it is on ``exc``.
    report("retried", id=request.id, reason=type(getattr(reason, "exc", reason)).__name__)


@signals.task_postrun.connect
def _after_record(task_id: str, state: str, args: Any, **_: Any) -> None:
    # After the body and the record, before the ack: the classic acks_late duplicate window.
    if state == "SUCCESS" and args:
        hold("after_record", str(args[0]))
