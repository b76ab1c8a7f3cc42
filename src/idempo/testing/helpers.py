"""Assertions for your own code: is this function, or this endpoint, idempotent?

Each check runs the real thing (your function and its store, your server and its middleware)
and raises AssertionError saying what went wrong. ``effects`` is a callable returning how many
times the effect happened so far (rows in a table, calls to a fake provider); each check then
asserts the effect happened exactly once.

Functions (the key comes from the arguments, so each check takes zero-argument callables)::

    assert_idempotent(lambda: charge("o-1", 10), effects=charges.count)
    assert_idempotent_concurrently(lambda: charge("o-2", 10), effects=charges.count)
    assert_rejects_reuse(lambda: charge("o-3", 10), lambda: charge("o-3", 99))

Endpoints (a fresh key per check; ``client`` is an ``httpx.Client`` or a base URL)::

    assert_endpoint_idempotent(client, "POST", "/orders", json={"sku": "a"})
    assert_endpoint_idempotent_concurrently(client, "POST", "/orders", json={"sku": "a"})
    assert_endpoint_rejects_reuse(client, "POST", "/orders", json={"sku": "a"},
                                  changed={"json": {"sku": "b"}})

Each has an ``_async`` twin for ``async def`` functions and ``httpx.AsyncClient``.
"""

from idempo.testing._endpoint_checks import (
    assert_endpoint_idempotent,
    assert_endpoint_idempotent_async,
    assert_endpoint_idempotent_concurrently,
    assert_endpoint_idempotent_concurrently_async,
    assert_endpoint_rejects_reuse,
    assert_endpoint_rejects_reuse_async,
)
from idempo.testing._function_checks import (
    assert_idempotent,
    assert_idempotent_async,
    assert_idempotent_concurrently,
    assert_idempotent_concurrently_async,
    assert_rejects_reuse,
    assert_rejects_reuse_async,
)

__all__ = [
    "assert_endpoint_idempotent",
    "assert_endpoint_idempotent_async",
    "assert_endpoint_idempotent_concurrently",
    "assert_endpoint_idempotent_concurrently_async",
    "assert_endpoint_rejects_reuse",
    "assert_endpoint_rejects_reuse_async",
    "assert_idempotent",
    "assert_idempotent_async",
    "assert_idempotent_concurrently",
    "assert_idempotent_concurrently_async",
    "assert_rejects_reuse",
    "assert_rejects_reuse_async",
]
