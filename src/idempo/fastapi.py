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
from idempo.core.policy import DEFAULT_TTL

__all__ = ["document_idempotency"]

# RFC 9457's members, as idempo fills them (``type`` names the case: see idempo.core.http).
_PROBLEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "format": "uri-reference"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}
_PROBLEM = {"application/problem+json": {"schema": _PROBLEM_SCHEMA}}

# The key as a client should send it: a Structured Field string of 1-255 printable ASCII
# characters without quotes or backslashes (so no escapes are needed), or the same bare. The
# middleware also accepts escapes and parameters; the schema describes the safe subset, so a
# client generated from it never sends a key the middleware refuses.
_KEY_PATTERN = r'^"[ !#-\[\]-~]{1,255}"$|^[!#-+\--\[\]-~]{1,255}$'
_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 257, "pattern": _KEY_PATTERN}


def document_idempotency(app: Any, store: Any = None, **options: Unpack[HttpOptions]) -> None:
    """Add the key header to the OpenAPI operations the middleware guards.

    Takes exactly the middleware's arguments (``store`` and every
    :class:`~idempo.core.http.HttpOptions`), so that one dict of options can serve both:
    ``app.add_middleware(IdempotencyMiddleware, **opts); document_idempotency(app, **opts)``.
    ``ttl`` is published as the retention; those that do not change the schema (``store``,
    ``lease``, ...) are accepted and unused.

    Every guarded operation gets the key header (with its real pattern and length), and
    idempo's problem+json answers: 400 (malformed or missing key), 409 (in progress), 413,
    422 (key reused; beside FastAPI's own validation 422) and 503 (store unavailable)."""
    check_options(options)
    config = HttpConfig.of(options)
    header = config.header
    original = app.openapi

    ttl = float(options.get("ttl", DEFAULT_TTL))
    retention = f"{ttl / 3600:g} hours" if ttl >= 3600 else f"{ttl:g} seconds"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            cached: dict[str, Any] = app.openapi_schema
            return cached
        schema: dict[str, Any] = original()
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                if not isinstance(operation, dict):
                    continue
                guarded, key_required = config.guard(method.upper(), path)
                if guarded:
                    _document(operation, header, key_required, ttl, retention)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _document(
    operation: dict[str, Any], header: str, required: bool, ttl: float, retention: str
) -> None:
    operation.setdefault("parameters", []).append(
        {
            "name": header,
            "in": "header",
            "required": required,
            "schema": _KEY_SCHEMA,
            "description": (
                'Idempotency key (a Structured Field string, e.g. "k1"): a retry with the same '
                f"key replays the first response. Responses are kept for {retention} after "
                "the first request completes; a key reused after that runs again."
            ),
            # The IETF draft asks each resource to publish its expiry policy.
            "x-idempotency-key-retention-seconds": ttl,
        }
    )
    responses = operation.setdefault("responses", {})
    _add(responses, "400", "Idempotency key malformed" + (" or missing" if required else ""))
    _add(responses, "409", "A request with this key is in progress (see Retry-After)")
    _add(responses, "413", "Request body too large to recognise a retry")
    _add(responses, "422", "The key was used for a different request")
    _add(responses, "503", "Idempotency store unavailable (see Retry-After)")


def _add(responses: dict[str, Any], status: str, description: str) -> None:
    """Document idempo's problem+json answer for ``status``, beside what is there already
    (FastAPI's own 422 for validation errors keeps its schema; the problem joins it)."""
    response = responses.get(status)
    if response is None:
        responses[status] = {"description": description, "content": dict(_PROBLEM)}
        return
    response.setdefault("content", {}).setdefault(
        "application/problem+json", {"schema": _PROBLEM_SCHEMA}
    )
    existing = response.get("description", "")
    if description not in existing:
        response["description"] = f"{existing}; or: {description}" if existing else description
