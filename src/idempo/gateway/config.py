"""The gateway's configuration: command-line flags for simple cases, a TOML file for the rest.

    upstream = "http://127.0.0.1:3000"
    store = "redis://127.0.0.1:6379/0"
    listen = "0.0.0.0:8080"
    admin = "127.0.0.1:9090"
    workers = 4
    required = false
    methods = ["POST", "PATCH"]
    ttl = 86400
    lease = 30
    wait = 0                   # seconds a duplicate in flight waits for the first (0: 409)
    replay_cache = 0           # seconds a worker replays a completed key from memory (0: off)
    host = "upstream"          # or "client": which Host the upstream sees

    [store_options]            # keyword arguments of the store (prefix, schema, ...)
    prefix = "gw:"

    [scope]
    headers = ["authorization", "x-api-key"]
    cookies = ["session"]

    [limits]
    max_request_bytes = 1048576
    max_response_bytes = 8388608
    max_header_bytes = 16384

    [timeouts]
    connect = 5
    read = 30

    [[routes]]
    path = "/charges*"
    required = true
    methods = ["POST"]

Flags override the file. Every problem is a :class:`ConfigError` naming the file, the line and
the key, since an operator reads it in a unit's journal, far from the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "Limits",
    "RouteRule",
    "Timeouts",
    "load",
    "parse_address",
]


class ConfigError(ValueError):
    """A bad gateway configuration; the message names where."""


@dataclass(frozen=True, slots=True)
class RouteRule:
    path: str
    enabled: bool = True
    required: bool | None = None
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    # The body read to fingerprint a request; larger guarded requests get 413.
    max_request_bytes: int = 1 << 20
    # The largest upstream response relayed (bigger: 502); kept for replay up to max_stored_bytes.
    max_response_bytes: int = 64 << 20
    max_stored_bytes: int = 1 << 20
    # Request headers (all names and values) and upstream response headers.
    max_header_bytes: int = 16 << 10


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 5.0
    # How long SIGTERM waits for requests in flight before closing them.
    shutdown: float = 30.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    upstream: str = ""
    store: str = ""
    listen: str = "127.0.0.1:8080"
    admin: str | None = None
    workers: int = 1
    required: bool = False
    methods: tuple[str, ...] = ("POST", "PATCH")
    ttl: float = 86400.0
    lease: float = 30.0
    wait: float = 0.0
    keep_server_errors: bool = False
    replay_cache: float = 0.0
    host: str = "upstream"
    scope_headers: tuple[str, ...] = ("authorization", "x-api-key")
    scope_cookies: tuple[str, ...] = ("session", "sessionid")
    routes: tuple[RouteRule, ...] = ()
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 512
    store_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> GatewayConfig:
        """Check what the flags and the file can only give together; returns self."""
        if not self.upstream:
            raise ConfigError("no upstream: pass --upstream URL or set upstream in the file")
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream {self.upstream!r} is not an http(s) URL")
        if not self.store:
            raise ConfigError("no store: pass --store URL or set store in the file")
        parse_address(self.listen, "listen")
        if self.admin is not None:
            parse_address(self.admin, "admin")
            if self.admin == self.listen and not self.admin.endswith(":0"):
                raise ConfigError("admin and listen are the same address")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.workers > 1 and self.store.startswith("memory:"):
            raise ConfigError(
                "memory:// is one store per process: with workers > 1 use a shared store "
                "(redis://, postgresql://, sqlite:///file)"
            )
        return self


def parse_address(value: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as a (host, port) pair."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {value!r} is not HOST:PORT")
    return (host.strip("[]") or "0.0.0.0", int(port))


# -- the TOML file -------------------------------------------------------------------------

_TOP = {
    "upstream": str,
    "store": str,
    "listen": str,
    "admin": str,
    "workers": int,
    "required": bool,
    "methods": list,
    "ttl": (int, float),
    "lease": (int, float),
    "wait": (int, float),
    "keep_server_errors": bool,
    "replay_cache": (int, float),
    "host": str,
    "max_connections": int,
}
_TABLES: dict[str, dict[str, Any]] = {
    "scope": {"headers": list, "cookies": list},
    "limits": {
        "max_request_bytes": int,
        "max_response_bytes": int,
        "max_stored_bytes": int,
        "max_header_bytes": int,
    },
    "timeouts": {k: (int, float) for k in ("connect", "read", "write", "pool", "shutdown")},
}
_ROUTE = {"path": str, "enabled": bool, "required": bool, "methods": list}
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class _Where:
    """Finds the line of a key in the file's text: tomllib gives values, not positions."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line(self, key: str, table: str | None = None, index: int = 0) -> int | None:
        start, end = 0, len(self.lines)
        if table is not None:
            header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
            starts = [i for i, text in enumerate(self.lines) if header.match(text)]
            if index < len(starts):
                start = starts[index]
                following = [
                    i for i in range(start + 1, end) if self.lines[i].lstrip().startswith("[")
                ]
                end = following[0] if following else end
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(start, end):
            if pattern.match(self.lines[i]):
                return i + 1
        return start + 1 if table is not None else None

    def error(
        self, message: str, key: str, table: str | None = None, index: int = 0
    ) -> ConfigError:
        line = self.line(key, table, index)
        name = key if table is None else f"{table}.{key}"
        if table == "routes":
            name = f"routes[{index}].{key}"
        at = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{at}: {name}: {message}")


def _typed(where: _Where, value: Any, kind: Any, key: str, table: str | None, index: int) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise where.error(f"expected {_names(kinds)}, got a boolean", key, table, index)
    if not isinstance(value, kinds):
        raise where.error(
            f"expected {_names(kinds)}, got {type(value).__name__}", key, table, index
        )
    if kind is list and not all(isinstance(v, str) for v in value):
        raise where.error("expected a list of strings", key, table, index)
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise where.error("must not be negative", key, table, index)
    return value


def _names(kinds: tuple[type, ...]) -> str:
    words = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
    }
    return " or ".join(words[k] for k in kinds)


def _methods(
    where: _Where, values: list[str], key: str, table: str | None, index: int
) -> tuple[str, ...]:
    methods = tuple(m.upper() for m in values)
    unknown = sorted(set(methods) - _METHODS)
    if unknown:
        raise where.error(f"unknown method(s) {', '.join(unknown)}", key, table, index)
    return methods


def _unknown(
    where: _Where,
    data: Mapping[str, Any],
    known: Mapping[str, Any],
    table: str | None,
    index: int = 0,
) -> None:
    for key in data:
        if key not in known:
            raise where.error(f"unknown key (known: {', '.join(sorted(known))})", key, table, index)


def load(path: str) -> GatewayConfig:
    """The configuration in the TOML file at ``path`` (unset values keep their defaults)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    text = raw.decode("utf-8", "replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, _Where(path, text))


def parse(data: Mapping[str, Any], where: _Where) -> GatewayConfig:
    """The configuration from a parsed file (see :func:`load`)."""
    _unknown(where, data, {**_TOP, **_TABLES, "routes": list, "store_options": dict}, None)
    values: dict[str, Any] = {}
    for key, kind in _TOP.items():
        if key in data:
            values[key] = _typed(where, data[key], kind, key, None, 0)
    if "methods" in values:
        values["methods"] = _methods(where, values["methods"], "methods", None, 0)
    if "host" in values and values["host"] not in ("upstream", "client"):
        raise where.error('expected "upstream" or "client"', "host", None)
    if "workers" in values and values["workers"] < 1:
        raise where.error("must be at least 1", "workers", None)
    for key in ("listen", "admin"):
        if key in values:
            try:
                parse_address(values[key], key)
            except ConfigError as exc:
                raise where.error(str(exc), key, None) from None
    config = GatewayConfig(**values)

    for table, known in _TABLES.items():
        if table not in data:
            continue
        section = data[table]
        if not isinstance(section, dict):
            raise where.error("expected a table", table, None)
        _unknown(where, section, known, table)
        typed = {k: _typed(where, v, known[k], k, table, 0) for k, v in section.items()}
        if table == "scope":
            lower = {k: tuple(v.lower() if k == "headers" else v for v in typed[k]) for k in typed}
            config = replace(
                config,
                scope_headers=lower.get("headers", config.scope_headers),
                scope_cookies=lower.get("cookies", config.scope_cookies),
            )
        elif table == "limits":
            config = replace(config, limits=replace(config.limits, **typed))
        else:
            config = replace(config, timeouts=replace(config.timeouts, **typed))

    store_options = data.get("store_options", {})
    if not isinstance(store_options, dict):
        raise where.error("expected a table", "store_options", None)
    for key, value in store_options.items():
        if not isinstance(value, str | int | float | bool):
            raise where.error("expected a string, a number or a boolean", key, "store_options")
    config = replace(config, store_options=dict(store_options))

    routes = data.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise where.error("expected [[routes]] tables", "routes", None)
    rules = []
    for index, route in enumerate(routes):
        _unknown(where, route, _ROUTE, "routes", index)
        if "path" not in route:
            raise where.error("every route needs a path", "path", "routes", index)
        typed = {k: _typed(where, v, _ROUTE[k], k, "routes", index) for k, v in route.items()}
        if not typed["path"].startswith("/"):
            raise where.error("a path starts with /", "path", "routes", index)
        if "methods" in typed:
            typed["methods"] = _methods(where, typed["methods"], "methods", "routes", index)
        rules.append(RouteRule(**typed))
    return replace(config, routes=tuple(rules))
