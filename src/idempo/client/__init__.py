"""httpx clients that give every logical request one idempotency key and retry it safely.

::

    from idempo.client import Client, was_replayed

    with Client(base_url="https://api.example.com") as client:
        response = client.post("/charges", json={"amount": 1000})   # gets a fresh key
        response.extensions["idempo"]      # {"key": "…", "attempts": 2, "retryable": True}
        was_replayed(response)             # True if the server answered from its stored record

:class:`Client` and :class:`AsyncClient` *are* :class:`httpx.Client` and
:class:`httpx.AsyncClient` (subclasses): every method, argument and setting of httpx works as
usual. What they add, in :meth:`~Client.send` (which every request goes through):

- A POST or PATCH (``key_methods``) without a key gets one (uuid4), sent in the
  ``Idempotency-Key`` header as an RFC 8941 Structured Field string (``"…"``), as the IETF draft
  defines it. ``idempotency_key="…"`` on any request method, or an explicit header, sets it
  yourself. The key is chosen once per logical request and reused by all its retries.
- Retries with exponential backoff and jitter (stamina) on connection errors and timeouts,
  ``409`` (the same key is still in flight: only for requests carrying a key), ``408``, ``425``,
  ``429`` and 5xx except ``501``, ``505`` and ``511``, honouring ``Retry-After``.
- A request that is not idempotent by HTTP's definition (POST, PATCH, …) and carries no key, or
  whose body is a stream that cannot be sent twice, is sent exactly once.

After the last attempt the last response is returned (call ``raise_for_status()`` if you want an
error); if the last attempt failed with a transport error, that error is raised.
"""

from __future__ import annotations

# isort: off
# The shared module first: when httpx or stamina is missing, its ImportError names the extra.
from idempo.client._policy import (
    DEFAULT_KEY_METHODS,
    DEFAULT_RETRY_STATUSES,
    IDEMPOTENT_METHODS,
    RETRY_ERRORS,
    RetryInfo,
    encode_key,
    retry_info,
    was_replayed,
)
from idempo.client._async.client import AsyncClient
from idempo.client._sync.client import Client

# isort: on

__all__ = [
    "DEFAULT_KEY_METHODS",
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "RETRY_ERRORS",
    "AsyncClient",
    "Client",
    "RetryInfo",
    "encode_key",
    "retry_info",
    "was_replayed",
]
