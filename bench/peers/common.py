"""Shared pieces of the adapters: the Starlette app around an endpoint."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]


def starlette_app(endpoint: Endpoint, middleware: list[Any] | None = None) -> Starlette:
    return Starlette(
        routes=[Route("/charges", endpoint, methods=["POST"])], middleware=middleware or []
    )
