"""FastAPI: the guarded routes show the key header in OpenAPI; the middleware works under it."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from idempo.asgi import IdempotencyMiddleware, Route
from idempo.fastapi import document_idempotency
from idempo.stores.memory import AsyncMemoryStore


def make_app() -> FastAPI:
    app = FastAPI()
    calls = {"n": 0}

    @app.post("/charges")
    async def charge(body: dict[str, int]) -> dict[str, int]:
        calls["n"] += 1
        return {"amount": body["amount"], "n": calls["n"]}

    @app.get("/charges")
    async def listing() -> list[int]:
        return []

    @app.post("/webhooks/stripe")
    async def webhook() -> dict[str, bool]:
        return {"ok": True}

    rules = [Route("/webhooks/*", enabled=False)]
    app.add_middleware(IdempotencyMiddleware, store=AsyncMemoryStore(), routes=rules)
    document_idempotency(app, routes=rules)
    return app


def test_openapi_shows_the_header_on_guarded_routes_only() -> None:
    """POST /charges documents the header and 409/422; GET and disabled routes do not."""
    schema = make_app().openapi()
    post = schema["paths"]["/charges"]["post"]
    names = [p["name"] for p in post.get("parameters", [])]
    assert "Idempotency-Key" in names
    assert {"409", "422"} <= set(post["responses"])
    assert "parameters" not in schema["paths"]["/charges"]["get"] or all(
        p["name"] != "Idempotency-Key" for p in schema["paths"]["/charges"]["get"]["parameters"]
    )
    assert "parameters" not in schema["paths"]["/webhooks/stripe"]["post"]


async def test_fastapi_replays() -> None:
    """Under FastAPI the retry with the same key replays the first response."""
    app = make_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        one = await c.post("/charges", json={"amount": 3}, headers={"Idempotency-Key": '"f1"'})
        two = await c.post("/charges", json={"amount": 3}, headers={"Idempotency-Key": '"f1"'})
    assert one.json() == two.json() == {"amount": 3, "n": 1}
    assert two.headers["idempotent-replayed"] == "true"
