"""Adapters that put each peer idempotency library behind one shape for bench_peers.py.

Each module names its distribution (``DIST``) and offers what the library supports:

* ``function(kind, store, url, prefix, body)``: ``body`` (``charge(order_id) -> dict``, sync or
  async per ``kind``) made idempotent by the library on ``store`` (``"redis"`` or
  ``"postgres"``), keyed by ``order_id``; ``None`` when the library has no such surface.
* ``http(endpoint, store, url, prefix)``: an ASGI app serving ``POST /charges`` with ``endpoint``
  behind the library's middleware (or decorator), keyed by the ``Idempotency-Key`` header and
  kept in ``store`` (``"memory"`` or ``"redis"``); ``None`` when unsupported.

The adapters use each library's documented public API with its defaults, except where a default
would fail the comparison (noted in place).
"""
