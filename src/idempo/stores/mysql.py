"""The MariaDB store: ``mysql://user:password@host:port/database``.

:class:`MySQLStore` (sync, on PyMySQL) and :class:`AsyncMySQLStore` (async) keep one row per
(scope, key) in a table of the URL's database (default ``idempo_records``). Needs MariaDB 10.5
or later (``DELETE ... RETURNING``; tested on 10.11) with InnoDB, and PyMySQL:
``pip install 'idempo[mysql]'``. MySQL proper is not supported (it lacks ``DELETE ...
RETURNING`` and the ``ascii_nopad_bin`` collation).

Every contract operation is one statement sent in one round trip, atomic on its own:

* ``claim``, ``complete``/``extend``/``set_recovery_point`` and ``purge_expired`` are one
  ``CALL`` each of a stored procedure that :meth:`MySQLStore.migrate` installs next to the table
  (``<table>_claim``, ``<table>_hold``, ``<table>_purge``). A claim must read the record, decide
  and maybe write it: MariaDB has no ``UPDATE ... RETURNING`` nor a way to read a row and write
  it in one statement, so the procedure runs the three steps as one transaction on the server.
  A ``CALL`` answers with its result set and a final status packet; the client reads both from
  the one reply (``cursor.nextset()``), without another request.
* ``get`` is one ``SELECT``; ``release`` and ``delete`` one ``DELETE`` (``RETURNING`` tells
  ``delete`` whether the removed record was live).

Time is the server's clock, as float epoch seconds stored in ``DOUBLE`` columns (no time zone
in the data). ``UNIX_TIMESTAMP(datetime)`` reads its argument in the session time zone, which
with daylight saving time names some instants twice, so the store's connections run with
``time_zone = '+00:00'`` and the procedures refuse any other. Inside procedures the clock is
``SYSDATE(6)``, read once per decision after the row lock is taken; single statements use
``NOW(6)``, fixed for the statement (see ``_CLAIM`` and ``_GET``).

Async design: :class:`AsyncMySQLStore` is ``SyncStoreAsAsync(MySQLStore(...), offload=True)``:
each operation runs in a worker thread of the event loop's default executor. Chosen over
aiomysql because it keeps one implementation of everything that can be wrong (the SQL, the
pool, the error translation, the draining of CALL replies) and one driver to depend on
(aiomysql is a fork of PyMySQL's protocol code on asyncio, with its own pool and release
cycle). The cost: a thread hop per operation (tens of microseconds next to a network round
trip); concurrency bounded by the executor's threads (and by ``max_size`` anyway); and a
cancelled task does not stop its operation, which finishes in its thread (a claim it made holds
the key until its lease runs out, as with a claim whose reply was lost).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

try:
    import pymysql  # type: ignore[import-untyped]
    import pymysql.cursors  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the MariaDB store needs PyMySQL: pip install 'idempo[mysql]' ({exc})"
    ) from exc

from idempo.core import transitions
from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import IdempoError, LeaseLostError, StoreError, StoreUnavailableError
from idempo.stores._threaded import SyncStoreAsAsync

__all__ = [
    "RECORD_FORMAT",
    "SCHEMA_VERSION",
    "AsyncMySQLStore",
    "MySQLStore",
    "open_async",
    "open_sync",
]

# The version of the DDL below, written into every procedure's COMMENT. Bump it whenever a
# column, index or procedure changes: auto-migration compares it to skip the DDL (and the
# privileges it needs) when the schema is current.
SCHEMA_VERSION = 1
# The record layout this code writes and reads (column ``format``): a newer idempo that changes
# what the bytes mean writes a higher number, and this code refuses to misread it.
RECORD_FORMAT = 1

# MariaDB identifiers have at most 64 characters; the longest derived name is <table>_claim.
_MAX_TABLE = 64 - len("_claim")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A driver connection. PyMySQL has no type information: keep what is untyped to this alias.
_Conn = Any

# Set once per connection, at connect time (not per operation):
# * time_zone '+00:00': UNIX_TIMESTAMP(datetime) converts exactly (no DST);
# * READ COMMITTED: locking statements take no gap locks (see _CLAIM); the procedures also set
#   it for their own transactions, this covers release and delete;
# * a strict sql_mode, chosen here rather than inherited from the server: a value too long for
#   its column is an error, never silently truncated (two long keys must not become one). The
#   procedures keep the sql_mode of the session that created them, which is this one.
_SESSION = (
    "SET time_zone = '+00:00', SESSION tx_isolation = 'READ-COMMITTED',"
    " sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO'"
)

# -- schema -------------------------------------------------------------------------------------

# Keys, scopes, fingerprints and tokens are ASCII compared byte for byte: ascii_nopad_bin, not
# ascii_bin. Both are case-sensitive, but ascii_bin is a PAD SPACE collation: it compares 'k'
# and 'k ' as equal, so the primary key would make two different keys one record. Printable
# ASCII keys may end with a space; the NO PAD collation keeps them apart.
_ASCII = "CHARACTER SET ascii COLLATE ascii_nopad_bin"

_TABLE = f"""
CREATE TABLE IF NOT EXISTS {{table}} (
    -- 255 ASCII bytes each: the primary key (510 bytes) fits InnoDB's 3072-byte limit.
    scope           VARCHAR(255) {_ASCII} NOT NULL,
    `key`           VARCHAR(255) {_ASCII} NOT NULL,
    fingerprint     VARCHAR(128) {_ASCII} NOT NULL,
    state           VARCHAR(16) {_ASCII} NOT NULL,
    -- The fencing token and lease exist exactly while the record is in progress; the outcome
    -- exists exactly once it is completed (see the CHECK below).
    token           VARCHAR(128) {_ASCII} NULL,
    -- Times are epoch seconds of the server's clock: DOUBLE carries microseconds at today's
    -- epoch (2^-22 s resolution) and needs no time zone, unlike DATETIME.
    lease_until     DOUBLE NULL,
    -- LONGBLOB for both: a recovery point carries the results of every finished phase, which
    -- may outgrow BLOB's 64 KiB. Either is bounded in practice by max_allowed_packet.
    outcome         LONGBLOB NULL,
    recovery_point  LONGBLOB NULL,
    created_at      DOUBLE NOT NULL,
    -- After this instant the record counts as absent for every operation, purged or not.
    expires_at      DOUBLE NOT NULL,
    -- Layout version of this row (RECORD_FORMAT), so that a future format can coexist.
    format          SMALLINT NOT NULL DEFAULT {RECORD_FORMAT},
    PRIMARY KEY (scope, `key`),
    -- purge_expired walks this index, oldest first, instead of scanning the table.
    KEY expires_at_idx (expires_at),
    CONSTRAINT idempo_state_known CHECK (state IN ('in_progress', 'completed')),
    CONSTRAINT idempo_holder_matches_state CHECK (
        (state = 'in_progress' AND token IS NOT NULL AND lease_until IS NOT NULL
            AND outcome IS NULL)
        OR (state = 'completed' AND token IS NULL AND lease_until IS NULL
            AND outcome IS NOT NULL)
    )
)
-- InnoDB explicitly: the procedures need transactions and row locks (with
-- NO_ENGINE_SUBSTITUTION a server without InnoDB fails here instead of using MyISAM).
ENGINE = InnoDB
"""

# Every procedure starts with this guard: see the module docstring (UNIX_TIMESTAMP and DST).
_TIME_ZONE_GUARD = """
    IF @@session.time_zone <> '+00:00' THEN
        SIGNAL SQLSTATE '45000'
            SET MESSAGE_TEXT = 'idempo: call this procedure with time_zone = ''+00:00''';
    END IF;
"""

# The claim decision table of idempo.stores.base, exactly as idempo.core.transitions.claim
# decides it, in one CALL.
#
# Transactions: a connection in autocommit mode commits every statement of a procedure on its
# own, so the row lock taken by SELECT ... FOR UPDATE would be gone before the UPDATE. The
# procedure therefore runs its own START TRANSACTION ... COMMIT. (Called inside a transaction,
# SET TRANSACTION fails with "transaction in progress" rather than START TRANSACTION silently
# committing the caller's work: the store's connections are always autocommit.)
#
# Locking: read the row with FOR UPDATE first; only if it is absent, INSERT. A locking read
# that meets another transaction's uncommitted insert of the key waits for it, then sees the
# committed row: of 64 simultaneous claimers of a new key, nearly all queue on the first one's
# row. Only a claimer whose read ran just before that INSERT inserts too: it waits for the
# winner, then fails with a duplicate key (1062) holding a shared lock on the winner's row. It
# rolls back (two such claimers upgrading shared locks to exclusive would deadlock) and starts
# over, finding the row. READ COMMITTED matters: under REPEATABLE READ the read of an absent
# key takes a gap lock, and two claimers' gap locks block each other's INSERT (a deadlock).
# INSERT IGNORE is not used: it downgrades every error to a warning (a too-long key would be
# truncated); nor INSERT ... ON DUPLICATE KEY UPDATE: ROW_COUNT() cannot tell "inserted" from
# "existed" reliably (it depends on the client's CLIENT_FOUND_ROWS flag).
#
# Deadlocks: every transaction of this store locks rows of the table by primary key, one row
# (claims, holder updates, release, delete) or one at a time (purge: see _PURGE), and none ever
# waits for a second row while holding one, so they cannot deadlock with each other. (A plain
# "DELETE ... WHERE expires_at <= now LIMIT n" would: it locks the expires_at index entry before
# the row, while a claim reviving that row locks the row before updating its index entry.) The
# handler below still starts over on 1213, in case another application's transactions lock
# these rows, but MariaDB does not deliver every deadlock to handlers (not one raised while
# updating a secondary index entry): such a deadlock reaches the client, rolled back, as
# StoreUnavailableError.
#
# Why SYSDATE(6) and not NOW(6): NOW(6) is when the current statement began (inside a
# procedure, each statement; inside a stored function or trigger, the calling statement), so
# its meaning depends on where the code runs. SYSDATE(6) is the moment it is evaluated: read
# right after the row lock is granted, it is the time of the decision, however long the claim
# queued behind 63 others on the key. A stale time could call a lease that ran out during the
# wait still live, or grant a lease shorter than asked. The clock is read once (v_now) so that
# every comparison and timestamp of one answer agrees. Statement-based replication stays
# exact: statements using v_now are logged with its value (NAME_CONST), never re-evaluated.
#
# Parameters are p_*, variables v_*, and columns qualified by the alias t, so that no name can
# mean two things. The answer is selected from the variables, which hold the row as written.
_CLAIM = f"""
CREATE OR REPLACE PROCEDURE {{claim}}(
    IN p_scope       VARCHAR(255) {_ASCII},
    IN p_key         VARCHAR(255) {_ASCII},
    IN p_fingerprint VARCHAR(128) {_ASCII},
    IN p_token       VARCHAR(128) {_ASCII},
    IN p_lease       DOUBLE,
    IN p_ttl         DOUBLE)
MODIFIES SQL DATA
SQL SECURITY INVOKER
COMMENT '{{marker}}'
BEGIN
    DECLARE v_now            DOUBLE;
    DECLARE v_status         VARCHAR(16) {_ASCII};
    DECLARE v_takeover       BOOLEAN DEFAULT FALSE;
    DECLARE v_found          BOOLEAN;
    DECLARE v_retry          BOOLEAN;
    DECLARE v_tries          INT DEFAULT 0;
    DECLARE v_fingerprint    VARCHAR(128) {_ASCII};
    DECLARE v_state          VARCHAR(16) {_ASCII};
    DECLARE v_token          VARCHAR(128) {_ASCII};
    DECLARE v_lease_until    DOUBLE;
    DECLARE v_outcome        LONGBLOB;
    DECLARE v_recovery_point LONGBLOB;
    DECLARE v_created_at     DOUBLE;
    DECLARE v_expires_at     DOUBLE;
    DECLARE v_format         SMALLINT;
    -- Any other error (lock wait timeout, KILL QUERY, a CHECK constraint): roll back before
    -- passing it on, so that the connection never goes back to its pool inside a transaction
    -- holding the row lock (a lock wait timeout rolls back only the statement, not the
    -- transaction).
    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
{_TIME_ZONE_GUARD}
    attempt: LOOP
        SET v_tries = v_tries + 1, v_retry = FALSE, v_found = TRUE;
        BEGIN
            -- 1062: another claimer inserted the key first; 1213: deadlock victim (see above).
            -- Both leave nothing written: roll back (releasing any lock) and start over.
            DECLARE EXIT HANDLER FOR 1062, 1213 BEGIN ROLLBACK; SET v_retry = TRUE; END;
            DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_found = FALSE;
            SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
            START TRANSACTION;
            -- A locking read sees the latest committed row and holds it until COMMIT: the
            -- decision and the write below are one atomic step against every other claimer
            -- and against complete/extend/release.
            SELECT t.fingerprint, t.state, t.token, t.lease_until, t.outcome,
                   t.recovery_point, t.created_at, t.expires_at, t.format
              INTO v_fingerprint, v_state, v_token, v_lease_until, v_outcome,
                   v_recovery_point, v_created_at, v_expires_at, v_format
              FROM {{table}} AS t
             WHERE t.scope = p_scope AND t.`key` = p_key
               FOR UPDATE;
            -- After the lock wait: the decision is taken now.
            SET v_now = UNIX_TIMESTAMP(SYSDATE(6));

            IF NOT v_found OR v_expires_at <= v_now THEN
                -- Absent, or expired (which counts as absent): a brand-new record, with a new
                -- created_at, no outcome and no recovery point; not a takeover.
                SET v_status = 'acquired', v_takeover = FALSE,
                    v_fingerprint = p_fingerprint, v_state = 'in_progress', v_token = p_token,
                    v_lease_until = v_now + p_lease, v_outcome = NULL, v_recovery_point = NULL,
                    v_created_at = v_now, v_expires_at = v_now + GREATEST(p_ttl, p_lease),
                    v_format = {RECORD_FORMAT};
                IF v_found THEN
                    UPDATE {{table}} AS t
                       SET t.fingerprint = v_fingerprint, t.state = v_state,
                           t.token = v_token, t.lease_until = v_lease_until,
                           t.outcome = NULL, t.recovery_point = NULL,
                           t.created_at = v_created_at, t.expires_at = v_expires_at,
                           t.format = v_format
                     WHERE t.scope = p_scope AND t.`key` = p_key;
                ELSE
                    -- May fail with 1062 if a concurrent claimer inserted it: see the handler.
                    INSERT INTO {{table}}
                        (scope, `key`, fingerprint, state, token, lease_until, outcome,
                         recovery_point, created_at, expires_at, format)
                    VALUES
                        (p_scope, p_key, v_fingerprint, v_state, v_token, v_lease_until, NULL,
                         NULL, v_created_at, v_expires_at, v_format);
                END IF;
            ELSEIF v_fingerprint <> p_fingerprint THEN
                -- Another request under the same key, whatever its state, even with an expired
                -- lease: taking over with a different request would mix two operations.
                SET v_status = 'mismatch';
            ELSEIF v_state = 'completed' THEN
                SET v_status = 'completed';
            ELSEIF v_lease_until > v_now THEN
                SET v_status = 'in_progress';
            ELSE
                -- The holder's lease ran out (it crashed or stalled): take over with the new
                -- token, which fences the old holder out of complete/extend/release.
                -- created_at and the recovery point stay: a multi-step operation resumes where
                -- it stopped.
                SET v_status = 'acquired', v_takeover = TRUE, v_token = p_token,
                    v_lease_until = v_now + p_lease,
                    v_expires_at = GREATEST(v_expires_at, v_now + p_lease);
                UPDATE {{table}} AS t
                   SET t.token = v_token, t.lease_until = v_lease_until,
                       t.expires_at = v_expires_at
                 WHERE t.scope = p_scope AND t.`key` = p_key;
            END IF;
            COMMIT;
        END;
        IF NOT v_retry THEN
            LEAVE attempt;
        END IF;
        IF v_tries >= 100 THEN
            -- Only a key deleted and re-created, or deadlocked, a hundred times in a row.
            SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213,
                MESSAGE_TEXT = 'idempo claim: gave up after 100 deadlocks or lost inserts';
        END IF;
    END LOOP;

    -- Only the new holder learns the token: the token never leaves the server otherwise.
    SELECT v_status, v_takeover, v_now, v_fingerprint, v_state,
           IF(v_status = 'acquired', v_token, NULL), v_lease_until, v_outcome,
           v_recovery_point, v_created_at, v_expires_at, v_format;
END
"""

# complete, extend and set_recovery_point: one procedure, as they share the holder test of
# transitions.require_holder (the current token of a live in_progress record). The row is read
# and locked first, so that a refusal reports why (gone, completed, taken over) from the very
# row it judged, and the clock is read after the lock, as in the claim.
#
# complete: the holder may finish even after its lease ran out, as long as nobody took over
# (fencing is by token, not by lease); the TTL runs from completion. extend and
# set_recovery_point: the lease restarts now and the record lives at least as long as the
# lease; a NULL recovery point (extend) keeps the stored one.
_HOLD = f"""
CREATE OR REPLACE PROCEDURE {{hold}}(
    IN p_scope          VARCHAR(255) {_ASCII},
    IN p_key            VARCHAR(255) {_ASCII},
    IN p_token          VARCHAR(128) {_ASCII},
    IN p_complete       BOOLEAN,
    IN p_outcome        LONGBLOB,
    IN p_ttl            DOUBLE,
    IN p_lease          DOUBLE,
    IN p_recovery_point LONGBLOB)
MODIFIES SQL DATA
SQL SECURITY INVOKER
COMMENT '{{marker}}'
BEGIN
    DECLARE v_now         DOUBLE;
    DECLARE v_result      VARCHAR(16) {_ASCII};
    DECLARE v_found       BOOLEAN DEFAULT TRUE;
    DECLARE v_state       VARCHAR(16) {_ASCII};
    DECLARE v_token       VARCHAR(128) {_ASCII};
    DECLARE v_expires_at  DOUBLE;
    DECLARE v_lease_until DOUBLE DEFAULT NULL;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_found = FALSE;
    -- As in the claim: never leave the connection inside a transaction holding the row lock.
    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
{_TIME_ZONE_GUARD}
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT t.state, t.token, t.expires_at
      INTO v_state, v_token, v_expires_at
      FROM {{table}} AS t
     WHERE t.scope = p_scope AND t.`key` = p_key
       FOR UPDATE;
    SET v_now = UNIX_TIMESTAMP(SYSDATE(6));
    IF NOT v_found OR v_expires_at <= v_now THEN
        SET v_result = 'gone';
    ELSEIF v_state <> 'in_progress' THEN
        SET v_result = 'completed';
    ELSEIF v_token <> p_token THEN
        SET v_result = 'taken_over';
    ELSEIF p_complete THEN
        UPDATE {{table}} AS t
           SET t.state = 'completed', t.token = NULL, t.lease_until = NULL,
               t.outcome = p_outcome, t.expires_at = v_now + p_ttl
         WHERE t.scope = p_scope AND t.`key` = p_key;
        SET v_result = 'held';
    ELSE
        SET v_lease_until = v_now + p_lease;
        UPDATE {{table}} AS t
           SET t.lease_until = v_lease_until,
               t.expires_at = GREATEST(v_expires_at, v_lease_until),
               t.recovery_point = COALESCE(p_recovery_point, t.recovery_point)
         WHERE t.scope = p_scope AND t.`key` = p_key;
        SET v_result = 'held';
    END IF;
    -- Also when refusing: ends the transaction and releases the row lock.
    COMMIT;
    SELECT v_result, v_lease_until;
END
"""

# purge_expired: one batch of at most p_limit expired rows, oldest first. The candidates are
# read without locking through the expires_at index (v_now is a constant for that query, so it
# is a range scan; SYSDATE() inline would be evaluated per row and scan the table), then deleted
# one by one by primary key, each re-checking expiry on the row's latest committed version under
# its lock: a row a claimer revived meanwhile no longer matches and stays. Deleting by primary
# key locks each row the way claims do, so purge and claims cannot deadlock (see _CLAIM); a
# single "DELETE ... ORDER BY expires_at LIMIT n" locks index entries first and does. One
# transaction for the batch: one log flush at COMMIT rather than one per row. A claim of a key
# being purged waits for that COMMIT (milliseconds), then finds the key absent.
_PURGE = f"""
CREATE OR REPLACE PROCEDURE {{purge}}(IN p_limit INT UNSIGNED)
MODIFIES SQL DATA
SQL SECURITY INVOKER
COMMENT '{{marker}}'
BEGIN
    DECLARE v_now     DOUBLE;
    DECLARE v_deleted INT UNSIGNED DEFAULT 0;
    DECLARE v_done    BOOLEAN DEFAULT FALSE;
    DECLARE v_scope   VARCHAR(255) {_ASCII};
    DECLARE v_key     VARCHAR(255) {_ASCII};
    DECLARE expired CURSOR FOR
        SELECT t.scope, t.`key`
          FROM {{table}} AS t
         WHERE t.expires_at <= v_now
         ORDER BY t.expires_at
         LIMIT p_limit;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_done = TRUE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
{_TIME_ZONE_GUARD}
    -- Read once: rows that expire while the batch runs wait for the next one.
    SET v_now = UNIX_TIMESTAMP(SYSDATE(6));
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    OPEN expired;
    batch: LOOP
        FETCH expired INTO v_scope, v_key;
        IF v_done THEN
            LEAVE batch;
        END IF;
        DELETE FROM {{table}}
         WHERE scope = v_scope AND `key` = v_key AND expires_at <= v_now;
        SET v_deleted = v_deleted + ROW_COUNT();
    END LOOP;
    CLOSE expired;
    COMMIT;
    SELECT v_deleted;
END
"""

# get: the live record, without its token (the token is never selected). NOW(6) is the start
# of this statement, which reads without locking (a consistent read waits for nobody), so it
# is also the time of the read.
_GET = """
SELECT t.fingerprint, t.state, NULL, t.lease_until, t.outcome, t.recovery_point,
       t.created_at, t.expires_at, t.format
  FROM {table} AS t
 WHERE t.scope = %s AND t.`key` = %s AND t.expires_at > UNIX_TIMESTAMP(NOW(6))
"""

# release: only the current holder deletes, and only a live record (an expired one is absent).
# A completed record has no token, so it is never released. NOW(6) is the statement's start: if
# the DELETE waited for the row lock, a record that expired during the wait still counts as
# live, which only lets the holder delete its own just-expired claim (what expiry allows
# anyway). DELETE reports the rows it deleted, whatever CLIENT_FOUND_ROWS says.
_RELEASE = """
DELETE FROM {table}
 WHERE scope = %s AND `key` = %s AND state = 'in_progress' AND token = %s
   AND expires_at > UNIX_TIMESTAMP(NOW(6))
"""

# delete: removes the record whatever its state (an expired one too, as cleanup), and reports
# whether a live record was removed, since an expired record counts as absent.
_DELETE = """
DELETE FROM {table}
 WHERE scope = %s AND `key` = %s
RETURNING expires_at > UNIX_TIMESTAMP(NOW(6))
"""

# auto-migration's cheap probe: is the table there and every procedure at SCHEMA_VERSION?
_IS_CURRENT = """
SELECT (SELECT COUNT(*) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s)
     + (SELECT COUNT(*) FROM information_schema.ROUTINES
         WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_TYPE = 'PROCEDURE'
           AND ROUTINE_NAME IN (%s, %s, %s) AND ROUTINE_COMMENT = %s)
"""


def _marker() -> str:
    return f"idempo schema {SCHEMA_VERSION}"


def _quote(name: str) -> str:
    # Names are checked against _IDENTIFIER: backticks are enough, nothing to escape.
    return f"`{name}`"


@dataclass(frozen=True, slots=True)
class _Statements:
    """Every statement of one table, composed once."""

    table: str
    names: tuple[str, str, str]  # the procedures: claim, hold, purge (unquoted)
    lock: str  # the GET_LOCK name serialising migrations of this table across processes
    migration: tuple[str, ...]
    claim: str
    complete: str
    extend: str
    purge: str
    get: str
    release: str
    delete: str


def _statements(table: str) -> _Statements:
    if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table) or len(table) > _MAX_TABLE:
        raise ValueError(
            "the MariaDB table name must be a plain identifier (letters, digits, _) of at most"
            f" {_MAX_TABLE} characters, not {table!r}"
        )
    names = (f"{table}_claim", f"{table}_hold", f"{table}_purge")
    t, claim, hold, purge = (_quote(n) for n in (table, *names))
    lock = f"idempo-migrate-{table}"
    if len(lock) > 64:  # user-level lock names are limited to 64 characters
        lock = "idempo-migrate-" + hashlib.sha256(table.encode()).hexdigest()[:49]
    marker = _marker()
    return _Statements(
        table=table,
        names=names,
        lock=lock,
        migration=(
            _TABLE.format(table=t),
            _CLAIM.format(claim=claim, table=t, marker=marker),
            _HOLD.format(hold=hold, table=t, marker=marker),
            _PURGE.format(purge=purge, table=t, marker=marker),
        ),
        claim=f"CALL {claim}(%s, %s, %s, %s, %s, %s)",
        complete=f"CALL {hold}(%s, %s, %s, TRUE, %s, %s, NULL, NULL)",
        extend=f"CALL {hold}(%s, %s, %s, FALSE, NULL, NULL, %s, %s)",
        purge=f"CALL {purge}(%s)",
        get=_GET.format(table=t),
        release=_RELEASE.format(table=t),
        delete=_DELETE.format(table=t),
    )


# -- errors -------------------------------------------------------------------------------------

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


def _errno(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


def _is_client_error(errno: int) -> bool:
    # PyMySQL reports trouble on the wire with the client library's codes, 2000-2999 (2003
    # cannot connect, 2006 gone away, 2013 lost connection), or errno 0 (InterfaceError:
    # connection closed, protocol out of step).
    return errno == 0 or 2000 <= errno < 3000


def _session_intact(exc: BaseException) -> bool:
    """Whether the connection can be reused after ``exc``: only after a clean server error."""
    if isinstance(exc, IdempoError):
        return True  # raised by this module between statements, not by the wire
    if not isinstance(exc, pymysql.err.MySQLError) or isinstance(exc, pymysql.err.InterfaceError):
        return False  # interrupted mid-reply (KeyboardInterrupt, a bug): unknown state
    errno = _errno(exc)
    return not _is_client_error(errno) and errno not in _SESSION_LOST_ERRNOS


@contextlib.contextmanager
def _store_errors(operation: str) -> Iterator[None]:
    """The one place where driver errors become idempo errors.

    Connection trouble (InterfaceError; OperationalError from the client side of the wire; the
    server errors of _UNAVAILABLE_ERRNOS) means the store cannot be reached, or cannot serve the
    operation now, and nothing was written: StoreUnavailableError. Any other server error means
    it answered wrongly (schema missing, permission denied, value too long): StoreError.
    Failures to connect become StoreUnavailableError in the pool (_Pool._open).
    """
    try:
        yield
    except pymysql.err.MySQLError as exc:
        errno = _errno(exc)
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


# -- connections --------------------------------------------------------------------------------


class _Pool:
    """A small thread-safe pool of autocommit PyMySQL connections.

    At most ``max_size`` connections are open; a caller finding none free waits up to
    ``timeout`` seconds, then gets StoreUnavailableError. Connections are opened on demand and
    never pinged before use (a ping is a round trip per operation): one that turns out broken
    fails its operation with StoreUnavailableError and is discarded, and the next operation
    opens a fresh one. Idle connections older than ``max_idle`` seconds are closed instead of
    reused, before the server's wait_timeout (8 hours by default) can silently drop them.
    """

    def __init__(
        self, connect: Callable[[], _Conn], *, max_size: int, timeout: float, max_idle: float
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._connect = connect
        self.max_size = max_size
        self._timeout = timeout
        self._max_idle = max_idle
        self._cond = threading.Condition()
        self._idle: list[tuple[_Conn, float]] = []  # (connection, when returned); LIFO
        self._size = 0  # open connections: idle + lent
        self._closed = False
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # Called with the condition held. A forked child shares its parent's sockets: it must
        # neither use nor close them (closing sends COM_QUIT, ending the parent's sessions).
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._idle.clear()
            self._size = 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[_Conn]:
        conn = self._acquire()
        keep = False
        try:
            yield conn
            keep = True
        except BaseException as exc:
            keep = _session_intact(exc)
            raise
        finally:
            self._release(conn, keep)

    def _acquire(self) -> _Conn:
        deadline = time.monotonic() + self._timeout
        stale: list[_Conn] = []
        try:
            with self._cond:
                self._check_fork()
                while True:
                    if self._closed:
                        raise StoreError("this MariaDB store is closed")
                    now = time.monotonic()
                    while self._idle:
                        conn, since = self._idle.pop()
                        if now - since <= self._max_idle:
                            return conn
                        stale.append(conn)
                        self._size -= 1
                    if self._size < self.max_size:
                        self._size += 1  # reserve the slot; connect outside the lock
                        break
                    if now >= deadline:
                        raise StoreUnavailableError(
                            f"no MariaDB connection free within {self._timeout:g} s"
                            f" (max_size={self.max_size})"
                        )
                    # Woken by a returned connection or a freed slot (or the deadline): look
                    # again, as another waiter may have been quicker.
                    self._cond.wait(deadline - now)
        finally:
            for conn in stale:
                _close(conn)
        try:
            return self._open()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise

    def _open(self) -> _Conn:
        try:
            return self._connect()
        except pymysql.err.MySQLError as exc:
            # Refused, timed out, unknown host, access denied, unknown database: unreachable.
            raise StoreUnavailableError(f"cannot connect to the MariaDB store: {exc}") from exc

    def _release(self, conn: _Conn, keep: bool) -> None:
        with self._cond:
            if self._pid != os.getpid():
                return  # lent before a fork: the parent's, and no longer counted here
            if keep and not self._closed and conn.open:
                self._idle.append((conn, time.monotonic()))
                self._cond.notify()
                return
            self._size -= 1
            self._cond.notify()
        _close(conn)

    def close(self) -> None:
        """Close idle connections now, lent ones when they come back; refuse new requests."""
        with self._cond:
            self._check_fork()
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for conn, _ in idle:
            _close(conn)

    @property
    def closed(self) -> bool:
        return self._closed


def _end_transaction(conn: _Conn) -> None:
    """After a procedure failed, make sure its transaction is over (on the error path only).

    The procedures roll back before passing an error on, but MariaDB does not run a procedure's
    handlers for every error (see _CLAIM on deadlocks): a connection left inside a transaction
    would keep its row locks and fail its next CALL. A connection that cannot even roll back is
    closed, which the pool then discards.
    """
    try:
        conn.rollback()
    except Exception:
        _close(conn)


def _close(conn: _Conn) -> None:
    # PyMySQL's close() sends COM_QUIT (ignoring failures) and always closes the socket; it
    # raises only when already closed.
    with contextlib.suppress(Exception):
        conn.close()


# -- the store ----------------------------------------------------------------------------------


def _record(scope: str, key: str, row: Sequence[Any]) -> Record:
    fingerprint, state, token, lease_until, outcome, recovery_point, created, expires, fmt = row
    if fmt != RECORD_FORMAT:
        raise StoreError(
            f"record ({scope!r}, {key!r}) has format {fmt}; this idempo reads {RECORD_FORMAT}"
        )
    return Record(
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        state=State(state),
        token=token,
        lease_until=None if lease_until is None else float(lease_until),
        outcome=None if outcome is None else bytes(outcome),
        created_at=float(created),
        expires_at=float(expires),
        recovery_point=None if recovery_point is None else bytes(recovery_point),
    )


_LOST = {
    "gone": "the idempotency record is gone (released, deleted or expired)",
    "completed": "the idempotency record is already completed",
    "taken_over": "the lease was taken over by another execution",
}

# Connection settings the store depends on: they cannot be overridden.
_RESERVED = frozenset({"autocommit", "init_command", "sql_mode"})


class MySQLStore:
    """A :class:`~idempo.stores.base.Store` in a MariaDB table.

    Build it from a URL (``MySQLStore.from_url("mysql://app:secret@db:3306/app")``) or from
    PyMySQL connection arguments (``MySQLStore(host="db", user="app", database="app")``);
    ``connect_kwargs`` go to ``pymysql.connect`` (``connect_timeout`` defaults to 5 seconds;
    ``read_timeout``, ``ssl``, ``unix_socket`` and so on as you need them). The store owns a
    pool of at most ``max_size`` autocommit connections, opened on demand; callers beyond it
    wait up to ``pool_timeout`` seconds, then get StoreUnavailableError.

    ``migrate()`` creates the table and its three procedures idempotently, and is safe to run
    from several processes at once. With ``auto_migrate=True`` (the default) the first
    operation of each store object runs it if the schema is missing or older than this code. In
    production run ``migrate()`` at deploy time with a user that may create tables and routines,
    and pass ``auto_migrate=False``: a missing schema is then a loud StoreError instead of DDL
    at runtime. Once migrated, the application user needs only SELECT, INSERT, UPDATE, DELETE on
    the table and EXECUTE on the procedures (``GRANT EXECUTE ON PROCEDURE db.<table>_claim``,
    ``_hold``, ``_purge``).
    """

    def __init__(
        self,
        *,
        table: str = "idempo_records",
        max_size: int = 10,
        pool_timeout: float = 10.0,
        max_idle: float = 300.0,
        auto_migrate: bool = True,
        migrate_lock_timeout: float = 10.0,
        **connect_kwargs: Any,
    ) -> None:
        self._sql = _statements(table)
        reserved = _RESERVED & connect_kwargs.keys()
        if reserved:
            raise TypeError(f"the MariaDB store sets {', '.join(sorted(reserved))} itself")
        kwargs = {"charset": "utf8mb4", "connect_timeout": 5, **connect_kwargs}
        kwargs.update(autocommit=True, init_command=_SESSION)
        self._connect_kwargs = kwargs
        self._pool = _Pool(
            self._connect, max_size=max_size, timeout=pool_timeout, max_idle=max_idle
        )
        self._auto_migrate = auto_migrate
        self._migrate_lock_timeout = migrate_lock_timeout
        self._ready = False
        self._closed = False
        self._init_lock = threading.Lock()  # the first-use auto-migration, once per store

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MySQLStore:
        """A store for ``mysql://user:password@host:port/database``.

        User and password are percent-decoded. The URL takes no query string: pass driver
        options as keyword arguments (they override the URL's parts too).
        """
        return cls(**{**_parse_url(url), **options})

    def _connect(self) -> _Conn:
        return pymysql.connect(**self._connect_kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    def _ensure_ready(self) -> None:
        """Auto-migrate, once per store object, before its first operation.

        Concurrent first callers wait for the first. If it fails (server down), the next caller
        tries again, so a store recovers with its server.
        """
        if self._closed:
            raise StoreError("this MariaDB store is closed")
        if self._ready:
            return
        with self._init_lock:
            if not self._ready:
                if self._auto_migrate and not self._is_current():
                    self._migrate()
                self._ready = True

    def _is_current(self) -> bool:
        rows, _ = self._execute(
            "auto-migrate", _IS_CURRENT, (self._sql.table, *self._sql.names, _marker())
        )
        return int(rows[0][0]) == 1 + len(self._sql.names)

    def migrate(self) -> None:
        """Create or upgrade the table and its procedures (idempotent).

        Under a server-wide user-level lock (GET_LOCK), so that processes migrating at once run
        one after the other: concurrent CREATE OR REPLACE PROCEDURE of one routine can fail on
        the routine table. DDL in MariaDB commits implicitly, statement by statement; every
        statement is idempotent, so a migration interrupted halfway is finished by the next.
        """
        if self._closed:
            raise StoreError("this MariaDB store is closed")
        self._migrate()
        self._ready = True

    def _migrate(self) -> None:
        with _store_errors("migrate"), self._pool.connection() as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT GET_LOCK(%s, %s)", (self._sql.lock, self._migrate_lock_timeout))
            (locked,) = cursor.fetchone()
            if locked != 1:
                raise StoreUnavailableError(
                    f"another process has been migrating {self._sql.table!r} for"
                    f" {self._migrate_lock_timeout:g} s (lock {self._sql.lock!r})"
                )
            done = False
            try:
                for statement in self._sql.migration:
                    cursor.execute(statement)
                done = True
            finally:
                if done:
                    cursor.execute("DO RELEASE_LOCK(%s)", (self._sql.lock,))
                else:
                    # The error propagating matters more; a broken connection is discarded,
                    # and the server releases the lock with its session.
                    with contextlib.suppress(Exception):
                        cursor.execute("DO RELEASE_LOCK(%s)", (self._sql.lock,))

    def close(self) -> None:
        """Close the pool's connections (those in use when they come back)."""
        self._closed = True
        self._pool.close()

    # -- one statement each -------------------------------------------------------------------

    def _execute(
        self, operation: str, query: str, params: Sequence[Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement on a pooled connection: one request, one reply, its own
        transaction. Returns the rows of the first result set (if any) and the row count."""
        with _store_errors(operation), self._pool.connection() as conn:
            cursor = conn.cursor()
            try:
                count = cursor.execute(query, params)
                rows = list(cursor.fetchall()) if cursor.description is not None else []
                # A CALL's reply holds its result set, then the CALL's own status: read the
                # rest of the reply (already received, no new request) so the connection is
                # clean for its next user.
                while cursor.nextset():
                    pass
            except pymysql.err.MySQLError as exc:
                if query.startswith("CALL") and _session_intact(exc):
                    _end_transaction(conn)
                raise
            return rows, int(count)

    def _run(self, operation: str, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self._ensure_ready()
        rows, _ = self._execute(operation, query, params)
        return rows

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        rows = self._run(
            "claim", self._sql.claim, (scope, key, fingerprint, token, float(lease), float(ttl))
        )
        if len(rows) != 1:
            raise StoreError(f"the claim procedure returned {len(rows)} rows, not 1")
        status, takeover, now, *record = rows[0]
        return ClaimResult(
            ClaimStatus(status), _record(scope, key, record), float(now), takeover=bool(takeover)
        )

    def _hold(self, operation: str, query: str, params: Sequence[Any]) -> float | None:
        rows = self._run(operation, query, params)
        if len(rows) != 1:
            raise StoreError(f"the hold procedure returned {len(rows)} rows, not 1")
        result, lease_until = rows[0]
        if result != "held":
            raise LeaseLostError(_LOST.get(result, _LOST["gone"]))
        return None if lease_until is None else float(lease_until)

    def complete(self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float) -> None:
        self._hold("complete", self._sql.complete, (scope, key, token, bytes(outcome), float(ttl)))

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        until = self._hold("extend", self._sql.extend, (scope, key, token, float(lease), None))
        assert until is not None  # an in_progress record always has a lease
        return until

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        until = self._hold(
            "set_recovery_point",
            self._sql.extend,
            (scope, key, token, float(lease), bytes(recovery_point)),
        )
        assert until is not None
        return until

    def release(self, scope: str, key: str, token: str) -> bool:
        self._ensure_ready()
        _, count = self._execute("release", self._sql.release, (scope, key, token))
        return count > 0

    def get(self, scope: str, key: str) -> Record | None:
        rows = self._run("get", self._sql.get, (scope, key))
        return _record(scope, key, rows[0]) if rows else None

    def delete(self, scope: str, key: str) -> bool:
        rows = self._run("delete", self._sql.delete, (scope, key))
        return bool(rows and rows[0][0])

    def purge_expired(self, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        rows = self._run("purge_expired", self._sql.purge, (min(int(limit), 2**32 - 1),))
        return int(rows[0][0]) if rows else 0

    def bind(self, conn: Any) -> BoundMySQLStore:
        """This store's operations on ``conn`` (a PyMySQL connection, not autocommit), inside
        the caller's transaction: transactional mode. The caller commits; idempo never does."""
        return BoundMySQLStore(self, conn)

    def __repr__(self) -> str:
        host = self._connect_kwargs.get("host", "localhost")
        database = self._connect_kwargs.get("database")
        table = self._sql.table
        return f"{type(self).__name__}(host={host!r}, database={database!r}, table={table!r})"


class BoundMySQLStore:
    """A :class:`MySQLStore`'s operations on the caller's PyMySQL connection, inside the
    caller's transaction (transactional mode; see :meth:`MySQLStore.bind`).

    The store's procedures open and commit transactions of their own, so they cannot run inside
    the caller's. Here each operation is plain statements instead: the row is read ``FOR
    UPDATE`` and the pure transitions of :mod:`idempo.core.transitions` decide, as in the SQLite
    store. A claim of an absent key INSERTs; a concurrent duplicate's INSERT waits on the unique
    key until this transaction ends, then fails with a duplicate key (the winner committed: it
    reads the row again and replays) or succeeds (the winner rolled back). This costs two or
    three statements per operation instead of one.
    """

    def __init__(self, parent: MySQLStore, conn: Any) -> None:
        self._parent = parent
        self._conn = conn
        t = _quote(parent._sql.table)
        self._select = (
            "SELECT fingerprint, state, token, lease_until, outcome, recovery_point,"
            f" created_at, expires_at, format FROM {t} WHERE scope = %s AND `key` = %s"
        )
        self._insert = (
            f"INSERT INTO {t} (scope, `key`, fingerprint, state, token, lease_until, outcome,"
            " recovery_point, created_at, expires_at, format)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        self._update = (
            f"UPDATE {t} SET fingerprint = %s, state = %s, token = %s, lease_until = %s,"
            " outcome = %s, recovery_point = %s, created_at = %s, expires_at = %s, format = %s"
            " WHERE scope = %s AND `key` = %s"
        )
        self._delete = f"DELETE FROM {t} WHERE scope = %s AND `key` = %s"

    def _query(self, operation: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with _store_errors(operation):
            # A plain tuple cursor, whatever cursorclass the caller's connection defaults to.
            cursor = self._conn.cursor(pymysql.cursors.Cursor)
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def _check_transaction(self) -> None:
        """Refuse what would silently break exactly-once: an autocommit connection commits the
        record apart from the effect; REPEATABLE READ (MariaDB's default) makes two duplicates'
        gap locks deadlock instead of one waiting for the other."""
        if self._conn.get_autocommit():
            raise StoreError(
                "transactional mode needs a connection with autocommit off "
                "(pymysql.connect(..., autocommit=False)): otherwise the record commits apart "
                "from your writes"
            )
        level = self._query("claim", "SELECT @@SESSION.tx_isolation", ())[0][0]
        if str(level).upper() != "READ-COMMITTED":
            raise StoreError(
                f"transactional mode on MariaDB needs READ COMMITTED, not {level}: run "
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED on the connection (or "
                "init_command=...) before the transaction; under REPEATABLE READ concurrent "
                "duplicates deadlock instead of waiting"
            )

    def _load(
        self, operation: str, scope: str, key: str, *, lock: bool
    ) -> tuple[float, Record | None]:
        rows = self._query(operation, self._select + (" FOR UPDATE" if lock else ""), (scope, key))
        # The clock after the row lock is granted: a wait must not make leases look younger.
        now = float(self._query(operation, "SELECT UNIX_TIMESTAMP(SYSDATE(6))", ())[0][0])
        return now, (_record(scope, key, rows[0]) if rows else None)

    def _write(self, operation: str, r: Record, *, insert: bool) -> None:
        values = (
            r.fingerprint,
            r.state.value,
            r.token,
            r.lease_until,
            r.outcome,
            r.recovery_point,
            r.created_at,
            r.expires_at,
            RECORD_FORMAT,
        )
        if insert:
            self._query(operation, self._insert, (r.scope, r.key, *values))
        else:
            self._query(operation, self._update, (*values, r.scope, r.key))

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        self._parent._ensure_ready()
        self._check_transaction()
        for _ in range(100):
            now, current = self._load("claim", scope, key, lock=True)
            result, write = transitions.claim(
                current,
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                token=token,
                now=now,
                lease=lease,
                ttl=ttl,
            )
            if write is None:
                return result
            try:
                self._write("claim", write, insert=current is None)
            except StoreError as exc:
                if _errno(exc.__cause__ or exc) == 1062:  # a duplicate committed meanwhile
                    continue
                raise
            return result
        raise StoreError(f"claim of {scope!r}/{key!r} kept racing concurrent inserts")

    def complete(self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float) -> None:
        now, current = self._load("complete", scope, key, lock=True)
        record = transitions.complete(current, token=token, outcome=outcome, now=now, ttl=ttl)
        self._write("complete", record, insert=False)

    def _extend(self, scope: str, key: str, token: str, lease: float, point: bytes | None) -> float:
        now, current = self._load("extend", scope, key, lock=True)
        record = transitions.extend(
            current, token=token, now=now, lease=lease, recovery_point=point
        )
        self._write("extend", record, insert=False)
        assert record.lease_until is not None
        return record.lease_until

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        return self._extend(scope, key, token, lease, None)

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        return self._extend(scope, key, token, lease, recovery_point)

    def release(self, scope: str, key: str, token: str) -> bool:
        now, current = self._load("release", scope, key, lock=True)
        current = transitions.live(current, now)
        if current is None or current.token != token:
            return False
        self._query("release", self._delete, (scope, key))
        return True

    def get(self, scope: str, key: str) -> Record | None:
        now, current = self._load("get", scope, key, lock=False)
        return transitions.public(current, now)

    def delete(self, scope: str, key: str) -> bool:
        now, current = self._load("delete", scope, key, lock=True)
        self._query("delete", self._delete, (scope, key))
        return transitions.live(current, now) is not None

    def purge_expired(self, limit: int = 1000) -> int:
        return self._parent.purge_expired(limit)  # housekeeping: never in the caller's transaction

    def migrate(self) -> None:
        self._parent.migrate()

    def close(self) -> None:
        """The connection is the caller's: nothing to close."""


class AsyncMySQLStore(SyncStoreAsAsync):
    """The MariaDB store, awaited: each operation runs :class:`MySQLStore` in a worker thread
    (see the module docstring for why threads and not an async driver)."""

    sync_store: MySQLStore

    def __init__(self, store: MySQLStore) -> None:
        super().__init__(store, offload=True)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncMySQLStore:
        return cls(MySQLStore.from_url(url, **options))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sync_store!r})"


def _parse_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme.lower() != "mysql":
        raise ValueError(f"not a mysql:// URL: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(
            f"the mysql:// URL takes no query string or fragment: {url!r};"
            " pass driver options as keyword arguments"
        )
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not database or "/" in database:
        raise ValueError(
            f"the mysql:// URL must name one database: mysql://user:password@host:3306/dbname,"
            f" not {url!r}"
        )
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "database": database,
    }
    if parts.username is not None:
        kwargs["user"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    return kwargs


def open_sync(url: str, **options: Any) -> MySQLStore:
    """``mysql://user:password@host:port/database``; ``options`` go to :class:`MySQLStore`."""
    return MySQLStore.from_url(url, **options)


def open_async(url: str, **options: Any) -> AsyncMySQLStore:
    """The async twin of :func:`open_sync` (operations run in worker threads)."""
    return AsyncMySQLStore.from_url(url, **options)
