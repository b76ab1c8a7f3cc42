"""The MariaDB store's SQL: the table, its three procedures and every statement, composed once.

Nothing here does I/O. Table names come from users: they are checked against a plain identifier
pattern and quoted with backticks (see :func:`statements`), never formatted in unchecked.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from idempo.stores._rows import RECORD_FORMAT

__all__ = [
    "IS_CURRENT",
    "SCHEMA_VERSION",
    "SESSION",
    "Statements",
    "marker",
    "quote",
    "scan_statement",
    "statements",
    "stats_statement",
]

# The version of the DDL below, written into every procedure's COMMENT. Bump it whenever a
# column, index or procedure changes: auto-migration compares it to skip the DDL (and the
# privileges it needs) when the schema is current.
# 2: the state index (scan, stats).
SCHEMA_VERSION = 2

# MariaDB identifiers have at most 64 characters; the longest derived name is <table>_claim.
_MAX_TABLE = 64 - len("_claim")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Set once per connection, at connect time (not per operation):
# * time_zone '+00:00': UNIX_TIMESTAMP(datetime) converts exactly (no DST);
# * READ COMMITTED: locking statements take no gap locks (see _CLAIM); the procedures also set
#   it for their own transactions, this covers release and delete;
# * a strict sql_mode, chosen here rather than inherited from the server: a value too long for
#   its column is an error, never silently truncated (two long keys must not become one). The
#   procedures keep the sql_mode of the session that created them, which is this one.
SESSION = (
    "SET time_zone = '+00:00', SESSION tx_isolation = 'READ-COMMITTED',"
    " sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO'"
)

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

# Every procedure starts with this guard: see idempo.stores.mysql (UNIX_TIMESTAMP and DST).
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

# scan(state=...) and stats() reach the records of one state, in (scope, key) order, through
# this index: InnoDB appends the primary key to every secondary index entry, so it is in fact
# (state, scope, key). MariaDB has no partial indexes; a completion moves the row's entry.
# (SCHEMA_VERSION 2; added to existing tables by the migration.)
_STATE_INDEX = "CREATE INDEX IF NOT EXISTS state_idx ON {table} (state)"

# scan: one page, one statement. At most %s rows after the cursor in (scope, key) order (the
# primary key, or the state index), LEFT JOINed to the clock so that an empty page still tells
# the time. NOW(6) is fixed for the statement, so it is a constant for the range. The keyset
# condition is spelt out (scope > ? OR scope = ? AND key > ?): MariaDB turns that into index
# ranges, not a row comparison. Expiry and age are judged by the caller on the rows examined.
_SCAN = """
SELECT c.now, w.*
  FROM (SELECT UNIX_TIMESTAMP(NOW(6)) AS now) AS c
  LEFT JOIN (
    SELECT t.scope, t.`key`, t.fingerprint, t.state, t.lease_until, t.recovery_point,
           t.created_at, t.expires_at, t.format
      FROM {table} AS t
     WHERE {where}
     ORDER BY t.scope, t.`key`
     LIMIT %s) AS w ON TRUE
 ORDER BY w.scope, w.`key`
"""
_AFTER = "(t.scope > %s OR (t.scope = %s AND t.`key` > %s))"
_AFTER_IN_SCOPE = "t.scope = %s AND t.`key` > %s"

# stats: one statement; the in-progress counts read the state index, the expired count the
# expires_at index; the completed count reads every completed entry of the state index.
_STATS = """
SELECT
    (SELECT COUNT(*) FROM {table} WHERE state = 'in_progress' AND expires_at > c.now),
    (SELECT COUNT(*) FROM {table} WHERE state = 'completed' AND expires_at > c.now),
    (SELECT COUNT(*) FROM {table} WHERE expires_at <= c.now),
    (SELECT COUNT(*) FROM {table}
      WHERE state = 'in_progress' AND expires_at > c.now AND lease_until <= c.now),
    (SELECT MIN(created_at) FROM {table} WHERE state = 'in_progress' AND expires_at > c.now),
    c.now
  FROM (SELECT UNIX_TIMESTAMP(NOW(6)) AS now) AS c
"""


def scan_statement(table: str, state: str | None, scoped: bool) -> str:
    """The page statement for one filter shape. Parameters: (scope, key, limit) when
    ``scoped``, else (scope, scope, key, limit)."""
    where = _AFTER_IN_SCOPE if scoped else _AFTER
    if state is not None:
        where += f" AND t.state = '{state}'"  # 'in_progress' or 'completed', never user text
    return _SCAN.format(table=quote(table), where=where)


def stats_statement(table: str) -> str:
    return _STATS.format(table=quote(table))


# auto-migration's cheap probe: is the table there and every procedure at SCHEMA_VERSION?
IS_CURRENT = """
SELECT (SELECT COUNT(*) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s)
     + (SELECT COUNT(*) FROM information_schema.ROUTINES
         WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_TYPE = 'PROCEDURE'
           AND ROUTINE_NAME IN (%s, %s, %s) AND ROUTINE_COMMENT = %s)
"""


def marker() -> str:
    return f"idempo schema {SCHEMA_VERSION}"


def quote(name: str) -> str:
    # Names are checked against _IDENTIFIER: backticks are enough, nothing to escape.
    return f"`{name}`"


@dataclass(frozen=True, slots=True)
class Statements:
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


def statements(table: str) -> Statements:
    if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table) or len(table) > _MAX_TABLE:
        raise ValueError(
            "the MariaDB table name must be a plain identifier (letters, digits, _) of at most"
            f" {_MAX_TABLE} characters, not {table!r}"
        )
    names = (f"{table}_claim", f"{table}_hold", f"{table}_purge")
    t, claim, hold, purge = (quote(n) for n in (table, *names))
    lock = f"idempo-migrate-{table}"
    if len(lock) > 64:  # user-level lock names are limited to 64 characters
        lock = "idempo-migrate-" + hashlib.sha256(table.encode()).hexdigest()[:49]
    mark = marker()
    return Statements(
        table=table,
        names=names,
        lock=lock,
        migration=(
            _TABLE.format(table=t),
            _STATE_INDEX.format(table=t),
            _CLAIM.format(claim=claim, table=t, marker=mark),
            _HOLD.format(hold=hold, table=t, marker=mark),
            _PURGE.format(purge=purge, table=t, marker=mark),
        ),
        claim=f"CALL {claim}(%s, %s, %s, %s, %s, %s)",
        complete=f"CALL {hold}(%s, %s, %s, TRUE, %s, %s, NULL, NULL)",
        extend=f"CALL {hold}(%s, %s, %s, FALSE, NULL, NULL, %s, %s)",
        purge=f"CALL {purge}(%s)",
        get=_GET.format(table=t),
        release=_RELEASE.format(table=t),
        delete=_DELETE.format(table=t),
    )
