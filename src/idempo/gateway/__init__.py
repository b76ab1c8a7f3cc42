"""``idempo gateway``: Idempotency-Key semantics (DESIGN section 6) in front of any HTTP service.

A reverse proxy (:mod:`idempo.gateway.proxy`) under :class:`idempo.asgi.IdempotencyMiddleware`,
configured by flags or a TOML file (:mod:`idempo.gateway.config`), served by uvicorn with a
prefork supervisor (:mod:`idempo.gateway.server`). ``pip install 'idempo[gateway]'``; see
docs/gateway.md.
"""

from __future__ import annotations

from idempo.gateway.config import ConfigError, GatewayConfig, load

__all__ = ["ConfigError", "GatewayConfig", "load"]
