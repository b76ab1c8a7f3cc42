"""The public API as a user writes it, type-checked (never run) by ``make typecheck``.

Each ``assert_type`` states the type a user should see; each ``# type: ignore[...]`` marks a
mistake the API must reject (mypy's ``warn_unused_ignores`` fails if it is accepted instead).
"""

from __future__ import annotations

import sqlite3
from typing import Any, assert_type

import httpx

from idempo import Idempotency, JSONSerializer, open_async_store, open_store
from idempo.client import AsyncClient, Client, RetryInfo, encode_key, retry_info, was_replayed
from idempo.errors import IdempoError, InProgressError, KeyReuseError
from idempo.phases import AsyncPhase, AsyncPhaseContext, Phase, PhaseContext
from idempo.stores import AsyncStore, Store

idem = Idempotency(store="sqlite:///idempo.db", ttl=86400, lease=30, serializer=JSONSerializer())


# -- the decorator, on def and async def ----------------------------------------------------


@idem.idempotent(key=lambda order_id, amount: order_id)
def charge(order_id: str, amount: int) -> dict[str, int]:
    return {order_id: amount}


@idem.idempotent
def ping(n: int) -> int:
    return n


@idem.idempotent(key=lambda order_id: order_id, scope="tenant-1", ttl=60, wait=5)
async def refund(order_id: str) -> str:
    return order_id


def use_sync_decorator() -> None:
    assert_type(charge("o-1", 10), dict[str, int])
    assert_type(charge(order_id="o-1", amount=10), dict[str, int])
    assert_type(ping(3), int)
    charge("o-1", "ten")  # type: ignore[arg-type]
    charge("o-1")  # type: ignore[call-arg]


async def use_async_decorator() -> None:
    assert_type(await refund("o-1"), str)
    assert_type(await refund(order_id="o-1"), str)
    await refund(1)  # type: ignore[arg-type]


# -- stores -----------------------------------------------------------------------------------


def use_store() -> None:
    store = open_store("memory://")
    assert_type(store, Store)
    record = store.get("", "o-1")
    if record is not None:
        assert_type(record.key, str)
        assert_type(record.outcome, bytes | None)
        assert_type(record.expires_at, float)
    assert_type(store.delete("", "o-1"), bool)
    assert_type(store.purge_expired(limit=100), int)
    store.close()
    Idempotency(store)


async def use_async_store() -> None:
    store = open_async_store("memory://")
    assert_type(store, AsyncStore)
    assert_type(await store.delete("", "o-1"), bool)
    await store.close()
    Idempotency(store)
    await idem.aclose()


# -- transactional mode ---------------------------------------------------------------------------


def use_transaction(conn: sqlite3.Connection) -> None:
    with idem.transaction(conn, key="o-1", fingerprint={"amount": 10}) as tx:
        assert_type(tx.replayed, bool)
        if not tx.replayed:
            conn.execute("INSERT INTO charges VALUES (?, ?)", ("o-1", 10))
            tx.result = {"order": "o-1"}
    assert_type(tx.result, Any)
    idem.transaction(conn)  # type: ignore[call-arg]


async def use_async_transaction(conn: Any) -> None:
    async with idem.atransaction(conn, key="o-1") as tx:
        assert_type(tx.replayed, bool)
        tx.result = 1


# -- atomic phases --------------------------------------------------------------------------------


def use_phases(conn: sqlite3.Connection) -> None:
    def save(ctx: PhaseContext) -> int:
        assert_type(ctx.key, str)
        assert_type(ctx.foreign_key("charge"), str)
        assert_type(ctx.results, dict[str, Any])
        return 1

    result = idem.run_phases(
        [Phase("charge", lambda ctx: ctx.foreign_key("charge")), Phase("save", save, local=True)],
        key="o-1",
        conn=conn,
    )
    assert_type(result, Any)


async def use_async_phases() -> None:
    async def call(ctx: AsyncPhaseContext) -> str:
        return ctx.foreign_key("call")

    assert_type(await idem.arun_phases([AsyncPhase("call", call)], key="o-1"), Any)


# -- errors ---------------------------------------------------------------------------------------


def use_errors() -> None:
    try:
        charge("o-1", 10)
    except KeyReuseError as exc:
        assert_type(exc, KeyReuseError)
    except InProgressError as exc:
        assert_type(exc, InProgressError)
    except IdempoError as exc:
        assert_type(str(exc), str)


# -- the httpx clients ----------------------------------------------------------------------------


def use_client() -> None:
    with Client(base_url="https://api.example.com", attempts=3, retry_timeout=10.0) as client:
        assert_type(client, Client)
        response = client.post("/charges", json={"amount": 1000}, idempotency_key="o-1")
        assert_type(response, httpx.Response)
        assert_type(client.get("/charges/o-1"), httpx.Response)
        assert_type(retry_info(response), RetryInfo | None)
        info = retry_info(response)
        if info is not None:
            assert_type(info["attempts"], int)
            assert_type(info["key"], str | None)
            assert_type(info["retryable"], bool)
        assert_type(was_replayed(response), bool)
        with client.stream("POST", "/uploads", idempotency_key="u-1") as streamed:
            assert_type(streamed, httpx.Response)
        client.post("/charges", idempotency_key=42)  # type: ignore[arg-type]
    assert_type(encode_key("o-1"), str)
    Client(attempts="three")  # type: ignore[arg-type]


async def use_async_client() -> None:
    async with AsyncClient(base_url="https://api.example.com", wait_max=2.0) as client:
        assert_type(client, AsyncClient)
        response = await client.patch("/charges/o-1", json={}, idempotency_key="o-1")
        assert_type(response, httpx.Response)
        assert_type(await client.request("DELETE", "/charges/o-1"), httpx.Response)
        async with client.stream("POST", "/uploads") as streamed:
            assert_type(streamed, httpx.Response)
