"""Public test helpers: conformance suites for idempo's stores and third-party ones.

Two tiers, each in a sync and an async flavour; subclass one and provide its fixtures:

* ``StoreConformance`` / ``AsyncStoreConformance``: the store contract every store keeps
  (claim, complete, leases, expiry, purge, concurrency, the store's clock, scan and stats);
  needs a ``store`` fixture, and reads what a store cannot do from a ``capabilities`` fixture,
  a :class:`Capabilities` (see :mod:`idempo.testing._async.conformance`).
* ``ServerStoreConformance`` / ``AsyncServerStoreConformance``: what a store on a server
  promises beyond it (migrations, a down server, lost leases, newer record formats, tokens kept
  on the server, purge beside live records); needs ``location``, ``store``,
  ``unmigrated_store`` and ``down_store`` fixtures and a few hooks
  (see :mod:`idempo.testing._async.server`).

Needs pytest (and pytest-asyncio for the async flavours).
"""

from idempo.testing._async.conformance import AsyncStoreConformance
from idempo.testing._async.server import AsyncServerStoreConformance
from idempo.testing._capabilities import Capabilities
from idempo.testing._sync.conformance import StoreConformance
from idempo.testing._sync.server import ServerStoreConformance

__all__ = [
    "AsyncServerStoreConformance",
    "AsyncStoreConformance",
    "Capabilities",
    "ServerStoreConformance",
    "StoreConformance",
]
