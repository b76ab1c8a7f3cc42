"""What the idempo httpx clients share: keys, retry policy, backoff, response annotations.

The clients themselves, and the documentation: :mod:`idempo.client` (the async client is
written once in ``client/_async/client.py``; its sync twin is generated).
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

try:
    import httpx
    import stamina
except ImportError as exc:  # pragma: no cover - exercised by a test that hides httpx
    raise ImportError(
        f"idempo.client needs httpx and stamina ({exc.name} is missing): "
        "pip install 'idempo[client]'"
    ) from exc

from idempo.core.http import parse_key_header
from idempo.core.keys import validate_key
from idempo.errors import InvalidKeyError

if TYPE_CHECKING:
    from httpx._types import HeaderTypes


def _stamina_too_old() -> bool:
    """Retry-After needs backoff hooks that return a wait: stamina 25.2 or later."""
    try:
        major, minor = (int(p) for p in importlib.metadata.version("stamina").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False  # no metadata or an unusual version string: assume a development build
    return (major, minor) < (25, 2)


if _stamina_too_old():  # pragma: no cover
    raise ImportError(
        "idempo.client needs stamina>=25.2 (backoff hooks that return a wait): "
        "pip install -U 'idempo[client]' 'stamina>=25.2'"
    )

__all__ = [
    "DEFAULT_KEY_METHODS",
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "RETRY_ERRORS",
    "RetryInfo",
    "encode_key",
    "retry_info",
    "was_replayed",
]

#: Methods that get an automatic key (``auto_key=True``) when the caller gave none.
DEFAULT_KEY_METHODS = frozenset({"POST", "PATCH"})

#: Methods HTTP defines as idempotent (RFC 9110, 9.2.2): retried even without a key.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

#: Statuses that are retried. 409 only when the request carries a key (the IETF draft's "a
#: request with this key is still in flight"); without one it is an ordinary conflict that a
#: retry would only repeat. 501, 505 and 511 are server errors no retry can cure.
DEFAULT_RETRY_STATUSES = frozenset(
    {408, 409, 425, 429} | {s for s in range(500, 600) if s not in {501, 505, 511}}
)

#: Transport errors that are retried: the request may not have arrived, or its reply was lost.
#: (Not LocalProtocolError, UnsupportedProtocol or ProxyError: retrying cannot cure them.)
RETRY_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,  # ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout
    httpx.NetworkError,  # ConnectError, ReadError, WriteError, CloseError
    httpx.RemoteProtocolError,  # e.g. the server closed the connection mid-response
)

_DEFAULT_TIMEOUT = httpx.Timeout(5.0)  # httpx's own default
_EXTENSION = "idempo"


class RetryInfo(TypedDict):
    """What happened to one logical request: ``response.extensions["idempo"]``."""

    #: The idempotency key sent (unquoted), or None if the request carried none.
    key: str | None
    #: How many times the request was sent (1 = no retry).
    attempts: int
    #: Whether the request was eligible for retries at all.
    retryable: bool


def retry_info(response: httpx.Response) -> RetryInfo | None:
    """The :class:`RetryInfo` of a response from :class:`Client` or :class:`AsyncClient`."""
    info: RetryInfo | None = response.extensions.get(_EXTENSION)
    return info


def was_replayed(response: httpx.Response) -> bool:
    """True if the server says this response is a replay of a stored one
    (``Idempotent-Replayed: true``, as Stripe and idempo's middleware send it)."""
    value = response.headers.get("Idempotent-Replayed", "").strip().lower()
    return value in {"true", "?1"}


def encode_key(key: str) -> str:
    """``key`` as an RFC 8941 Structured Field string: in double quotes, ``\\`` and ``"``
    escaped. Raises :class:`~idempo.errors.InvalidKeyError` unless it is 1-255 printable ASCII
    characters (exactly what a Structured Field string can carry)."""
    validate_key(key)
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_bare_key(key: str) -> str:
    """``key`` sent bare (``quote_key=False``): only a key that reads back as itself. A key that
    starts with a double quote would be read as a Structured Field string (``"abc"`` as
    ``abc``: another operation's key), one holding a comma as two values, and surrounding
    spaces are stripped on the way: each is refused (InvalidKeyError; quote it instead)."""
    validate_key(key)
    if '"' in key or "," in key or key != key.strip(" \t"):
        raise InvalidKeyError(
            f"idempotency key {key!r} cannot be sent bare (it would be read as another key): "
            "send it as a Structured Field string (quote_key=True)"
        )
    return key


def _decode_key(raw: str) -> str:
    """The key in a header value: a Structured Field string is unquoted; anything else (a bare
    token, or a value idempo would reject) is taken as it is."""
    try:
        return parse_key_header([raw]) or raw
    except InvalidKeyError:
        return raw


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP-date), or None.

    Fractional seconds are accepted leniently; negative and past values mean "now"."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _is_replayable(stream: object) -> bool:
    """Whether a request body can be sent again. Bodies built from ``content=bytes/str``,
    ``json=``, ``data=`` (a ``ByteStream``) and ``files=`` (re-rendered; files are rewound) can;
    an iterator or generator given as ``content=`` cannot: it is consumed by the first send."""
    return isinstance(stream, httpx.ByteStream) or type(stream).__name__ == "MultipartStream"


class _RetryableResponse(Exception):
    """Raised inside a stamina attempt to make it retry on a response."""

    def __init__(self, response: httpx.Response, wait: float | None) -> None:
        super().__init__(response.status_code)
        self.response = response
        self.wait = wait  # a Retry-After-derived backoff, or None for stamina's own


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one logical request is sent."""

    key: str | None
    retryable: bool


class _Attempts(Protocol):
    """A stamina retry context, walked by ``for`` in the sync client and ``async for`` in the
    async one (stamina's own class for it is private)."""

    def __iter__(self) -> Iterator[stamina.Attempt]: ...

    def __aiter__(self) -> AsyncIterator[stamina.Attempt]: ...


class _Policy:
    """Everything the sync and async clients share: keys, what to retry, how long to wait."""

    def __init__(
        self,
        *,
        key_header: str,
        auto_key: bool,
        key_methods: Iterable[str],
        quote_key: bool,
        attempts: int | None,
        retry_timeout: float | None,
        wait_initial: float,
        wait_max: float,
        wait_jitter: float,
        retry_statuses: Iterable[int],
        client_headers: HeaderTypes | None,
    ) -> None:
        """``client_headers`` are the client-wide default headers, checked for a key."""
        self.key_header = key_header
        self.auto_key = auto_key
        self.key_methods = frozenset(m.upper() for m in key_methods)
        self.quote_key = quote_key
        self.attempts = attempts
        self.retry_timeout = retry_timeout
        self.wait_initial = wait_initial
        self.wait_max = wait_max
        self.wait_jitter = wait_jitter
        self.retry_statuses = frozenset(retry_statuses)
        if client_headers is not None and key_header in httpx.Headers(client_headers):
            raise ValueError(
                f"a client-wide {self.key_header} header would give every request the same key; "
                "pass idempotency_key=... per request instead"
            )

    def encode(self, key: str) -> str:
        return encode_key(key) if self.quote_key else encode_bare_key(key)

    def add_key(self, kwargs: dict[str, Any], key: str | None) -> None:
        """Put a per-request ``idempotency_key=`` into the request's headers."""
        if key is None:
            return
        headers = httpx.Headers(kwargs.get("headers"))
        existing = headers.get(self.key_header)
        if existing is not None and _decode_key(existing) != key:
            raise ValueError(
                f"idempotency_key={key!r} contradicts the {self.key_header} header {existing!r}"
            )
        headers[self.key_header] = self.encode(key)
        kwargs["headers"] = headers

    def prepare(self, request: httpx.Request) -> _Plan:
        """Choose the request's key (once: it is then in its headers) and whether to retry."""
        method = request.method.upper()
        raw = request.headers.get(self.key_header)
        key: str | None
        if raw is not None:
            key = _decode_key(raw)
        elif self.auto_key and method in self.key_methods:
            key = str(uuid.uuid4())
            request.headers[self.key_header] = self.encode(key)
        else:
            key = None
        safe = key is not None or method in IDEMPOTENT_METHODS
        return _Plan(key=key, retryable=safe and _is_replayable(request.stream))

    def retrying(self) -> _Attempts:
        """A stamina retry context for one logical request."""
        deadline = None if self.retry_timeout is None else time.monotonic() + self.retry_timeout

        def on(exc: Exception) -> bool | float:
            if isinstance(exc, _RetryableResponse):
                if exc.wait is None:
                    return True  # stamina's exponential backoff with jitter
                if deadline is not None and time.monotonic() + exc.wait > deadline:
                    return False  # the server asks us to wait past our budget: stop now
                return exc.wait  # stamina sleeps exactly this long
            return isinstance(exc, RETRY_ERRORS)

        return stamina.retry_context(
            on=on,
            attempts=self.attempts,
            timeout=self.retry_timeout,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_jitter,
        )

    def check(self, response: httpx.Response, plan: _Plan, next_wait: float) -> None:
        """Raise :class:`_RetryableResponse` if ``response`` calls for another attempt.

        With ``Retry-After``, the wait is the larger of it and our own (jitter-free) backoff,
        capped at ``wait_max``: never sooner than the server asks, never faster than we would."""
        status = response.status_code
        if status not in self.retry_statuses or (status == 409 and plan.key is None):
            return
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        if status == 409 and retry_after is None:
            # "Still in flight" comes with Retry-After (the draft's, and idempo's, answer); a
            # 409 without it is a final conflict (e.g. "the first response was not kept").
            return
        wait = None if retry_after is None else min(self.wait_max, max(retry_after, next_wait))
        raise _RetryableResponse(response, wait)

    @staticmethod
    def finish(response: httpx.Response, plan: _Plan, attempts: int) -> httpx.Response:
        response.extensions[_EXTENSION] = RetryInfo(
            key=plan.key, attempts=attempts, retryable=plan.retryable
        )
        return response

    @staticmethod
    def annotate(exc: BaseException, plan: _Plan, attempts: int) -> None:
        exc.add_note(f"idempo.client: gave up after {attempts} attempt(s); key={plan.key!r}")
