"""One of the two idempo httpx clients, written once here; scripts/unasync.py generates the
other from this file. What they do: :mod:`idempo.client`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import httpx

from idempo.client._policy import (
    _DEFAULT_TIMEOUT,
    DEFAULT_KEY_METHODS,
    DEFAULT_RETRY_STATUSES,
    _Policy,
    _RetryableResponse,
)

if TYPE_CHECKING:
    from httpx._types import HeaderTypes, TimeoutTypes

__all__ = ["AsyncClient"]


class AsyncClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` that adds idempotency keys and retries safely.

    Every httpx argument is accepted (``base_url``, ``transport``, ``timeout``, ``headers``,
    ``auth``, ``event_hooks``, …); ``timeout`` is httpx's per-operation timeout. The rest:

    - ``key_header``: the header carrying the key (default ``Idempotency-Key``).
    - ``auto_key``: generate a uuid4 key for ``key_methods`` (default POST, PATCH) requests
      that have none. With ``auto_key=False`` such requests without a key are sent once.
    - ``quote_key``: send keys as Structured Field strings (``"abc"``, the IETF draft's form);
      False sends them bare (``abc``), as Stripe documents them.
    - ``attempts``: at most this many sends per logical request (default 5; None: no limit).
    - ``retry_timeout``: no retry is scheduled once this many seconds have passed since the
      first attempt (default 30; None: no limit).
    - ``wait_initial``, ``wait_max``, ``wait_jitter``: the backoff before retry *n* is
      ``min(wait_max, wait_initial * 2**(n-1) + random(0, wait_jitter))`` seconds.
      ``Retry-After`` replaces it (capped at ``wait_max``) when it asks for longer.
    - ``retry_statuses``: the statuses retried (default :data:`DEFAULT_RETRY_STATUSES`).

    Each request method also takes ``idempotency_key="..."``.
    """

    def __init__(
        self,
        *,
        base_url: httpx.URL | str = "",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: TimeoutTypes = _DEFAULT_TIMEOUT,
        headers: HeaderTypes | None = None,
        key_header: str = "Idempotency-Key",
        auto_key: bool = True,
        key_methods: Iterable[str] = DEFAULT_KEY_METHODS,
        quote_key: bool = True,
        attempts: int | None = 5,
        retry_timeout: float | None = 30.0,
        wait_initial: float = 0.1,
        wait_max: float = 5.0,
        wait_jitter: float = 1.0,
        retry_statuses: Iterable[int] = DEFAULT_RETRY_STATUSES,
        **kwargs: Any,
    ) -> None:
        self._idempo = _Policy(
            key_header=key_header,
            auto_key=auto_key,
            key_methods=key_methods,
            quote_key=quote_key,
            attempts=attempts,
            retry_timeout=retry_timeout,
            wait_initial=wait_initial,
            wait_max=wait_max,
            wait_jitter=wait_jitter,
            retry_statuses=retry_statuses,
            client_headers=headers,
        )
        super().__init__(
            base_url=base_url, transport=transport, timeout=timeout, headers=headers, **kwargs
        )

    async def send(
        self, request: httpx.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send ``request``, adding a key and retrying as the class describes. Sending the same
        :class:`httpx.Request` again reuses its key (it is in its headers by then)."""
        policy = self._idempo
        plan = policy.prepare(request)
        if not plan.retryable:
            return policy.finish(await super().send(request, stream=stream, **kwargs), plan, 1)
        attempts = 0
        previous: httpx.Response | None = None
        try:
            async for attempt in policy.retrying():
                with attempt:
                    if previous is not None:
                        await previous.aclose()
                        previous = None
                    attempts = attempt.num
                    response = await super().send(request, stream=stream, **kwargs)
                    previous = response
                    policy.check(response, plan, attempt.next_wait)
                    return policy.finish(response, plan, attempts)
        except _RetryableResponse as exhausted:
            return policy.finish(exhausted.response, plan, attempts)
        except httpx.TransportError as exc:
            policy.annotate(exc, plan, attempts)
            raise
        raise AssertionError("unreachable: stamina yields at least one attempt")

    async def request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.request`, plus ``idempotency_key``."""
        self._idempo.add_key(kwargs, idempotency_key)
        return await super().request(method, url, **kwargs)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[httpx.Response]:
        """:meth:`httpx.AsyncClient.stream`, plus ``idempotency_key``. Only the sending is
        retried: an error while you read the streamed body is yours to handle."""
        self._idempo.add_key(kwargs, idempotency_key)
        async with super().stream(method, url, **kwargs) as response:
            yield response

    async def get(
        self, url: httpx.URL | str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.get`, plus ``idempotency_key``."""
        return await self.request("GET", url, idempotency_key=idempotency_key, **kwargs)

    async def options(
        self, url: httpx.URL | str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.options`, plus ``idempotency_key``."""
        return await self.request("OPTIONS", url, idempotency_key=idempotency_key, **kwargs)

    async def head(
        self, url: httpx.URL | str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.head`, plus ``idempotency_key``."""
        return await self.request("HEAD", url, idempotency_key=idempotency_key, **kwargs)

    async def post(
        self, url: httpx.URL | str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.post`, plus ``idempotency_key``."""
        return await self.request("POST", url, idempotency_key=idempotency_key, **kwargs)

    async def put(
        self, url: httpx.URL | str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.put`, plus ``idempotency_key``."""
        return await self.request("PUT", url, idempotency_key=idempotency_key, **kwargs)

    async def patch(
        self, url: httpx.URL | str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.patch`, plus ``idempotency_key``."""
        return await self.request("PATCH", url, idempotency_key=idempotency_key, **kwargs)

    async def delete(
        self, url: httpx.URL | str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """:meth:`httpx.AsyncClient.delete`, plus ``idempotency_key``."""
        return await self.request("DELETE", url, idempotency_key=idempotency_key, **kwargs)
