"""What every check shares: the failure it raises, and how it counts effects."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["REPLAYED", "Effects", "acount", "check_once", "count", "fail"]

Effects = Callable[[], Any]  # returns an int, or (in the _async checks) an awaitable of one

REPLAYED = "idempotent-replayed"


def fail(message: str) -> AssertionError:
    # Raised by hand, not with assert: pytest rewrites asserts only in test modules.
    return AssertionError(f"not idempotent: {message}")


def count(effects: Effects | None) -> int | None:
    return None if effects is None else int(effects())


async def acount(effects: Effects | None) -> int | None:
    if effects is None:
        return None
    n = effects()
    return int(await n) if inspect.isawaitable(n) else int(n)


def check_once(before: int | None, after: int | None, what: str) -> None:
    if before is not None and after is not None and after - before != 1:
        raise fail(f"{what}: the effect happened {after - before} times, expected once")
