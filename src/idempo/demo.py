"""``idempo demo``: charge orders over a network that loses replies, without and with idempo.

What runs is real: a small payments API (Starlette under uvicorn on 127.0.0.1, an ephemeral
port) writes every charge into a SQLite ledger, guarded by :class:`~idempo.asgi.
IdempotencyMiddleware` with a SQLite store. The client's network delivers every request but
loses a share of the replies after the server has processed them (:class:`LossyTransport`),
which is exactly the case where "no reply, try again" charges twice. Each order is charged
twice over, in two independent runs, each against a fresh API and ledger:

- **naive**: an ordinary httpx client retries the POST until a reply arrives; no key.
- **idempo**: :class:`idempo.client.Client` retries the same POST; every retry carries the
  request's idempotency key, so the middleware replays the first charge instead of charging
  again.

Both runs draw their losses from ``random.Random(seed)`` in the same order, so they lose the
same sends and make the same retries: the only difference is the key. Needs the ``demo`` extra
(``pip install 'idempo[demo]'``: starlette, uvicorn, httpx, stamina, rich).
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from stamina.instrumentation import get_on_retry_hooks, set_on_retry_hooks
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from idempo.asgi import IdempotencyMiddleware
from idempo.client import Client, retry_info, was_replayed

__all__ = [
    "AMOUNT",
    "MAX_SENDS",
    "DemoResult",
    "LossyTransport",
    "RunResult",
    "main",
    "payments_app",
    "render",
    "run_demo",
    "serve",
]

#: What each order is charged.
AMOUNT = 10
#: Sends per order at most, in both runs: the same budget, so only the key differs.
MAX_SENDS = 10
# Backoff of the idempo client: real exponential backoff, but in milliseconds, so that a few
# hundred retries take a fraction of a second. No jitter: nothing else competes for the server.
_WAIT_INITIAL = 0.001
_WAIT_MAX = 0.01


# --- The payments API -------------------------------------------------------------------------


def payments_app(ledger_path: Path, store_url: str, *, guarded: bool = True) -> Starlette:
    """The payments API: ``POST /charges`` adds a charge to the ledger, ``GET /ledger`` sums it.

    ``guarded=False`` leaves out the idempotency middleware (to show that keys alone, sent to a
    server that ignores them, do not help).
    """
    db: sqlite3.Connection | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Opened on the server's own thread, which is the only one that touches it.
        nonlocal db
        db = sqlite3.connect(ledger_path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # No UNIQUE(order_id), on purpose: several charges per order are legitimate
            # (instalments, top-ups). Only the client knows whether a POST is a retry; the
            # idempotency key is how it says so.
            db.execute(
                "CREATE TABLE IF NOT EXISTS charges ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " order_id TEXT NOT NULL,"
                " amount INTEGER NOT NULL)"
            )
            db.commit()
            yield
        finally:
            db.close()
            db = None

    def ledger_db() -> sqlite3.Connection:
        if db is None:  # pragma: no cover - uvicorn runs the lifespan before any request
            raise RuntimeError("the ledger is not open")
        return db

    async def create_charge(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            order_id, amount = body["order_id"], body["amount"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"detail": 'expected {"order_id": str, "amount": int}'}, 400)
        valid_amount = isinstance(amount, int) and not isinstance(amount, bool) and amount > 0
        if not isinstance(order_id, str) or not order_id or not valid_amount:
            return JSONResponse({"detail": "order_id must be a string, amount > 0"}, 400)
        conn = ledger_db()
        with conn:
            row = conn.execute(
                "INSERT INTO charges (order_id, amount) VALUES (?, ?)", (order_id, amount)
            )
        charge_id = f"ch_{row.lastrowid:06d}"
        return JSONResponse(
            {"charge_id": charge_id, "order_id": order_id, "amount": amount}, status_code=201
        )

    async def ledger(request: Request) -> JSONResponse:
        total, count = (
            ledger_db().execute("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM charges").fetchone()
        )
        return JSONResponse({"total": total, "charges": count})

    middleware = [Middleware(IdempotencyMiddleware, store=store_url)] if guarded else []
    return Starlette(
        routes=[
            Route("/charges", create_charge, methods=["POST"]),
            Route("/ledger", ledger, methods=["GET"]),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )


@contextlib.contextmanager
def serve(app: Starlette, *, start_timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (an ephemeral port) in a thread; yield its URL.

    Leaving the block stops the server, which runs the app's shutdown (closing the ledger and
    the idempo store) before this returns.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        access_log=False,
        ws="none",
    )
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers only on the main thread, so Ctrl-C still reaches us.
    thread = threading.Thread(target=server.run, name="payments-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the payments API did not start (see uvicorn's log above)")
            time.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(start_timeout)


# --- The lossy network ------------------------------------------------------------------------


class LossyTransport(httpx.BaseTransport):
    """An httpx transport whose replies get lost: every request really reaches the server and
    is processed, then, with probability ``loss``, the reply is read, thrown away and the caller
    gets ``httpx.ReadError("reply lost")``, as when a connection drops after the server
    answered. Losses come from ``random.Random(seed)``, one draw per send, so a run is
    repeatable.

    It counts what crossed the wire: ``sends``, ``lost`` and ``replays`` (replies the server
    marked ``Idempotent-Replayed: true``, whether or not they were lost afterwards).
    """

    def __init__(self, loss: float, seed: int, inner: httpx.BaseTransport | None = None) -> None:
        if not 0 <= loss < 1:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        self.loss = loss
        self._rng = random.Random(seed)
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        self.sends = 0
        self.lost = 0
        self.replays = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        self.sends += 1
        if was_replayed(response):
            self.replays += 1
        if self._rng.random() < self.loss:
            # Read the reply to its end so that the connection can be reused: the loss is
            # simulated, the connection pool need not suffer for it.
            response.read()
            response.close()
            self.lost += 1
            raise httpx.ReadError("reply lost", request=request)
        return response

    def close(self) -> None:
        self._inner.close()


# --- The two runs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run did, as the client counted it and as the server's ledger shows it."""

    name: str
    orders: int
    expected_total: int
    #: The ledger's sum and number of rows, read from ``GET /ledger`` after the run.
    ledger_total: int
    ledger_charges: int
    #: Sends in all; retries are the sends after the first of each order.
    sends: int
    retries: int
    #: Replies the server sent from idempo's store, counted on the wire (lost or not).
    replays_sent: int
    #: Of those, the ones that reached the client (a replay can be lost too, then retried).
    replays_received: int
    #: Orders that got no reply within :data:`MAX_SENDS` sends.
    unanswered: int

    @property
    def exact(self) -> bool:
        """Whether the ledger holds exactly one charge per order."""
        return self.ledger_total == self.expected_total and self.ledger_charges == self.orders


@dataclass(frozen=True, slots=True)
class DemoResult:
    """Both runs, and the parameters they ran with."""

    orders: int
    loss: float
    seed: int
    naive: RunResult
    idempo: RunResult

    @property
    def exit_code(self) -> int:
        """0 if idempo's total is exact, else 1 (the naive run is expected to be wrong)."""
        return 0 if self.idempo.exact else 1


Advance = Callable[[int], None]  # called after each order with the retries so far


def _charge_naively(http: httpx.Client, order_id: str) -> tuple[int, bool]:
    """POST one charge until a reply arrives, as most code does: (sends, answered)."""
    for send in range(1, MAX_SENDS + 1):
        try:
            response = http.post("/charges", json={"order_id": order_id, "amount": AMOUNT})
        except httpx.TransportError:
            continue  # no reply: did it work? Try again (without a key, this charges again)
        response.raise_for_status()
        return send, True
    return MAX_SENDS, False


def _run_naive(url: str, transport: LossyTransport, orders: int, advance: Advance) -> RunResult:
    sends = retries = unanswered = 0
    with httpx.Client(base_url=url, transport=transport) as http:
        for i in range(orders):
            n, answered = _charge_naively(http, f"order-{i}")
            sends += n
            retries += n - 1
            unanswered += not answered
            advance(retries)
    return _measure(url, "naive", orders, sends, retries, 0, unanswered, transport)


def _run_idempo(url: str, transport: LossyTransport, orders: int, advance: Advance) -> RunResult:
    sends = retries = received = unanswered = 0
    with Client(
        base_url=url,
        transport=transport,
        attempts=MAX_SENDS,
        retry_timeout=None,  # bounded by attempts alone, as the naive loop is
        wait_initial=_WAIT_INITIAL,
        wait_max=_WAIT_MAX,
        wait_jitter=0.0,
    ) as http:
        for i in range(orders):
            # The same call as the naive loop minus the loop: the client gives the POST a key
            # (uuid4) and resends it with that key until a reply arrives.
            try:
                response = http.post("/charges", json={"order_id": f"order-{i}", "amount": AMOUNT})
            except httpx.TransportError:
                n = MAX_SENDS
                unanswered += 1
            else:
                response.raise_for_status()
                info = retry_info(response)
                n = info["attempts"] if info is not None else 1
                received += was_replayed(response)
            sends += n
            retries += n - 1
            advance(retries)
    return _measure(url, "idempo", orders, sends, retries, received, unanswered, transport)


def _measure(
    url: str,
    name: str,
    orders: int,
    sends: int,
    retries: int,
    received: int,
    unanswered: int,
    transport: LossyTransport,
) -> RunResult:
    """Read the ledger over a reliable connection: the server's truth, not the client's."""
    with httpx.Client(base_url=url) as http:
        response = http.get("/ledger")
        response.raise_for_status()
        ledger = response.json()
    return RunResult(
        name=name,
        orders=orders,
        expected_total=orders * AMOUNT,
        ledger_total=int(ledger["total"]),
        ledger_charges=int(ledger["charges"]),
        sends=sends,
        retries=retries,
        replays_sent=transport.replays,
        replays_received=received,
        unanswered=unanswered,
    )


@contextlib.contextmanager
def _quiet_stamina() -> Iterator[None]:
    """stamina logs every scheduled retry as a warning; hundreds of them would bury the table.
    Its hooks are global, so they are put back afterwards."""
    hooks = get_on_retry_hooks()
    set_on_retry_hooks([])
    try:
        yield
    finally:
        set_on_retry_hooks(hooks)


def run_demo(
    orders: int = 200,
    loss: float = 0.3,
    seed: int = 7,
    *,
    console: Console | None = None,
    guarded: bool = True,
) -> DemoResult:
    """Run both scenarios, each against a fresh payments API, ledger and idempo store.

    Shows a progress bar per run on ``console`` (none without one). ``guarded=False`` runs the
    API without the middleware: the idempo run then charges retries again.
    """
    if orders < 1:
        raise ValueError(f"orders must be at least 1, got {orders}")
    if not 0 <= loss < 1:
        raise ValueError(f"loss must be in [0, 1), got {loss}")
    progress = Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("retries {task.fields[retries]}"),
        console=console,
        disable=console is None,
    )
    runs = (("naive", _run_naive), ("idempo", _run_idempo))
    results: dict[str, RunResult] = {}
    with tempfile.TemporaryDirectory(prefix="idempo-demo-") as tmp, progress, _quiet_stamina():
        for name, run in runs:
            app = payments_app(
                Path(tmp) / f"ledger-{name}.db",
                f"sqlite:///{Path(tmp) / f'idempo-{name}.db'}",
                guarded=guarded,
            )
            task = progress.add_task(name, total=orders, retries=0)

            def advance(retries: int, task: TaskID = task) -> None:
                progress.update(task, advance=1, retries=retries)

            # A fresh generator per run: both runs lose the same sends.
            transport = LossyTransport(loss, seed)
            with serve(app) as url:
                results[name] = run(url, transport, orders, advance)
    return DemoResult(
        orders=orders, loss=loss, seed=seed, naive=results["naive"], idempo=results["idempo"]
    )


# --- Output -----------------------------------------------------------------------------------


def render(result: DemoResult, console: Console) -> None:
    """Print the table of both runs and the verdict."""
    table = Table(caption=_caption(result), caption_justify="default", box=box.ROUNDED)
    table.add_column("run")
    # Two-line headers keep the table within 80 columns (CI logs, a README).
    for header in ("orders", "expected\ntotal", "ledger\ntotal", "charges\nin ledger"):
        table.add_column(header, justify="right")
    table.add_column("retries", justify="right")
    table.add_column("replays", justify="right")
    table.add_column("exact?")
    for run in (result.naive, result.idempo):
        table.add_row(
            run.name,
            str(run.orders),
            str(run.expected_total),
            str(run.ledger_total),
            str(run.ledger_charges),
            str(run.retries),
            str(run.replays_sent),
            "[green]yes[/]" if run.exact else "[red]no[/]",
        )
    console.print(table)
    console.print(_verdict(result))


def _caption(result: DemoResult) -> str:
    idem = result.idempo
    lines = [
        "retries: sends after a lost reply (both runs lose the same sends).",
        "replays: replies the server sent from idempo's store (Idempotent-Replayed),",
    ]
    if idem.replays_sent:
        # A replay is a reply like any other: the network can lose it too, and the client
        # then retries again. Only the transport sees those, so both counts are given.
        lines.append(
            f"counted on the wire; {idem.replays_received} of them reached the client, "
            f"{idem.replays_sent - idem.replays_received} were lost in turn."
        )
    else:
        lines.append("counted on the wire.")
    for run in (result.naive, idem):
        if run.unanswered:
            lines.append(
                f"{run.name}: {run.unanswered} order(s) got no reply in {MAX_SENDS} sends."
            )
    return "\n".join(lines)


def _verdict(result: DemoResult) -> str:
    naive, idem = result.naive, result.idempo
    if not idem.exact:
        return (
            f"[bold red]idempo total is NOT exact: {idem.ledger_total} instead of "
            f"{idem.expected_total} ({idem.ledger_charges} charges for {idem.orders} orders).[/]"
        )
    extra = naive.ledger_total - naive.expected_total
    if extra > 0:
        naive_part = (
            f"naive retries overcharged {extra} in "
            f"{naive.ledger_charges - naive.orders} duplicate charges"
        )
    else:
        naive_part = "naive retries were exact too (no reply was lost)"
    return f"[bold green]idempo total is exact[/]; {naive_part}."


def main(orders: int = 200, loss: float = 0.3, seed: int = 7, *, no_color: bool = False) -> int:
    """Run the demo, print its results, and return the exit code (0: idempo was exact)."""
    console = Console(no_color=no_color, highlight=False)
    console.print(
        f"Charging {orders} orders of {AMOUNT} through a payments API (Starlette + uvicorn, "
        f"SQLite)\nover a network that loses {loss:.0%} of the replies after the charge is made "
        f"(seed {seed}).\nEach order is retried until a reply arrives, {MAX_SENDS} sends at most."
    )
    result = run_demo(orders, loss, seed, console=console)
    render(result, console)
    return result.exit_code
