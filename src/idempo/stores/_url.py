"""Store options in a URL's query string: ``postgresql://db/app?schema=idempo&timeout=2``.

A URL alone must configure a store wherever one is taken (the middleware, Django settings, the
CLI, the gateway), so every option a store takes can ride in its query. Each store module
declares what its URL may carry as ``URL_OPTIONS``, a :class:`UrlOptions`: idempo's options,
each with its type, and the names its driver reads from the URL itself (libpq's ``sslmode``,
redis-py's ``socket_timeout``), which stay in the URL. :mod:`idempo.stores` splits every URL
with it before opening the store, so the store's ``open_*`` functions receive a URL with only
the driver's names left, and the options as keyword arguments.

The rules, the same for every store:

* values are typed: ``integer``, ``number``, ``boolean`` (``true``/``false``, ``1``/``0``,
  ``yes``/``no``, ``on``/``off``), ``text``, ``choice(...)``; ``optional(...)`` also takes
  ``none``. Values are percent-decoded; ``+`` stays a plus sign.
* a name that is neither idempo's nor the driver's is an error naming it and the known ones;
* a name given twice, twice in the query or in the query and as a keyword argument, is an
  error: neither silently wins.

Error messages show the URL with its password replaced by ``***`` (:func:`redact`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "Parser",
    "UrlOptions",
    "boolean",
    "choice",
    "integer",
    "number",
    "optional",
    "redact",
    "text",
]

# Turns the decoded text of one value into the option's value, or raises ValueError.
Parser = Callable[[str], Any]

# A query parameter whose name holds "password", up to its value.
_QUERY_SECRET = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def integer(raw: str) -> int:
    """A whole number (``10``)."""
    try:
        return int(raw, 10)
    except ValueError:
        raise ValueError("a whole number") from None


def number(raw: str) -> float:
    """A number of seconds or a size (``2``, ``0.5``)."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("a finite number")
    return value


def boolean(raw: str) -> bool:
    """``true``/``false`` (or ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("true or false")


def text(raw: str) -> str:
    """Any text, percent-decoded."""
    return raw


def choice(*values: str) -> Parser:
    """One of ``values``, case-insensitively; the value as spelled in ``values``."""
    by_lower = {v.lower(): v for v in values}

    def parse(raw: str) -> str:
        try:
            return by_lower[raw.lower()]
        except KeyError:
            raise ValueError("one of " + ", ".join(values)) from None

    return parse


def optional(parser: Parser) -> Parser:
    """``parser``'s values, or ``none`` for None."""

    def parse(raw: str) -> Any:
        if raw.lower() == "none":
            return None
        try:
            return parser(raw)
        except ValueError as exc:
            raise ValueError(f"{exc} or none") from None

    return parse


def redact(url: str) -> str:
    """``url`` with its passwords replaced by ``***``, for messages and logs: the user part's,
    and query values whose name says password (libpq's ``password=``, ``sslpassword=``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a malformed URL>"
    if password:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        start = url.index(parts.netloc)
        url = f"{url[:start]}{user}:***@{host}{url[start + len(parts.netloc) :]}"
    return _QUERY_SECRET.sub(r"\1***", url)


@dataclass(frozen=True)
class UrlOptions:
    """What a store's URL may carry in its query.

    ``options`` maps each idempo option to its parser; ``driver`` names what the driver reads
    from the URL itself (left in the URL, unparsed); ``driver_name`` says whose they are, for
    error messages (``"libpq"``).
    """

    options: Mapping[str, Parser]
    driver: Collection[str] = field(default=frozenset())
    driver_name: str = "the driver"

    def split(self, url: str, keywords: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """``url`` without idempo's options, and ``keywords`` with them added, typed."""
        base, sep, rest = url.partition("?")
        if not sep:
            return url, dict(keywords)
        query, hash_, fragment = rest.partition("#")
        options = dict(keywords)
        kept: list[str] = []
        seen: set[str] = set()
        for segment in query.split("&"):
            if not segment:
                continue
            raw_name, _, raw_value = segment.partition("=")
            name = unquote(raw_name)
            if name in seen:
                raise ValueError(f"{name!r} appears twice in the store URL {redact(url)}")
            seen.add(name)
            if name in self.driver and name not in self.options:
                kept.append(segment)
                continue
            if name not in self.options:
                raise ValueError(self._unknown(name, url))
            if name in keywords:
                raise ValueError(
                    f"{name!r} is given both in the store URL {redact(url)} and as a keyword"
                    " argument: give it once"
                )
            try:
                options[name] = self.options[name](unquote(raw_value))
            except ValueError as exc:
                raise ValueError(
                    f"{name}={unquote(raw_value)!r} in the store URL {redact(url)}:"
                    f" {name} must be {exc}"
                ) from None
        rebuilt = base + ("?" + "&".join(kept) if kept else "") + hash_ + fragment
        return rebuilt, options

    def _unknown(self, name: str, url: str) -> str:
        scheme = url.partition(":")[0]
        known = ", ".join(sorted(self.options)) or "none"
        message = (
            f"unknown option {name!r} in the store URL {redact(url)}; {scheme}:// takes {known}"
        )
        if self.driver:
            message += f", and {self.driver_name}'s own: {', '.join(sorted(self.driver))}"
        return message
