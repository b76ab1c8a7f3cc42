"""How a decorated function's arguments become its (scope, key, fingerprint): pure, no I/O."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

from idempo.core.fingerprint import bind_call, fingerprint, simple_names
from idempo.core.keys import validate_key, validate_scope
from idempo.errors import InvalidKeyError

__all__ = ["DERIVED_KEY_PREFIX", "Operation"]

# Keys derived from the arguments (no key= given) carry this prefix, so they cannot collide
# with keys a caller chose.
DERIVED_KEY_PREFIX = "args:"


class Operation:
    """How one decorated function turns its arguments into (scope, key, fingerprint)."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        key: Callable[..., str] | None,
        scope: str | Callable[..., str],
        fingerprint: Callable[..., Any] | None,
        name: str | None,
    ) -> None:
        self.signature = inspect.signature(func)
        self.simple = simple_names(self.signature)
        self.name = name or f"{func.__module__}.{func.__qualname__}"
        self.key = key
        self.scope = scope
        self.fingerprint = fingerprint
        if not isinstance(scope, str) and not callable(scope):
            raise TypeError("scope must be a str or a callable of the function's arguments")
        # A constant scope is validated and composed once, here, not on every call.
        self.fixed_scope = self._scoped(scope) if isinstance(scope, str) else None

    def _scoped(self, user_scope: str) -> str:
        """The stored scope: valid by construction (validated here, or a hash)."""
        # Records of different functions never meet: the operation's name is part of the scope.
        scoped = f"{user_scope}/{self.name}" if user_scope else self.name
        try:
            return validate_scope(scoped)
        except InvalidKeyError:
            # A non-ASCII function name, or a long module path with a long scope: still one
            # stable namespace per (scope, function), spelled as a hash.
            return "h:" + hashlib.sha256(scoped.encode()).hexdigest()[:40]

    def identify(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str, str]:
        # A wrong call raises the TypeError the function itself would, before any store I/O.
        arguments = bind_call(self.signature, args, kwargs, self.simple)
        fp_source = arguments if self.fingerprint is None else self.fingerprint(*args, **kwargs)
        fp = fingerprint(fp_source)
        if self.key is None:
            key = DERIVED_KEY_PREFIX + fp
        else:
            key = validate_key(self.key(*args, **kwargs))
        if self.fixed_scope is not None:
            return self.fixed_scope, key, fp
        assert callable(self.scope)
        return self._scoped(validate_scope(self.scope(*args, **kwargs))), key, fp
