"""HTTP semantics of idempotency keys, free of any framework and of I/O (IETF draft + Stripe).

Every decision about keys, fingerprints, scopes, what to keep and what to replay is here; the
HTTP front (``idempo._async.http``, and its generated sync twin) runs them in order for every
adapter, and the adapters only translate their framework's requests and responses.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import parse_qsl, urlencode

import http_sf

from idempo.core import outcome as outcomes
from idempo.core.fingerprint import fingerprint
from idempo.core.jsontext import compact_json
from idempo.core.keys import validate_key
from idempo.core.outcome import RELEASE, Keep, Release
from idempo.errors import IdempoError, InvalidKeyError, MissingKeyError, RequestTooLargeError

__all__ = [
    "DEFAULT_HEADER_FILTER",
    "DEFAULT_METHODS",
    "DEFAULT_PROBLEM_TYPE_BASE",
    "DEFAULT_REPLAY_DENY",
    "DEFAULT_SESSION_COOKIES",
    "NEVER_STORED_HEADERS",
    "Drop",
    "HeaderFilter",
    "HttpConfig",
    "HttpOptions",
    "MissingKeyError",
    "Pass",
    "RequestTooLargeError",
    "Respond",
    "ResponseCapture",
    "Route",
    "StoredResponse",
    "decode_response",
    "encode_response",
    "fingerprint_request",
    "outcome_for",
    "outcome_for_abandoned",
    "parse_key_header",
    "problem",
    "read_stored",
    "replay_headers",
    "scope_from_credentials",
    "too_large",
]

DEFAULT_METHODS = frozenset({"POST", "PATCH"})

# Statuses never kept: auth, throttling and transient answers must not poison a key. 5xx are
# not kept either unless the configuration says so (as Stripe and the IETF draft do).
NEVER_KEPT = frozenset({401, 403, 408, 409, 425, 429})

# Headers never stored, whatever the configuration: per-connection (hop-by-hop), recomputed on
# replay, or carrying state that belongs to the first client alone (cookies).
NEVER_STORED_HEADERS = frozenset(
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
        "content-length",
        "idempotent-replayed",
    }
)

# Headers not replayed by default (``replay_deny=`` replaces this list, ``replay_allow=`` turns
# it into an allow list): per-response ones, which would be stale or wrong on a replay, and
# anything that looks like a credential or a secret the handler handed to the first client.
# Globs over lower-case names.
DEFAULT_REPLAY_DENY = frozenset(
    {
        "date",
        "server",
        "age",
        "via",
        "authorization",
        "www-authenticate",
        "cookie",
        "x-api-key",
        "request-id",
        "x-request-id",
        "x-correlation-id",
        "traceparent",
        "tracestate",
        "x-amzn-trace-id",
        "x-b3-*",
        "*token*",
        "*secret*",
        "*password*",
        "*credential*",
        "*api-key*",
        "*session*",
    }
)


class HeaderFilter:
    """Which response headers are stored for replay: never :data:`NEVER_STORED_HEADERS`; then
    either only the ``allow`` globs, or all but the ``deny`` globs. Decisions are cached per
    name (a few dozen distinct names in practice), so the globs cost nothing per request."""

    __slots__ = ("_allow", "_cache", "_deny")

    def __init__(
        self, deny: Iterable[str] = DEFAULT_REPLAY_DENY, allow: Iterable[str] | None = None
    ) -> None:
        self._deny = _globs(deny)
        self._allow = None if allow is None else _globs(allow)
        self._cache: dict[str, bool] = {}

    def keeps(self, name: str) -> bool:
        kept = self._cache.get(name)
        if kept is None:
            lower = name.lower()
            if lower in NEVER_STORED_HEADERS:
                kept = False
            elif self._allow is not None:
                kept = self._allow.fullmatch(lower) is not None
            else:
                kept = self._deny.fullmatch(lower) is None
            if len(self._cache) < 4096:  # names come from handlers, but bound it anyway
                self._cache[name] = kept
        return kept

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeaderFilter):
            return NotImplemented
        return (self._deny.pattern, getattr(self._allow, "pattern", None)) == (
            other._deny.pattern,
            getattr(other._allow, "pattern", None),
        )

    def __hash__(self) -> int:
        return hash(self._deny.pattern)


def _globs(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex for a set of case-insensitive globs (``x-b3-*``)."""
    parts = sorted({fnmatch.translate(p.strip().lower()) for p in patterns if p.strip()})
    return re.compile("|".join(parts) if parts else "(?!)")


DEFAULT_HEADER_FILTER = HeaderFilter()


# The session cookies of the frameworks users run: Starlette's and Flask's, and Django's.
DEFAULT_SESSION_COOKIES = ("session", "sessionid")


@dataclass(frozen=True, slots=True)
class Route:
    """A per-route rule: paths matching ``path`` (a glob, e.g. ``/charges/*``) are guarded or
    not (``enabled``), with their own ``required`` and ``methods`` (None: the defaults)."""

    path: str
    enabled: bool = True
    required: bool | None = None
    methods: frozenset[str] | None = None


class HttpOptions(TypedDict, total=False):
    """The options every HTTP adapter takes (ASGI, WSGI, Django's ``settings.IDEMPO``, and
    :func:`idempo.fastapi.document_idempotency`), besides ``store``.

    required: answer 400 when a guarded request has no key (default False).
    methods: the guarded methods, any case (default POST and PATCH).
    routes: per-route rules (:class:`Route`), the first match wins.
    header: the key's header (default ``Idempotency-Key``).
    scope: a callable of the request headers (lower-case names) returning the principal's
        namespace (default: a keyed hash of the credentials, else of the session cookie).
    session_cookies: the session cookies the default scope keys a request without credentials
        on (default :data:`DEFAULT_SESSION_COOKIES`, and Django's ``SESSION_COOKIE_NAME``).
    ttl, lease, wait: as for functions (seconds).
    keep_server_errors: keep 5xx answers too (the IETF draft's choice; default False).
    max_request_bytes: the largest body read to fingerprint a request (default 1 MiB).
    max_response_bytes: the largest response kept for replay (default 1 MiB).
    fail_open: when the store is down, pass requests through unguarded instead of answering
        503 (unsafe: a retry may then run twice).
    replay_deny: globs of response headers never stored for replay (default
        :data:`DEFAULT_REPLAY_DENY`: per-response and secret-looking ones); replaces the default.
    replay_allow: globs of the only response headers stored (an allow list; overrides
        ``replay_deny``). Cookies and hop-by-hop headers are never stored either way.
    problem_type_base: the prefix of problem+json ``type`` URIs (default ``urn:idempo:problem:``).
    hooks: an :class:`idempo.observe.Hooks` (replays, conflicts, takeovers, ...); a replay's
        hook may append to ``event.headers``.
    store_options: keyword arguments for opening ``store`` when it is a URL.
    replay_cache: off by default; seconds (or a
        :class:`~idempo.replay_cache.ReplayCache`) for which this process answers a retry
        of a completed key from memory, with no round trip. A delete through the adapter's
        ``store`` is seen at once; one made elsewhere (another process, ``idempo keys delete``)
        within that many seconds.
    """

    required: bool
    methods: Iterable[str]
    routes: Iterable[Route]
    header: str
    scope: Callable[[Mapping[str, str]], str] | None
    session_cookies: Iterable[str]
    ttl: float
    lease: float
    wait: float
    keep_server_errors: bool
    max_request_bytes: int
    max_response_bytes: int
    fail_open: bool
    replay_deny: Iterable[str] | None
    replay_allow: Iterable[str] | None
    problem_type_base: str
    hooks: Any
    store_options: dict[str, Any] | None
    # seconds, or an idempo.replay_cache.ReplayCache (core imports nothing above it)
    replay_cache: float | Any | None


def check_options(options: Mapping[str, Any], *, allowed: Iterable[str] = ()) -> None:
    """TypeError naming every option that is not an :class:`HttpOptions` key (nor in
    ``allowed``): a misspelt option must not be silently ignored."""
    known = set(HttpOptions.__annotations__) | set(allowed)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"unknown idempotency option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


_CONFIG_OPTIONS = (
    "header",
    "required",
    "keep_server_errors",
    "max_request_bytes",
    "max_response_bytes",
    "fail_open",
    "problem_type_base",
)

#: problem+json ``type`` URIs are this base and the case's name (``...:in-progress``): a URN,
#: since nothing need be fetched to tell the cases apart (RFC 9457 section 3.1.1); set
#: ``problem_type_base`` to a URL of your API's docs to make them links.
DEFAULT_PROBLEM_TYPE_BASE = "urn:idempo:problem:"


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
    headers_kept: HeaderFilter = DEFAULT_HEADER_FILTER
    problem_type_base: str = DEFAULT_PROBLEM_TYPE_BASE

    @classmethod
    def of(cls, options: HttpOptions) -> HttpConfig:
        """The configuration from an adapter's options: method names in any case, routes in any
        iterable (every adapter takes the same options; they are normalized here, once)."""
        deny, allow = options.get("replay_deny"), options.get("replay_allow")
        if isinstance(deny, str) or isinstance(allow, str):
            raise TypeError("replay_deny and replay_allow are lists of header names, not a str")
        headers_kept = (
            DEFAULT_HEADER_FILTER
            if deny is None and allow is None
            else HeaderFilter(DEFAULT_REPLAY_DENY if deny is None else deny, allow)
        )
        return cls(
            methods=frozenset(m.upper() for m in options.get("methods", DEFAULT_METHODS)),
            routes=tuple(options.get("routes", ())),
            headers_kept=headers_kept,
            **{k: options[k] for k in _CONFIG_OPTIONS if k in options},  # type: ignore[literal-required]
        )

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

    The draft defines the field as a Structured Field (RFC 9651) Item: a String (``"abc"``),
    whose parameters are allowed and ignored (``"abc";v=1``). A bare key (``abc``, a UUID) is
    accepted too, leniently, as Stripe's clients send it; a bare key never holds a double quote
    (``"abc`` is neither) nor a comma (two values). Anything else, and more than one value, is
    malformed.
    """
    values = list(values)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKeyError("more than one Idempotency-Key header")
    raw = values[0].strip(" \t")
    if raw[:1] == '"':
        inner = raw[1:-1]
        if len(raw) >= 2 and raw[-1] == '"' and '"' not in inner and "\\" not in inner:
            return validate_key(inner)  # the common case: a plain string, no escapes, no params
        return validate_key(_parse_sf_string(raw))
    if "," in raw:
        # WSGI servers join repeated headers with ", ": a bare key never holds a comma.
        raise InvalidKeyError("more than one Idempotency-Key value (or a bare key with a comma)")
    if '"' in raw:
        raise InvalidKeyError(
            "malformed Idempotency-Key: a bare key cannot hold a double quote; send a "
            'Structured Field string ("...") instead'
        )
    return validate_key(raw)


def _parse_sf_string(raw: str) -> str:
    """A Structured Field Item that must be a String; its parameters are ignored."""
    try:
        item = http_sf.parse(raw.encode("latin-1"), tltype="item")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError) as exc:
        raise InvalidKeyError(f"malformed Idempotency-Key: {exc}") from None
    value = item[0] if isinstance(item, tuple) else item
    if not isinstance(value, str) or isinstance(value, http_sf.Token | http_sf.DisplayString):
        raise InvalidKeyError("malformed Idempotency-Key: not a Structured Field string")
    return value


def scope_from_credentials(
    secret: str | bytes = b"", *, cookies: Iterable[str] = ()
) -> Callable[[Mapping[str, str]], str]:
    """A ``scope=`` function: the namespace of a request is a keyed hash of its principal's
    credentials, never the credentials themselves.

    The credentials are ``Authorization`` and ``X-API-Key``; a request with neither is keyed
    on its session cookie (the first of ``cookies`` it carries; e.g.
    :data:`DEFAULT_SESSION_COOKIES`, the frameworks' ``session`` and ``sessionid``), so that two
    users of a cookie-session app never share a namespace. Only the session cookie counts, not
    the whole Cookie header: a response that sets some other cookie must not move the client's
    retry into another scope, where it would run again. A request with no credential at all is
    ``anonymous``.

    With a ``secret`` (shared by every process of the deployment; the adapters read
    ``IDEMPO_SCOPE_SECRET``), a stored scope cannot be brute-forced offline into, say, a
    Basic-auth password.
    """
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    names = tuple(cookies)

    def principal(message: str) -> str:
        digest = hmac.new(key, message.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return "principal:" + digest.hexdigest()[:40]

    def scope(headers: Mapping[str, str]) -> str:
        authorization = headers.get("authorization", "")
        api_key = headers.get("x-api-key", "")
        if authorization or api_key:
            return principal(f"{authorization}\x00{api_key}")
        cookie = headers.get("cookie")
        if cookie and names:
            session = session_cookie(cookie, names)
            if session:
                # Spelled as a credential, so that a Django app's records keep their scope.
                return principal(f"session {session}\x00")
        return "anonymous"

    return scope


def session_cookie(header: str, names: tuple[str, ...]) -> str | None:
    """The value of the first of ``names`` found in a Cookie header (RFC 6265 pairs)."""
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name in names and value and name not in found:
            found[name] = value
    for name in names:
        if name in found:
            return found[name]
    return None


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


_canonical_text = compact_json(sort_keys=True, ensure_ascii=False)


# The string encoder of _canonical_text (ensure_ascii=False), to spell the outer document's
# strings the same way when it is built by concatenation.
_json_string = json.encoder.encode_basestring


def fingerprint_request(
    method: str, path: str, query: str, body: bytes, content_type: str | None
) -> str:
    """Method, path, query (order-insensitive) and body; a JSON body is canonicalized, so the
    same document serialized differently gets the same fingerprint. A body that claims to be
    JSON but is not (or holds NaN, Infinity, lone surrogates) is fingerprinted by its bytes:
    never an error, since it is the application's to refuse."""
    method = method.upper()
    query = urlencode(sorted(parse_qsl(query, keep_blank_values=True))) if query else ""
    if body and content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            try:
                # The canonical text of {"body": {"json": doc}, "method":, "path":, "query":}
                # (keys sorted), spelled out: the parsed document is canonical already.
                text = (
                    '{"body":{"json":'
                    + _canonical_text(_decode_json(body.decode()))
                    + '},"method":'
                    + _json_string(method)
                    + ',"path":'
                    + _json_string(path)
                    + ',"query":'
                    + _json_string(query)
                    + "}"
                )
                return hashlib.sha256(text.encode()).hexdigest()
            except (ValueError, UnicodeError, RecursionError):
                pass
    return fingerprint(
        {
            "method": method,
            "path": path,
            "query": query,
            "body": {"sha256": hashlib.sha256(body).hexdigest()},
        }
    )


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


# Built once: json.dumps with non-default arguments builds a new encoder on every call.
_head_text = compact_json(sort_keys=False, ensure_ascii=True)
_head_decode = json.JSONDecoder().decode


def _head(status: int, headers: Iterable[tuple[str, str]], headers_kept: HeaderFilter) -> bytes:
    keeps = headers_kept.keeps
    kept = [(k, v) for k, v in headers if keeps(k)]
    return _head_text({"status": status, "headers": kept}).encode()


def encode_response(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    headers_kept: HeaderFilter = DEFAULT_HEADER_FILTER,
) -> bytes:
    """A response as kept in the store: a JSON head line, then the body bytes. Only the headers
    ``headers_kept`` keeps are stored (never cookies, hop-by-hop, or secrets by default)."""
    return b"".join((_head(status, headers, headers_kept), b"\n", body))


def decode_response(data: bytes, start: int = 0) -> StoredResponse:
    """The response :func:`encode_response` wrote (from ``start`` in ``data``)."""
    end = data.find(b"\n", start)
    if end < 0:
        head, body = data[start:], b""
    else:
        head, body = data[start:end], data[end + 1 :]
    meta = _head_decode(head.decode())
    return StoredResponse(meta["status"], [(k, v) for k, v in meta["headers"]], body)


def replay_headers(stored: StoredResponse) -> list[tuple[str, str]]:
    return [
        *stored.headers,
        ("content-length", str(len(stored.body))),
        ("idempotent-replayed", "true"),
    ]


def problem(
    error: IdempoError,
    *,
    instance: str | None = None,
    type_base: str = DEFAULT_PROBLEM_TYPE_BASE,
) -> Respond:
    """An RFC 9457 problem+json response for ``error``: a ``type`` URI naming the case (its
    base configurable), a ``title`` stable per case, the ``detail`` of this one, and
    ``Retry-After`` when the error says when to retry (409 in progress, 503 store
    unavailable)."""
    status = error.status
    doc: dict[str, Any] = {
        "type": type_base + error.problem_type,
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
    elif status == 409:
        # A final conflict (the first response was not kept): a retry gets the same answer.
        # Stripe's SDKs retry every 409 unless told otherwise, in this header (decision 0006).
        headers.append(("stripe-should-retry", "false"))
    body = json.dumps(doc).encode()
    headers.append(("content-length", str(len(body))))
    return Respond(status, headers, body)


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

# The outcome envelope of every kept response, before its bytes (outcomes.encode_value's).
_RESPONSE_ENVELOPE = outcomes.encode_value(RESPONSE_SERIALIZER, b"")


class ResponseCapture:
    """A response as it passes through an adapter: status, headers, body up to a limit."""

    __slots__ = ("chunks", "headers", "limit", "size", "started", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 500
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.started = False  # the status line went out: the handler has answered

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


def outcome_for(config: HttpConfig, capture: ResponseCapture) -> Keep | Release:
    """What to do with a finished response: keep its encoding, keep a not-stored marker if it
    is too large (a retry is refused, never run twice), or release the key when the response
    must not be kept (5xx, 401, 429, ...: a retry runs again)."""
    if not config.keeps(capture.status):
        return RELEASE
    if capture.size > capture.limit:
        reason = f"response too large to keep: {capture.size} bytes, the limit is {capture.limit}"
        return Keep(outcomes.encode_not_stored(reason))
    # outcomes.encode_value(RESPONSE_SERIALIZER, encode_response(...)), in one join.
    head = _head(capture.status, capture.headers, config.headers_kept)
    return Keep(b"".join((_RESPONSE_ENVELOPE, head, b"\n", *capture.chunks)))


def outcome_for_abandoned(
    config: HttpConfig, capture: ResponseCapture, *, client_gone: bool
) -> Keep | Release:
    """What to do when a response stopped before its end.

    If the client went away after the handler had answered with a status worth keeping, the
    handler's work is done: keep a not-stored marker, so that the retry is refused (409)
    instead of running the handler a second time. Otherwise (the handler failed, never
    answered, or answered with a status never kept) release the key.
    """
    if not client_gone or not capture.started or not config.keeps(capture.status):
        return RELEASE
    return Keep(
        outcomes.encode_not_stored(
            "the response was not delivered in full (the client went away while it was sent)"
        )
    )


def read_stored(data: bytes, *, key: str, scope: str) -> StoredResponse:
    """The kept response, or OutcomeNotStoredError if the first one was not kept."""
    if data.startswith(_RESPONSE_ENVELOPE):  # a kept response: no copy of it to unwrap
        return decode_response(data, len(_RESPONSE_ENVELOPE))
    kept = outcomes.replayed(RESPONSE_SERIALIZER, data, scope=scope, key=key, what="response")
    return decode_response(kept)


def too_large(limit: int) -> RequestTooLargeError:
    """The error for a request body over ``limit`` bytes (every adapter says it the same way)."""
    return RequestTooLargeError(
        f"the request body is over {limit} bytes, the most this endpoint reads to recognise a "
        "retried request"
    )


# -- what the HTTP front tells an adapter to do -------------------------------------------


@dataclass(frozen=True, slots=True)
class Pass:
    """Hand the request to the app unguarded. ``body``: the body already read (to fingerprint
    it), which the app must get instead of the spent stream; None if it was not read."""

    body: bytes | None = None


PASS = Pass()


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer this instead of running the app: a replay, or a problem+json refusal.

    A replay may be shared by every request that replays the same outcome: an adapter hands
    the server a copy of ``headers``, never the list itself. ``raw_headers``, when set, are the
    same headers encoded (latin-1), for an adapter that sends bytes (ASGI)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_headers: tuple[tuple[bytes, bytes], ...] | None = field(
        default=None, compare=False, repr=False
    )


@dataclass(frozen=True, slots=True)
class Drop:
    """The client went away before its request arrived in full: nobody is left to answer."""


DROP = Drop()
