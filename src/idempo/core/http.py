"""HTTP semantics of idempotency keys, free of any framework (IETF draft + Stripe).

The ASGI and WSGI adapters translate their requests into these plain values and their answers
back; every decision about keys, fingerprints, scopes, what to keep and what to replay is here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from idempo.core import outcome as outcomes
from idempo.core.fingerprint import fingerprint
from idempo.core.keys import validate_key
from idempo.errors import IdempoError, InvalidKeyError, OutcomeNotStoredError

__all__ = [
    "DEFAULT_METHODS",
    "HttpConfig",
    "MissingKeyError",
    "RequestTooLargeError",
    "ResponseCapture",
    "Route",
    "StoredResponse",
    "decode_response",
    "default_scope",
    "encode_response",
    "fingerprint_request",
    "parse_key_header",
    "problem",
    "read_stored",
    "record_for",
    "record_for_abandoned",
    "replay_headers",
    "scope_from_credentials",
]

log = logging.getLogger("idempo")

DEFAULT_METHODS = frozenset({"POST", "PATCH"})

# Statuses never kept: auth, throttling and transient answers must not poison a key. 5xx are
# not kept either unless the configuration says so (as Stripe and the IETF draft do).
NEVER_KEPT = frozenset({401, 403, 408, 409, 425, 429})

# Headers never replayed from storage: per-connection (hop-by-hop), per-response, or carrying
# state that belongs to the first client alone (cookies).
_NOT_STORED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "date",
        "server",
        "content-length",
        "idempotent-replayed",
    }
)


class MissingKeyError(IdempoError):
    """The route requires an idempotency key and the request has none."""

    status = 400
    title = "Idempotency key required"


class RequestTooLargeError(IdempoError):
    """The request body is larger than the middleware will read to fingerprint it."""

    status = 413
    title = "Request body too large for idempotent handling"


@dataclass(frozen=True, slots=True)
class Route:
    """A per-route rule: paths matching ``path`` (a glob, e.g. ``/charges/*``) are guarded or
    not (``enabled``), with their own ``required`` and ``methods`` (None: the defaults)."""

    path: str
    enabled: bool = True
    required: bool | None = None
    methods: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class HttpConfig:
    header: str = "Idempotency-Key"
    methods: frozenset[str] = DEFAULT_METHODS
    required: bool = False
    routes: tuple[Route, ...] = ()
    keep_server_errors: bool = False
    max_request_bytes: int = 1 << 20
    max_response_bytes: int = 1 << 20
    fail_open: bool = False
    unavailable_retry_after: int = 1

    @classmethod
    def of(
        cls,
        *,
        methods: Iterable[str] = DEFAULT_METHODS,
        routes: Iterable[Route] = (),
        **options: Any,
    ) -> HttpConfig:
        """The configuration from an adapter's options: method names in any case, routes in any
        iterable (every adapter takes the same options; they are normalized here, once)."""
        return cls(methods=frozenset(m.upper() for m in methods), routes=tuple(routes), **options)

    def guard(self, method: str, path: str) -> tuple[bool, bool]:
        """(is this request guarded, is a key required) for ``method`` on ``path``."""
        for route in self.routes:
            if fnmatch.fnmatchcase(path, route.path):
                methods = route.methods if route.methods is not None else self.methods
                if not route.enabled or method not in methods:
                    return False, False
                required = route.required if route.required is not None else self.required
                return True, required
        return method in self.methods, self.required and method in self.methods

    def keeps(self, status: int) -> bool:
        """Whether a response with ``status`` is kept for replay."""
        if status in NEVER_KEPT:
            return False
        return not (status >= 500 and not self.keep_server_errors)


def parse_key_header(values: Iterable[str]) -> str | None:
    """The idempotency key from the header's values, or None if absent.

    The draft defines the field as a Structured Field string (``"abc"``); a bare token (``abc``)
    is accepted too, leniently. More than one value is malformed.
    """
    values = list(values)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKeyError("more than one Idempotency-Key header")
    raw = values[0].strip(" \t")
    if len(raw) >= 2 and raw[0] == '"':
        inner = raw[1:-1]
        if raw[-1] == '"' and '"' not in inner and "\\" not in inner:
            return validate_key(inner)  # the common case: no escapes to undo
        return validate_key(_parse_sf_string(raw))
    if "," in raw:
        # WSGI servers join repeated headers with ", ": a bare key never holds a comma.
        raise InvalidKeyError("more than one Idempotency-Key value (or a bare key with a comma)")
    return validate_key(raw)


def _parse_sf_string(raw: str) -> str:
    """RFC 8941 section 4.2.5: a quoted string with ``\\"`` and ``\\\\`` escapes, nothing after."""
    out = []
    i = 1
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            if i + 1 >= len(raw) or raw[i + 1] not in '"\\':
                raise InvalidKeyError("malformed Idempotency-Key: bad escape in quoted string")
            out.append(raw[i + 1])
            i += 2
            continue
        if c == '"':
            if raw[i + 1 :].strip(" \t"):
                raise InvalidKeyError("malformed Idempotency-Key: text after the quoted string")
            return "".join(out)
        out.append(c)
        i += 1
    raise InvalidKeyError("malformed Idempotency-Key: unterminated quoted string")


def scope_from_credentials(secret: str | bytes = b"") -> Callable[[Mapping[str, str]], str]:
    """A ``scope=`` function: the namespace of a request is a keyed hash of its credentials
    (``Authorization`` and ``X-API-Key``), never the credentials themselves.

    With a ``secret`` (shared by every process of the deployment), a stored scope cannot be
    brute-forced offline into, say, a Basic-auth password. Requests without credentials share
    the ``anonymous`` scope: **an app whose users are identified by a session cookie must pass
    ``scope=``** keyed on the session id (the Django middleware does so by default). The whole
    Cookie header is not used: a response that sets any cookie would move the client's retry
    into another scope, where it would run again. A warning is logged once when cookie-only
    requests fall into the anonymous scope.
    """
    key = secret.encode() if isinstance(secret, str) else bytes(secret)

    warned = False

    def scope(headers: Mapping[str, str]) -> str:
        nonlocal warned
        credentials = [headers.get("authorization", ""), headers.get("x-api-key", "")]
        if not any(credentials):
            if headers.get("cookie") and not warned:
                # Cookies are not hashed by default: any response that sets one would move the
                # client's retry into another scope, where it runs again. Say so once.
                warned = True
                log.warning(
                    "idempo: requests with cookies but no Authorization/X-API-Key share the "
                    "anonymous scope; for cookie sessions pass scope= (e.g. the session id)"
                )
            return "anonymous"
        message = "\x00".join(credentials).encode("utf-8", "surrogateescape")
        return "principal:" + hmac.new(key, message, hashlib.sha256).hexdigest()[:40]

    return scope


def default_scope(headers: Mapping[str, str]) -> str:
    """The default ``scope=``: :func:`scope_from_credentials` keyed with the
    ``IDEMPO_SCOPE_SECRET`` environment variable (set it in production; see that function)."""
    global _default_scope_fn
    if _default_scope_fn is None:
        _default_scope_fn = scope_from_credentials(os.environ.get("IDEMPO_SCOPE_SECRET", ""))
    return _default_scope_fn(headers)


_default_scope_fn: Callable[[Mapping[str, str]], str] | None = None


def _json_number(text: str) -> float | int:
    """JSON numbers as the canonical form has them (RFC 8785): 1.0 is 1; no infinities."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text!r}")
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Numbers are canonicalized while parsing, so the parsed document is already in canonical form
# and is hashed without a second walk (this runs on every guarded request).
_decode_json = json.JSONDecoder(parse_float=_json_number, parse_constant=_refuse_constant).decode
_canonical_text = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def fingerprint_request(
    method: str, path: str, query: str, body: bytes, content_type: str | None
) -> str:
    """Method, path, query (order-insensitive) and body; a JSON body is canonicalized, so the
    same document serialized differently gets the same fingerprint. A body that claims to be
    JSON but is not (or holds NaN, Infinity, lone surrogates) is fingerprinted by its bytes:
    never an error, since it is the application's to refuse."""
    request: dict[str, Any] = {
        "method": method.upper(),
        "path": path,
        "query": urlencode(sorted(parse_qsl(query, keep_blank_values=True))) if query else "",
    }
    media = (content_type or "").split(";")[0].strip().lower()
    if body and (media == "application/json" or media.endswith("+json")):
        try:
            text = _canonical_text({**request, "body": {"json": _decode_json(body.decode())}})
            return hashlib.sha256(text.encode()).hexdigest()
        except (ValueError, UnicodeError, RecursionError):
            pass
    return fingerprint({**request, "body": {"sha256": hashlib.sha256(body).hexdigest()}})


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def encode_response(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """A response as kept in the store: a JSON head line, then the body bytes."""
    kept = [(k, v) for k, v in headers if k.lower() not in _NOT_STORED_HEADERS]
    head = json.dumps({"status": status, "headers": kept}, separators=(",", ":"))
    return head.encode() + b"\n" + body


def decode_response(data: bytes) -> StoredResponse:
    head, _, body = data.partition(b"\n")
    meta = json.loads(head)
    return StoredResponse(meta["status"], [(k, v) for k, v in meta["headers"]], body)


def replay_headers(stored: StoredResponse) -> list[tuple[str, str]]:
    return [
        *stored.headers,
        ("content-length", str(len(stored.body))),
        ("idempotent-replayed", "true"),
    ]


def problem(
    error: IdempoError, *, instance: str | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """An RFC 9457 problem+json response for ``error``: status, headers, body."""
    status = error.status
    doc: dict[str, Any] = {
        "type": "about:blank",
        "title": error.title,
        "status": status,
        "detail": str(error),
    }
    if instance:
        doc["instance"] = instance
    headers = [("content-type", "application/problem+json")]
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float):
        headers.append(("retry-after", str(max(1, int(-(-retry_after // 1))))))
    body = json.dumps(doc).encode()
    headers.append(("content-length", str(len(body))))
    return status, headers, body


ScopeFn = Callable[[Mapping[str, str]], str]


class _ResponseBytes:
    """Responses are kept as the bytes :func:`encode_response` wrote: no second encoding."""

    name = "http-response"

    def dumps(self, value: Any) -> bytes:
        assert isinstance(value, bytes)
        return value

    def loads(self, data: bytes) -> Any:
        return data


RESPONSE_SERIALIZER = _ResponseBytes()


class ResponseCapture:
    """A response as it passes through an adapter: status, headers, body up to a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 500
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.started = False  # the status line went out: the handler has answered
        self.finished = False  # the outcome was settled (kept or released)
        self.client_gone = False  # sending to the client failed

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = int(status)
        self.headers = headers
        self.started = True

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.chunks.append(chunk)
        else:
            self.chunks.clear()  # over the limit: keep nothing rather than a truncated body


def record_for(config: HttpConfig, capture: ResponseCapture) -> bytes | None:
    """What to store for a finished response: its encoding, a not-stored marker if it is too
    large, or None when it must not be kept (the key is then released)."""
    if not config.keeps(capture.status):
        return None
    if capture.size > capture.limit:
        reason = f"response too large to keep: {capture.size} bytes, the limit is {capture.limit}"
        return outcomes.encode_not_stored(reason)
    encoded = encode_response(capture.status, capture.headers, b"".join(capture.chunks))
    return outcomes.encode_value(RESPONSE_SERIALIZER, encoded)


def record_for_abandoned(config: HttpConfig, capture: ResponseCapture) -> bytes | None:
    """What to store when a response stopped before its end because the client went away.

    If the handler had already answered with a status worth keeping, its work is done: keep a
    not-stored marker, so that the retry is refused (409) instead of running the handler a
    second time. Otherwise (no answer yet, or an answer never kept) release the key (None).
    """
    if not capture.started or not config.keeps(capture.status):
        return None
    return outcomes.encode_not_stored(
        "the response was not delivered in full (the client went away while it was sent)"
    )


def read_stored(data: bytes, *, key: str, scope: str) -> StoredResponse:
    """The kept response, or OutcomeNotStoredError if the first one was not kept."""
    value = outcomes.decode(RESPONSE_SERIALIZER, data)
    if isinstance(value, outcomes.NotStored):
        raise OutcomeNotStoredError(
            f"the first request with this key completed, but its response was not kept "
            f"({value.reason}); use a new key to repeat the operation",
            reason=value.reason,
            key=key,
            scope=scope,
        )
    return decode_response(value)
