"""idempo.celery.IdempotentTask with real worker processes on real brokers.

The proof runs ``celery worker`` subprocesses (tests/celery_app.py) on the local RabbitMQ and on
Redis as broker, with the idempo store on a shared SQLite file (RabbitMQ runs) or on Redis
(Redis runs). Tasks count their effects in Redis, where both workers and the test see them, and
report their results there (the ``task_success`` signal). Workers are killed with SIGKILL
mid-task; the broker redelivers to a new worker.

Effect counts: killed before the effect (mid-task): 1 (the redelivery takes the claim over once
its lease runs out); killed after the record, before the ack: 1 (the redelivery replays);
killed after the effect but before the record: 2 (the standalone store's known window: the
takeover runs the body again). A task sent twice, and many duplicates on two workers: 1 each.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kombu.serialization
import pytest
import redis
from celery import Celery

from idempo.errors import InProgressError
from tests.celery_app import configure
from tests.conftest import REDIS_URL, REQUIRE_SERVICES, cleanup, require_service

pytest.importorskip("celery")

AMQP_URL = os.environ.get("IDEMPO_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parent.parent
LEASE = 3.0  # short, so that taking over a killed worker's claim costs seconds
WAIT = 45.0  # the bound on every wait for a worker


def _probe_broker(url: str) -> str | None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"broker {url} is not reachable ({exc})"
    return None


def require_broker(url: str) -> None:
    """Skip (or, under IDEMPO_REQUIRE_SERVICES=1, fail) without the broker."""
    reason = _probe_broker(url)
    if reason is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason}; IDEMPO_REQUIRE_SERVICES=1 makes this a failure")
        pytest.skip(reason)


class Cluster:
    """Workers on one queue, a producer, and the Redis where the tasks report."""

    def __init__(self, broker: str, store: str, store_options: dict[str, Any], tmp: Path):
        run = uuid.uuid4().hex[:12]
        self.prefix = f"idempo-celery-{run}:"
        self.queue = f"idempo-celery-{run}"
        self.broker = broker
        self.tmp = tmp
        self.events = redis.Redis.from_url(REDIS_URL)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "IDEMPO_CELERY_BROKER": broker,
            "IDEMPO_CELERY_QUEUE": self.queue,
            "IDEMPO_CELERY_STORE": store,
            "IDEMPO_CELERY_STORE_OPTIONS": json.dumps(store_options),
            "IDEMPO_CELERY_LEASE": str(LEASE),
            "IDEMPO_CELERY_EVENTS": REDIS_URL,
            "IDEMPO_CELERY_PREFIX": self.prefix,
        }
        self.producer = Celery("producer")
        configure(self.producer, broker=broker, queue=self.queue, prefix=self.prefix)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0
        self._seen: dict[str, list[Any]] = {}

    # -- workers -----------------------------------------------------------------------------

    def start(self, name: str, *, pool: str = "threads", concurrency: int = 1) -> None:
        """Start a worker and wait until it consumes."""
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the worker writes it
        self.workers[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.celery_app",
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "-Q",
                self.queue,
                "-n",
                f"{name}-{self.queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.started += 1
        self.expect("ready", self.started)

    def kill(self, name: str) -> None:
        """SIGKILL: no cleanup runs, no ack is sent."""
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL

    def release(self, order: str) -> None:
        """Let a held run of ``order`` go on."""
        self.events.rpush(f"{self.prefix}release:{order}", 1)

    def held(self, count: int) -> list[tuple[str, int]]:
        """The first ``count`` (point:order, pid) of tasks that stopped to be killed."""
        return [
            (spot, int(pid)) for spot, pid in (h.rsplit(":", 1) for h in self.expect("held", count))
        ]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )

    # -- tasks and what they report -----------------------------------------------------------

    def send(self, task: str, *args: Any, task_id: str | None = None, **kwargs: Any) -> str:
        result = self.producer.send_task(
            f"tests.celery_app.{task}",
            args=args,
            kwargs=kwargs,
            task_id=task_id,
            queue=self.queue,
        )
        return str(result.id)

    def hold(self, point: str, order: str) -> None:
        """Have the next run of ``order`` stop at ``point`` until it is killed."""
        self.events.set(f"{self.prefix}hold:{point}:{order}", 1)

    def expect(self, kind: str, count: int) -> list[Any]:
        """The first ``count`` reports of ``kind`` (waiting for them, within WAIT)."""
        seen = self._seen.setdefault(kind, [])
        deadline = time.monotonic() + WAIT
        while len(seen) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"waited {WAIT}s for {count} {kind!r}, got {seen}\n{self.logs()}")
            # In short rounds: redis-py's socket timeout (5 s by default) would cut a long one.
            popped = self.events.blpop([self.prefix + kind], timeout=1)
            if popped is not None:
                raw = popped[1]
                seen.append(raw.decode() if kind in ("ready", "held") else _decode(raw))
        return seen[:count]

    def effects(self, order: str) -> int:
        return int(self.events.get(f"{self.prefix}effects:{order}") or 0)

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        for name in list(self.workers):
            self.kill(name)
        with contextlib.suppress(Exception), self.producer.connection_for_write() as conn:
            if self.broker.startswith("amqp"):
                conn.default_channel.queue_delete(self.queue)
                conn.default_channel.exchange_delete(self.queue)
        keys = list(self.events.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            self.events.delete(*keys)
        self.events.close()
        self.producer.close()


def _decode(raw: bytes) -> Any:
    return kombu.serialization.loads(raw, "application/json", "utf-8")


@pytest.fixture(
    params=[pytest.param("rabbitmq"), pytest.param("redis", marks=pytest.mark.redis)],
)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Workers on RabbitMQ with a SQLite store, or on Redis with a Redis store."""
    require_service("redis")  # the tasks report there
    pytest.importorskip("celery")
    if request.param == "rabbitmq":
        require_broker(AMQP_URL)
        broker, store, options = AMQP_URL, f"sqlite:///{tmp_path / 'idempo.db'}", {}
    else:
        require_broker(REDIS_URL)
        run = uuid.uuid4().hex[:12]
        broker, store, options = REDIS_URL, REDIS_URL, {"prefix": f"idempo-celery-store-{run}:"}
    c = Cluster(broker, store, options, tmp_path)
    try:
        yield c
    finally:
        c.close()
        if options:
            cleanup("redis", options)


# -- crashes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_mid_task_is_redelivered_and_runs_once(cluster: Cluster) -> None:
    """SIGKILL while the body runs (before its effect): the redelivery takes the claim over once
    its lease runs out and runs the body; effect count 1, and a later duplicate replays."""
    order = "o-mid"
    cluster.hold("before_effect", order)
    cluster.start("w1")
    task_id = cluster.send("charge", order, 10)
    [(spot, _)] = cluster.held(1)
    assert spot == f"before_effect:{order}"
    cluster.kill("w1")
    cluster.start("w2")
    [first] = cluster.expect("results", 1)
    assert first["id"] == task_id
    assert first["replayed"] is False
    assert cluster.effects(order) == 1

    cluster.send("charge", order, 10, task_id=task_id)
    [_, again] = cluster.expect("results", 2)
    assert again["replayed"] is True
    assert again["result"] == first["result"]
    assert cluster.effects(order) == 1


@pytest.mark.slow
def test_killed_after_record_before_ack_replays(cluster: Cluster) -> None:
    """SIGKILL after the result is recorded but before the ack (the acks_late duplicate): the
    broker redelivers and the new worker returns the stored result; effect count 1."""
    order = "o-ack"
    cluster.hold("after_record", order)
    cluster.start("w1")
    task_id = cluster.send("charge", order, 10)
    [first] = cluster.expect("results", 1)
    [(spot, _)] = cluster.held(1)
    assert spot == f"after_record:{order}"
    cluster.kill("w1")
    cluster.start("w2")
    [_, redelivered] = cluster.expect("results", 2)
    assert redelivered["id"] == task_id
    assert redelivered["replayed"] is True
    assert redelivered["result"] == first["result"]
    assert isinstance(redelivered["result"]["at"], datetime)
    assert cluster.effects(order) == 1


@pytest.mark.slow
def test_killed_after_effect_before_record_runs_again(cluster: Cluster) -> None:
    """SIGKILL between the effect and the record: the takeover runs the body again, so the
    effect count is 2, the standalone store's documented window (the transactional mode
    closes it); the task still completes once and later duplicates replay."""
    order = "o-window"
    cluster.hold("after_effect", order)
    cluster.start("w1")
    task_id = cluster.send("charge", order, 10)
    [(spot, _)] = cluster.held(1)
    assert spot == f"after_effect:{order}"
    cluster.kill("w1")
    cluster.start("w2")
    [first] = cluster.expect("results", 1)
    assert first["id"] == task_id
    assert first["replayed"] is False
    assert cluster.effects(order) == 2

    cluster.send("charge", order, 10, task_id=task_id)
    [_, again] = cluster.expect("results", 2)
    assert again["replayed"] is True
    assert cluster.effects(order) == 2


@pytest.mark.slow
def test_prefork_child_killed_mid_task_is_requeued_and_runs_once(cluster: Cluster) -> None:
    """Prefork: SIGKILL the pool process running the body; the worker rejects the message
    (task_reject_on_worker_lost), the broker requeues it, and a new pool process takes the
    claim over once its lease runs out; effect count 1."""
    order = "o-prefork"
    cluster.hold("before_effect", order)
    cluster.start("w1", pool="prefork", concurrency=1)
    task_id = cluster.send("charge", order, 10)
    [(spot, child)] = cluster.held(1)
    assert spot == f"before_effect:{order}"
    assert child != cluster.workers["w1"].pid
    os.kill(child, signal.SIGKILL)
    [first] = cluster.expect("results", 1)
    assert first["id"] == task_id
    assert first["replayed"] is False
    assert cluster.effects(order) == 1


# -- duplicates ------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_task_sent_twice_returns_the_stored_result(cluster: Cluster) -> None:
    """The same task id sent twice: the body runs once and the second gets the first's
    result; idempo_key dedups across task ids and refuses other arguments; a body that raised
    was released and Celery's retry ran it."""
    cluster.start("w1")
    task_id = cluster.send("charge", "o-twice", 10)
    [first] = cluster.expect("results", 1)
    cluster.send("charge", "o-twice", 10, task_id=task_id)
    [_, second] = cluster.expect("results", 2)
    assert (first["replayed"], second["replayed"]) == (False, True)
    assert second["id"] == task_id
    assert second["result"] == first["result"]
    assert cluster.effects("o-twice") == 1

    # idempo_key: the order, whatever the task id.
    cluster.send("charge_order", "o-keyed", 10)
    cluster.send("charge_order", "o-keyed", 10)
    results = cluster.expect("results", 4)[2:]
    assert results[0]["result"] == results[1]["result"]
    assert [r["replayed"] for r in results] == [False, True]
    assert cluster.effects("o-keyed") == 1
    reused = cluster.send("charge_order", "o-keyed", 99)
    [failure] = cluster.expect("failures", 1)
    assert failure == {
        "id": reused,
        "task": "tests.celery_app.charge_order",
        "error": "KeyReuseError",
    }
    assert cluster.effects("o-keyed") == 1

    # The first run raises (autoretry_for): its claim is released, the retry runs the body.
    cluster.events.set(f"{cluster.prefix}fail:o-flaky", 1)
    flaky_id = cluster.send("flaky", "o-flaky", 10)
    [retried] = cluster.expect("results", 5)[4:]
    assert retried["id"] == flaky_id
    assert retried["replayed"] is False
    assert retried["retries"] == 1
    assert cluster.effects("o-flaky") == 1


@pytest.mark.slow
def test_duplicate_while_running_retries_then_replays(cluster: Cluster) -> None:
    """A duplicate that arrives while the first run holds the claim is retried (self.retry,
    InProgressError) until the first completes, then returns its result; effect count 1."""
    order = "o-busy"
    cluster.hold("before_effect", order)
    cluster.start("w1", concurrency=2)
    task_id = cluster.send("charge", order, 10)
    cluster.held(1)
    cluster.send("charge", order, 10, task_id=task_id)
    [retried] = cluster.expect("retried", 1)
    assert retried == {"id": task_id, "reason": "InProgressError"}
    assert cluster.effects(order) == 0
    cluster.release(order)
    first, second = cluster.expect("results", 2)
    assert (first["replayed"], second["replayed"]) == (False, True)
    assert second["result"] == first["result"]
    assert second["retries"] >= 1
    assert cluster.effects(order) == 1


@pytest.mark.slow
def test_two_workers_many_duplicates_one_effect_per_key(cluster: Cluster) -> None:
    """Two worker processes (threads pool) on one queue, each task id sent three times at
    once: one effect per key, and every delivery ends with the same result."""
    cluster.start("w1", pool="threads", concurrency=2)
    cluster.start("w2", pool="threads", concurrency=2)
    orders = [f"o-dup-{i}" for i in range(8)]
    ids = {order: str(uuid.uuid4()) for order in orders}
    for order in orders:  # side by side, so that the copies of one task run at once
        for _ in range(3):
            cluster.send("charge", order, 10, work=0.3, task_id=ids[order])
    results = cluster.expect("results", 3 * len(orders))
    by_id: dict[str, list[Any]] = {}
    for r in results:
        by_id.setdefault(r["id"], []).append(r)
    for order in orders:
        runs = by_id[ids[order]]
        assert len(runs) == 3, runs
        assert sum(not r["replayed"] for r in runs) == 1, runs
        assert all(r["result"] == runs[0]["result"] for r in runs), runs
        assert cluster.effects(order) == 1, order
    assert {r["hostname"].split("-")[0] for r in results} <= {"w1", "w2"}


# -- the store down --------------------------------------------------------------------------


class SwitchableProxy:
    """A TCP proxy to the real Redis that the test can cut: while cut, it drops every open
    connection and closes each new one at once, which the worker sees as a store outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self._server.close()


@pytest.mark.slow
@pytest.mark.redis
def test_store_down_before_the_body_retries_and_after_it_returns_the_live_result(
    tmp_path: Path,
) -> None:
    """The store down at the claim: the body does not run and the task is retried until the
    store is back, then runs once. Down when the result is recorded: the task still returns
    the body's live result (effect count 1), and the unrecorded claim runs out."""
    require_service("redis")
    require_broker(AMQP_URL)
    host, port = (
        "127.0.0.1",
        redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs["port"],
    )
    proxy = SwitchableProxy((host, port))
    options = {"prefix": f"idempo-celery-store-{uuid.uuid4().hex[:12]}:"}
    c = Cluster(AMQP_URL, f"redis://127.0.0.1:{proxy.port}/0", options, tmp_path)
    try:
        c.start("w1")
        task_id = c.send("charge", "o-down", 10)
        [retried] = c.expect("retried", 1)
        assert retried == {"id": task_id, "reason": "StoreUnavailableError"}
        assert c.effects("o-down") == 0
        proxy.restore()
        [first] = c.expect("results", 1)
        assert (first["id"], first["replayed"]) == (task_id, False)
        assert c.effects("o-down") == 1

        c.hold("after_effect", "o-late")
        c.send("charge", "o-late", 10)
        c.held(1)
        proxy.cut()
        c.release("o-late")
        [_, late] = c.expect("results", 2)
        assert late["replayed"] is False
        assert late["result"]["order"] == "o-late"
        assert c.effects("o-late") == 1
        assert "ran but its result is not recorded" in c.logs()
    finally:
        c.close()
        proxy.close()
        cleanup("redis", options)


# -- in-process: configuration and the serializer (no broker) ---------------------------------


def test_missing_store_setting_names_it() -> None:
    """Without app.conf.idempo_store the task fails with an error naming the setting."""
    from celery.exceptions import ImproperlyConfigured

    from idempo.celery import IdempotentTask

    app = Celery("no-store", broker="memory://")

    @app.task(base=IdempotentTask)
    def job() -> int:
        return 1

    with pytest.raises(ImproperlyConfigured, match=r"app\.conf\.idempo_store"):
        job.apply(task_id="t1").get()


def test_direct_calls_run_the_body_unless_idempo_key(tmp_path: Path) -> None:
    """Called directly (no task id), the body runs as a plain call; with idempo_key it runs
    once per key, and an eager apply() with one task id runs once."""
    from idempo.celery import IdempotentTask

    app = Celery("direct", broker="memory://")
    app.conf.idempo_store = f"sqlite:///{tmp_path / 'idempo.db'}"
    calls: list[int] = []

    @app.task(base=IdempotentTask)
    def plain(n: int) -> int:
        calls.append(n)
        return n

    @app.task(base=IdempotentTask, idempo_key=lambda n: f"n{n}")
    def keyed(n: int) -> int:
        calls.append(n)
        return n * 2

    assert (plain(1), plain(1)) == (1, 1)
    assert (keyed(2), keyed(2)) == (4, 4)
    assert plain.apply((3,), task_id="t3").get() == plain.apply((3,), task_id="t3").get() == 3
    assert calls == [1, 1, 2, 3]


def test_eager_duplicate_in_flight_raises_in_progress(tmp_path: Path) -> None:
    """Outside a worker (eager apply), a duplicate of a running task raises InProgressError
    instead of retrying in a loop."""
    from idempo._sync.engine import Engine, Held
    from idempo.celery import IdempotentTask
    from idempo.core.fingerprint import fingerprint
    from idempo.core.policy import Policy
    from idempo.stores import open_store

    url = f"sqlite:///{tmp_path / 'idempo.db'}"
    app = Celery("eager", broker="memory://")
    app.conf.idempo_store = url

    @app.task(base=IdempotentTask, name="eager.job")
    def job(n: int) -> int:
        return n

    store = open_store(url)
    held = Engine(store).acquire("eager.job", "t1", fingerprint({"n": 1}), Policy(lease=60))
    assert isinstance(held, Held)
    with pytest.raises(InProgressError):
        job.apply((1,), task_id="t1").get()
    held.release()
    store.close()


def test_result_serializer_keeps_celery_json_types() -> None:
    """The default serializer is Celery's result serializer: datetimes, UUIDs, Decimals and
    bytes come back as themselves; what it cannot encode is a SerializationError."""
    import decimal

    from idempo.celery import ResultSerializer
    from idempo.errors import SerializationError

    s = ResultSerializer()
    value = {
        "at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "id": uuid.UUID(int=7),
        "price": decimal.Decimal("1.50"),
        "raw": b"xy",
    }
    assert s.loads(s.dumps(value)) == value
    assert s.name == "celery-json"
    with pytest.raises(SerializationError):
        s.dumps(object())


def test_without_celery_the_import_names_the_extra() -> None:
    """On a machine without Celery, importing idempo.celery says which extra to install."""
    code = textwrap.dedent(
        """
        import sys
        from importlib.abc import MetaPathFinder

        class Refuse(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in ("celery", "kombu"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Refuse())
        import idempo
        try:
            import idempo.celery
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'idempo[celery]'" in done.stdout
