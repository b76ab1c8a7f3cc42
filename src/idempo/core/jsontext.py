"""Compact JSON text from a C encoder built once.

``json.JSONEncoder.encode`` builds the C encoder (``_json.make_encoder``) again on every call;
on idempo's hot paths (a fingerprint per call, an outcome per new key, a stored response) that
construction costs more than encoding the small documents involved. :func:`compact_json` builds
it once and gives the same text as ``json.JSONEncoder(separators=(",", ":"), ...).encode``.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

__all__ = ["compact_json"]


def compact_json(
    *, sort_keys: bool = False, ensure_ascii: bool = True, allow_nan: bool = True
) -> Callable[[Any], str]:
    """``json.JSONEncoder(separators=(",", ":"), ...).encode``, the same text, with the C
    encoder built once. No circular check: callers encode trees they built or parsed (a cycle
    would end in RecursionError rather than ValueError), and a shared markers dict would make
    two threads encoding one object see a cycle that is not there."""
    encoder = json.JSONEncoder(
        sort_keys=sort_keys,
        separators=(",", ":"),
        ensure_ascii=ensure_ascii,
        allow_nan=allow_nan,
        check_circular=False,
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - a Python without the _json accelerator
        return encoder.encode
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    chunks = make(None, encoder.default, strings, None, ":", ",", sort_keys, False, allow_nan)
    join = "".join

    def encode(value: Any) -> str:
        return join(chunks(value, 0))

    return encode
