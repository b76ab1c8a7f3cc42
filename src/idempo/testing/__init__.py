"""Public test helpers: the store conformance suite, for idempo's stores and third-party ones.

``StoreConformance`` tests a synchronous store, ``AsyncStoreConformance`` an asynchronous one;
subclass either and provide a ``store`` fixture (see :mod:`idempo.testing._async.conformance`).
Needs pytest (and pytest-asyncio for the async suite).
"""

from idempo.testing._async.conformance import AsyncStoreConformance
from idempo.testing._sync.conformance import StoreConformance

__all__ = ["AsyncStoreConformance", "StoreConformance"]
