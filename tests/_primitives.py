"""Paired names for the test sources in ``tests/_async/``, as ``idempo._primitives`` is for the
library: ``scripts/unasync.py`` turns ``AsyncEvent`` into ``Event`` in the generated
``tests/_sync/`` twins."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["AsyncEvent", "Event"]

AsyncEvent = asyncio.Event
Event = threading.Event
