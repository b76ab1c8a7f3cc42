"""FastAPI: show the Idempotency-Key header, and idempo's answers, in the OpenAPI schema.

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, store="sqlite:///idempo.db", required=True)
    document_idempotency(app, required=True)     # the same options as the middleware

The middleware sits below FastAPI and cannot see its schema, so this helper wraps
``app.openapi`` and adds, to every operation the middleware guards (decided by the same
:meth:`~idempo.core.http.HttpConfig.guard`), the header parameter and the 409/422 (and, when
required, 400) problem+json responses.
"""

from __future__ import annotations

from typing import Any, Unpack

from idempo.core.http import HttpConfig, HttpOptions, check_options

__all__ = ["document_idempotency"]

_PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}


def document_idempotency(app: Any, store: Any = None, **options: Unpack[HttpOptions]) -> None:
    """Add the key header to the OpenAPI operations the middleware guards.

    Takes exactly the middleware's arguments (``store`` and every
    :class:`~idempo.core.http.HttpOptions`), so that one dict of options can serve both:
    ``app.add_middleware(IdempotencyMiddleware, **opts); document_idempotency(app, **opts)``.
    Those that do not change the schema (``store``, ``ttl``, ...) are accepted and unused."""
    check_options(options)
    config = HttpConfig.of(options)
    header = config.header
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            cached: dict[str, Any] = app.openapi_schema
            return cached
        schema: dict[str, Any] = original()
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                guarded, key_required = config.guard(method.upper(), path)
                if not guarded or not isinstance(operation, dict):
                    continue
                operation.setdefault("parameters", []).append(
                    {
                        "name": header,
                        "in": "header",
                        "required": key_required,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 257},
                        "description": (
                            'Idempotency key (a Structured Field string, e.g. "k1"): a retry '
                            "with the same key replays the first response."
                        ),
                    }
                )
                responses = operation.setdefault("responses", {})
                responses.setdefault(
                    "409",
                    {"description": "A request with this key is in progress", "content": _PROBLEM},
                )
                responses.setdefault(
                    "422",
                    {
                        "description": "The key was used for a different request",
                        "content": _PROBLEM,
                    },
                )
                if key_required:
                    responses.setdefault(
                        "400",
                        {
                            "description": "Idempotency key missing or malformed",
                            "content": _PROBLEM,
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
