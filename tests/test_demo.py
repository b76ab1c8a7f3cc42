"""``idempo demo``: the payments API, the lossy network and both runs, for real (uvicorn on
127.0.0.1, SQLite), with few orders so that each run takes a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from idempo.cli import main
from idempo.demo import (
    AMOUNT,
    DemoResult,
    LossyTransport,
    RunResult,
    payments_app,
    run_demo,
    serve,
)

ORDERS = 30
LOSS = 0.3
SEED = 7


@pytest.fixture(scope="module")
def result() -> DemoResult:
    """One demo run shared by the tests that only read its numbers."""
    return run_demo(ORDERS, LOSS, SEED)


def test_naive_retries_overcharge(result: DemoResult) -> None:
    """Without a key every retry after a lost reply is a second charge in the ledger."""
    naive = result.naive
    assert naive.retries > 0, "this seed must lose some replies"
    assert naive.ledger_charges == ORDERS + naive.retries
    assert naive.ledger_total == (ORDERS + naive.retries) * AMOUNT > naive.expected_total
    assert naive.replays_sent == naive.replays_received == 0
    assert not naive.exact


def test_idempo_total_is_exact(result: DemoResult) -> None:
    """With idempo's client and middleware, the same retries are replayed, never charged."""
    idem = result.idempo
    assert idem.expected_total == ORDERS * AMOUNT
    assert idem.ledger_total == idem.expected_total
    assert idem.ledger_charges == ORDERS
    assert idem.exact
    assert result.exit_code == 0


def test_replays_are_counted(result: DemoResult) -> None:
    """Every idempo retry is answered from the store; some of those replays reach the client
    and some are lost in turn (the client only sees the former)."""
    idem = result.idempo
    assert idem.retries == result.naive.retries, "both runs lose the same sends"
    assert idem.sends == ORDERS + idem.retries
    assert idem.replays_sent == idem.retries > 0
    assert 0 < idem.replays_received <= idem.replays_sent
    assert idem.unanswered == 0


def test_same_seed_same_numbers(result: DemoResult) -> None:
    """A seed fixes which replies are lost, so a second run counts exactly the same."""
    assert run_demo(ORDERS, LOSS, SEED) == result


def test_unguarded_api_is_not_exact_and_exits_1() -> None:
    """Keys sent to an API that ignores them do not help: the idempo run overcharges too, and
    the exit code says so."""
    outcome = run_demo(ORDERS, LOSS, SEED, guarded=False)
    assert outcome.idempo.ledger_total > outcome.idempo.expected_total
    assert outcome.idempo.replays_sent == 0
    assert not outcome.idempo.exact
    assert outcome.exit_code == 1


def test_exit_code_follows_idempo_only() -> None:
    """The exit code is 0 exactly when idempo's total is exact, whatever the naive run did."""

    def run(name: str, total: int) -> RunResult:
        return RunResult(name, 3, 30, total, total // AMOUNT, 3, 0, 0, 0, 0)

    assert DemoResult(3, 0.3, 1, run("naive", 50), run("idempo", 30)).exit_code == 0
    assert DemoResult(3, 0.3, 1, run("naive", 30), run("idempo", 40)).exit_code == 1


def test_lossy_transport_loses_replies_after_processing() -> None:
    """Every request reaches the server; a seeded share of the replies is dropped."""
    handled: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        handled.append(request)
        return httpx.Response(201, json={"ok": True})

    def outcomes(seed: int) -> list[bool]:
        transport = LossyTransport(0.5, seed, inner=httpx.MockTransport(handler))
        delivered = []
        errors: set[str] = set()
        with httpx.Client(transport=transport, base_url="http://test") as client:
            for _ in range(40):
                try:
                    client.post("/charges", json={})
                    delivered.append(True)
                except httpx.ReadError as exc:
                    delivered.append(False)
                    errors.add(str(exc))
        assert transport.sends == 40
        assert transport.lost == delivered.count(False)
        assert errors == {"reply lost"}
        return delivered

    first = outcomes(3)
    assert len(handled) == 40
    assert 0 < first.count(False) < 40
    assert outcomes(3) == first, "the same seed loses the same replies"
    with pytest.raises(ValueError, match="loss"):
        LossyTransport(1.0, 3)


def test_payments_api(tmp_path: Path) -> None:
    """The API charges valid requests, refuses malformed ones, and sums its ledger."""
    app = payments_app(tmp_path / "ledger.db", f"sqlite:///{tmp_path / 'idempo.db'}")
    with serve(app) as url, httpx.Client(base_url=url) as http:
        charge = http.post("/charges", json={"order_id": "o-1", "amount": 25})
        assert charge.status_code == 201
        assert charge.json() == {"charge_id": "ch_000001", "order_id": "o-1", "amount": 25}
        for bad in ({"order_id": "o-2"}, {"order_id": "o-2", "amount": -1}, [1]):
            assert http.post("/charges", json=bad).status_code == 400
        assert http.post("/charges", content=b"not json").status_code == 400
        replayed = http.post(
            "/charges", json={"order_id": "o-3", "amount": 5}, headers={"Idempotency-Key": "k"}
        )
        again = http.post(
            "/charges", json={"order_id": "o-3", "amount": 5}, headers={"Idempotency-Key": "k"}
        )
        assert again.json() == replayed.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert http.get("/ledger").json() == {"total": 30, "charges": 2}


def test_cli_demo_prints_the_table_and_exits_0() -> None:
    """``idempo demo -n 20`` runs end to end, prints the table and the verdict, exits 0."""
    outcome = CliRunner().invoke(main, ["demo", "-n", "20", "--no-color"])
    assert outcome.exit_code == 0, outcome.output
    for text in ("naive", "idempo", "expected", "ledger", "retries", "replays", "exact?"):
        assert text in outcome.output
    assert "idempo total is exact" in outcome.output
    assert "\x1b[" not in outcome.output  # no colour codes without a terminal


@pytest.mark.parametrize("args", [["--loss", "1"], ["--loss", "-0.1"], ["-n", "0"]])
def test_cli_demo_rejects_bad_options(args: list[str]) -> None:
    """Out-of-range options are usage errors (exit 2), before anything starts."""
    outcome = CliRunner().invoke(main, ["demo", *args])
    assert outcome.exit_code == 2
    assert "Invalid value" in outcome.output
