"""One options type for every HTTP adapter: HttpOptions, taken by ASGI, WSGI, Django's settings
and document_idempotency alike, with misspelt options refused."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from fastapi import FastAPI

from idempo.asgi import IdempotencyMiddleware as AsgiMiddleware
from idempo.core.http import HttpOptions, Route
from idempo.fastapi import document_idempotency
from idempo.observe import Hooks
from idempo.wsgi import IdempotencyMiddleware as WsgiMiddleware

# Every option, with a value that differs from its default.
ALL_OPTIONS: dict[str, Any] = {
    "required": True,
    "methods": ["post", "put"],
    "routes": [Route("/open/*", enabled=False)],
    "header": "X-Idempotency-Key",
    "scope": lambda headers: "tenant",
    "session_cookies": ("session",),
    "ttl": 60.0,
    "lease": 5.0,
    "wait": 0.5,
    "keep_server_errors": True,
    "max_request_bytes": 1000,
    "max_response_bytes": 2000,
    "fail_open": True,
    "replay_deny": ["x-internal-*"],
    "replay_allow": ["content-type"],
    "problem_type_base": "https://api.example/problems/",
    "hooks": Hooks(),
    "store_options": {},
    "replay_cache": 5.0,
}


def test_all_options_covers_the_typed_dict() -> None:
    """The table above names every HttpOptions key, so the tests below try them all."""
    assert set(ALL_OPTIONS) == set(typing.get_type_hints(HttpOptions))


def test_document_idempotency_takes_exactly_the_middlewares_options() -> None:
    """store= and ttl= (and every other middleware option) are accepted: one dict serves both
    (README: "same options"), and the schema follows the options that shape it."""
    options = {"store": "memory://", **ALL_OPTIONS}
    app = FastAPI()

    @app.post("/charges")
    def charge() -> dict[str, str]:
        return {}

    @app.post("/open/thing")
    def thing() -> dict[str, str]:
        return {}

    app.add_middleware(AsgiMiddleware, **options)
    document_idempotency(app, **options)
    schema = app.openapi()
    charge_op = schema["paths"]["/charges"]["post"]
    (param,) = [p for p in charge_op["parameters"] if p["in"] == "header"]
    assert param["name"] == "X-Idempotency-Key"
    assert param["required"] is True
    assert "400" in charge_op["responses"]
    assert not any(
        p.get("in") == "header"
        for p in schema["paths"]["/open/thing"]["post"].get("parameters", [])
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: AsgiMiddleware(lambda *a: None, "memory://", **kw),
        lambda **kw: WsgiMiddleware(lambda e, s: [], "memory://", **kw),
        lambda **kw: document_idempotency(FastAPI(), **kw),
    ],
    ids=["asgi", "wsgi", "fastapi"],
)
def test_a_misspelt_option_is_a_type_error_naming_it(make: Any) -> None:
    """An option no adapter knows is refused by name, never silently ignored."""
    with pytest.raises(TypeError, match="requierd"):
        make(requierd=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: AsgiMiddleware(lambda *a: None, "memory://", **kw),
        lambda **kw: WsgiMiddleware(lambda e, s: [], "memory://", **kw),
    ],
    ids=["asgi", "wsgi"],
)
def test_every_option_is_taken_by_every_middleware(make: Any) -> None:
    """The middlewares accept the whole of HttpOptions and resolve it to one configuration."""
    middleware = make(**ALL_OPTIONS)
    config, policy = middleware.config, middleware.policy
    assert config.methods == frozenset({"POST", "PUT"})
    assert config.header == "X-Idempotency-Key"
    assert (config.required, config.keep_server_errors, config.fail_open) == (True, True, True)
    assert (config.max_request_bytes, config.max_response_bytes) == (1000, 2000)
    assert (policy.ttl, policy.lease, policy.wait) == (60.0, 5.0, 0.5)
    assert middleware.front.scope_fn({}) == "tenant"
    assert config.problem_type_base == "https://api.example/problems/"
    assert config.headers_kept.keeps("Content-Type")
    assert not config.headers_kept.keeps("X-Charge-Id")  # the allow list wins


def test_openapi_documents_every_answer_the_middleware_gives() -> None:
    """idempo's 422 problem sits beside FastAPI's own validation 422; the 400 is documented
    wherever a malformed key can be sent, required or not; 409, 413 and 503 too."""
    app = FastAPI()

    @app.post("/charges")
    def charge(amount: int) -> dict[str, int]:  # a query parameter: FastAPI adds its own 422
        return {"amount": amount}

    document_idempotency(app, ttl=3600)
    responses = app.openapi()["paths"]["/charges"]["post"]["responses"]
    assert {"400", "409", "413", "422", "503"} <= set(responses)
    assert set(responses["422"]["content"]) == {"application/json", "application/problem+json"}
    assert responses["422"]["content"]["application/json"]["schema"]  # FastAPI's is kept
    problem_schema = responses["409"]["content"]["application/problem+json"]["schema"]
    assert problem_schema["required"] == ["type", "title", "status"]


def test_openapi_header_schema_is_the_one_the_middleware_enforces() -> None:
    """The header's pattern and maxLength refuse what the middleware refuses (256 characters,
    a TAB, non-ASCII), and the retention is published."""
    import re

    app = FastAPI()

    @app.post("/charges")
    def charge() -> dict[str, int]:
        return {}

    document_idempotency(app, ttl=7200)
    (param,) = app.openapi()["paths"]["/charges"]["post"]["parameters"]
    pattern = re.compile(param["schema"]["pattern"])

    def admitted(value: str) -> bool:
        return len(value) <= param["schema"]["maxLength"] and bool(pattern.match(value))

    assert admitted('"k1"')
    assert admitted("550e8400-e29b-41d4-a716-446655440000")
    assert admitted('"' + "x" * 255 + '"')
    assert not admitted('"' + "x" * 256 + '"')
    assert not admitted('"a\tb"')
    assert not admitted('"caf\u00e9"')
    assert param["x-idempotency-key-retention-seconds"] == 7200
    assert "2 hours" in param["description"]
