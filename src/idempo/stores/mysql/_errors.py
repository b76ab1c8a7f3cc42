"""MariaDB driver errors, translated at the boundary: the one place where PyMySQL's errors
become idempo's, and where a connection is judged reusable after one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pymysql  # type: ignore[import-untyped]

from idempo.errors import IdempoError, StoreError, StoreUnavailableError

__all__ = ["errno_of", "session_intact", "store_errors"]

# Server error numbers that mean "cannot be served now", not "answered wrongly". PyMySQL files
# most server errors it does not know (even "PROCEDURE does not exist") under OperationalError,
# so the class alone cannot tell a missing schema from a lost server: the number decides.
_UNAVAILABLE_ERRNOS = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1152,  # aborted connection
        *range(1154, 1162),  # network read and write errors
        1205,  # lock wait timeout: the statement was rolled back (the procedure rolls back all)
        1213,  # deadlock: the transaction was rolled back
        1290,  # --read-only (for example during a failover)
        1317,  # query interrupted (KILL QUERY)
        1927,  # connection killed
        1969,  # max_statement_time exceeded
    }
)
# After these the server has closed the session, or may have: the connection is not reused.
_SESSION_LOST_ERRNOS = frozenset({1053, 1152, *range(1154, 1162), 1927})


def errno_of(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


def _is_client_error(errno: int) -> bool:
    # PyMySQL reports trouble on the wire with the client library's codes, 2000-2999 (2003
    # cannot connect, 2006 gone away, 2013 lost connection), or errno 0 (InterfaceError:
    # connection closed, protocol out of step).
    return errno == 0 or 2000 <= errno < 3000


def session_intact(exc: BaseException) -> bool:
    """Whether the connection can be reused after ``exc``: only after a clean server error."""
    if isinstance(exc, IdempoError):
        return True  # raised by idempo between statements, not by the wire
    if not isinstance(exc, pymysql.err.MySQLError) or isinstance(exc, pymysql.err.InterfaceError):
        return False  # interrupted mid-reply (KeyboardInterrupt, a bug): unknown state
    errno = errno_of(exc)
    return not _is_client_error(errno) and errno not in _SESSION_LOST_ERRNOS


@contextlib.contextmanager
def store_errors(operation: str) -> Iterator[None]:
    """The one place where driver errors become idempo errors.

    Connection trouble (InterfaceError; OperationalError from the client side of the wire; the
    server errors of _UNAVAILABLE_ERRNOS) means the store cannot be reached, or cannot serve the
    operation now, and nothing was written: StoreUnavailableError. Any other server error means
    it answered wrongly (schema missing, permission denied, value too long): StoreError.
    Failures to connect become StoreUnavailableError in the pool (Pool._open).
    """
    try:
        yield
    except pymysql.err.MySQLError as exc:
        errno = errno_of(exc)
        if (
            isinstance(exc, pymysql.err.InterfaceError)
            or _is_client_error(errno)
            or errno in _UNAVAILABLE_ERRNOS
        ):
            raise StoreUnavailableError(
                f"MariaDB store unreachable during {operation}: {exc}"
            ) from exc
        hint = ""
        if errno in (1146, 1305):  # table / procedure does not exist
            hint = " (has the schema been created? call store.migrate())"
        raise StoreError(f"MariaDB store failed during {operation}: {exc}{hint}") from exc
