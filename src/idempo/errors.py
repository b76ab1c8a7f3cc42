"""Every error idempo raises.

::

    IdempoError                      root: catch this to catch everything from idempo
    ├── InvalidKeyError              key or scope malformed (empty, >255, non-printable)   400
    ├── MissingKeyError              the route requires a key and the request has none    400
    ├── IncompleteBodyError          the request body ended early (the client went away)  400
    ├── RequestTooLargeError         the body is over what is read to fingerprint it      413
    ├── KeyReuseError                same key, different request (fingerprint mismatch)    422
    ├── InProgressError              same key while the first execution still runs        409
    ├── LeaseLostError               the claim was taken over or released; cannot complete
    ├── OutcomeNotStoredError        the first execution's result could not be kept       409
    ├── SerializationError           a value the serializer cannot encode or decode
    ├── FingerprintError             arguments that cannot be fingerprinted
    ├── StoreUnavailableError        the store cannot be reached                           503
    ├── StoreError                   the store answered, but not as the contract says
    └── VersionConflictError         idempo.sql: the row changed since it was read         409

Errors that an HTTP adapter turns into a response carry ``status`` (the HTTP status they map to),
``title`` (the problem+json title, stable per case) and ``problem_type`` (the case's name in the
problem+json ``type`` URI).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FingerprintError",
    "IdempoError",
    "InProgressError",
    "IncompleteBodyError",
    "InvalidKeyError",
    "KeyReuseError",
    "LeaseLostError",
    "MissingKeyError",
    "OutcomeNotStoredError",
    "RequestTooLargeError",
    "SerializationError",
    "StoreError",
    "StoreUnavailableError",
    "VersionConflictError",
]


class IdempoError(Exception):
    """Root of every idempo error."""

    problem_type = "error"

    status: int = 500
    title: str = "Idempotency error"


class InvalidKeyError(IdempoError, ValueError):
    """An idempotency key or scope is malformed."""

    problem_type = "invalid-key"

    status = 400
    title = "Invalid idempotency key"


class MissingKeyError(IdempoError):
    """The route requires an idempotency key and the request has none."""

    problem_type = "key-required"

    status = 400
    title = "Idempotency key required"


class IncompleteBodyError(IdempoError):
    """The request body ended before ``Content-Length`` bytes arrived (the client went away)."""

    problem_type = "incomplete-body"

    status = 400
    title = "Incomplete request body"


class RequestTooLargeError(IdempoError):
    """The request body is larger than the middleware will read to fingerprint it."""

    problem_type = "request-too-large"

    status = 413
    title = "Request body too large for idempotent handling"


class KeyReuseError(IdempoError):
    """The key was already used for a different request (another fingerprint)."""

    problem_type = "key-reused"

    status = 422
    title = "Idempotency key reused with a different request"

    def __init__(self, message: str, *, key: str = "", scope: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.scope = scope


class InProgressError(IdempoError):
    """Another execution with the same key is still running.

    ``retry_after`` is the number of seconds (server time) until its lease runs out: the earliest
    moment a retry could take over if that execution has crashed.
    """

    problem_type = "in-progress"

    status = 409
    title = "A request with this idempotency key is still in progress"

    def __init__(
        self, message: str, *, key: str = "", scope: str = "", retry_after: float = 1.0
    ) -> None:
        super().__init__(message)
        self.key = key
        self.scope = scope
        self.retry_after = retry_after


class LeaseLostError(IdempoError):
    """This execution no longer holds the claim: its lease expired and another took over, or the
    record was released or deleted. Its outcome is not stored (fencing)."""

    problem_type = "lease-lost"

    title = "Idempotency lease lost"

    def __init__(self, message: str, *, executed: bool = False, value: Any = None) -> None:
        super().__init__(message)
        #: True when raised after the operation ran; ``value`` is then its live result.
        self.executed = executed
        self.value = value


class OutcomeNotStoredError(IdempoError):
    """The key's first execution completed, but its result could not be kept (too large or not
    serializable), so it cannot be replayed. The operation is not run again."""

    problem_type = "response-not-stored"

    status = 409
    title = "The original result of this idempotency key was not stored"

    def __init__(self, message: str, *, reason: str = "", key: str = "", scope: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.key = key
        self.scope = scope


class SerializationError(IdempoError, TypeError):
    """The serializer cannot encode (or decode) a value.

    When raised after an execution, ``value`` holds the live result, so nothing is lost.
    """

    problem_type = "serialization"

    def __init__(self, message: str, *, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


class FingerprintError(IdempoError, TypeError):
    """Arguments that cannot be fingerprinted canonically (pass ``fingerprint=`` yourself)."""

    problem_type = "fingerprint"


class StoreUnavailableError(IdempoError):
    """The store cannot be reached. Unless ``executed`` is True, the operation did not run.

    ``retry_after``: seconds after which a retry may find the store back (the 503's
    ``Retry-After``)."""

    problem_type = "store-unavailable"

    status = 503
    title = "Idempotency store unavailable"

    def __init__(
        self, message: str, *, executed: bool = False, value: Any = None, retry_after: float = 1.0
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: True when the store failed after the operation ran (its result could not be recorded;
        #: the claim frees itself when its lease runs out). ``value`` is then the live result.
        self.executed = executed
        self.value = value


class StoreError(IdempoError):
    """The store answered, but not as the contract says (schema missing, corrupt record)."""

    problem_type = "store-error"


class VersionConflictError(IdempoError):
    """The row's version is not the one the update expected: someone else changed it (or this
    update was already applied). Raised by :func:`idempo.sql.update_if_version`."""

    problem_type = "version-conflict"

    status = 409
    title = "Conflict: the resource changed since it was read"

    def __init__(self, message: str, *, expected: int, table: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.table = table
