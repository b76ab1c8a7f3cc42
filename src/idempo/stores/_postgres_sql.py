"""The PostgreSQL store's SQL: the DDL, the claim function, every statement, composed once.

Hand-written and shared by both store classes (:mod:`idempo.stores._async.postgres` and its
generated sync twin): nothing here does I/O, so nothing here needs generating. Identifiers
(schema and table names come from users) are always quoted by :mod:`psycopg.sql`, never
formatted into SQL text by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from idempo.errors import StoreError, StoreUnavailableError
from idempo.stores._rows import RECORD_FORMAT

__all__ = [
    "CLAIM_ARGS",
    "IS_CURRENT",
    "MIGRATE_LOCK",
    "SCHEMA_VERSION",
    "Statements",
    "marker",
    "migration",
    "migration_sql",
    "scan_statement",
    "statements",
    "stats_statement",
    "store_errors",
]

# The version of the DDL below. Bump it whenever a table column, index or function changes:
# auto-migration compares it with the marker comment on the claim function to skip the DDL (and
# the privileges it needs) when the schema is already current.
# 2: the partial index of in-progress records (scan, stats).
# 3: the claim function reads before it writes: a replay, a refused duplicate and a mismatch on
#    a live record are answered from a plain read (no row lock, no transaction id, no WAL).
#    CREATE OR REPLACE with the same signature: the upgrade from 2 replaces the body.
SCHEMA_VERSION = 3
# pg_advisory_xact_lock key serialising migrations across processes ("idempo" in ASCII).
MIGRATE_LOCK = 0x6964656D706F
# PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1), silently,
# which could make two tables share one index or function: refuse such names instead.
_MAX_IDENTIFIER = 63
_LONGEST_SUFFIX = "_expires_at_idx"

_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    -- COLLATE "C": keys are compared byte for byte (a linguistic collation could call two
    -- different keys equal or sort them in surprising ways), and "C" compares fastest.
    scope           text COLLATE "C" NOT NULL,
    key             text COLLATE "C" NOT NULL,
    fingerprint     text NOT NULL,
    state           text NOT NULL
                    CONSTRAINT idempo_state_known CHECK (state IN ('in_progress', 'completed')),
    -- The fencing token and lease exist exactly while the record is in progress; the outcome
    -- exists exactly once it is completed. The checks keep a bug from storing anything else.
    token           text,
    lease_until     timestamptz,
    outcome         bytea,
    recovery_point  bytea,
    created_at      timestamptz NOT NULL,
    -- After this instant the record counts as absent for every operation, purged or not.
    expires_at      timestamptz NOT NULL,
    -- Layout version of this row (RECORD_FORMAT), so that a future format can coexist.
    format          smallint NOT NULL DEFAULT 1,
    PRIMARY KEY (scope, key),
    CONSTRAINT idempo_holder_matches_state CHECK (
        (state = 'in_progress' AND token IS NOT NULL AND lease_until IS NOT NULL
            AND outcome IS NULL)
        OR (state = 'completed' AND token IS NULL AND lease_until IS NULL
            AND outcome IS NOT NULL)
    )
)
"""

# purge_expired walks this index in batches instead of scanning the table.
_INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at)"

# scan(state="in_progress") and stats() walk only the records in flight, few next to the
# completed ones kept for replay. Partial: a completed row version is not in it, so only
# claims pay for it. (SCHEMA_VERSION 2; on a large existing table, build it beforehand with
# CREATE INDEX CONCURRENTLY under this name, since the migration's CREATE INDEX blocks writes.)
_IN_PROGRESS_INDEX = (
    "CREATE INDEX IF NOT EXISTS {index} ON {table} (scope, key) WHERE state = 'in_progress'"
)
_IN_PROGRESS_SUFFIX = "_inflight_idx"

# The claim decision table of idempo.stores.base, exactly as idempo.core.transitions.claim
# decides it, in one server-side call.
#
# Why a function: a claim that finds an existing record must read it, decide, and maybe write
# it, in one round trip. A single statement (INSERT ... ON CONFLICT plus a CTE reading the row)
# cannot do this correctly: every part of one statement shares the snapshot taken when the
# statement started, so when the INSERT conflicts with a row that another claimer committed
# after that instant, the statement's SELECT cannot see the row it just collided with. In a
# VOLATILE plpgsql function under READ COMMITTED each statement takes a fresh snapshot, so the
# SELECT after a conflicting INSERT sees the committed row; and if that row was deleted in
# between (release, delete, purge), the loop simply tries the INSERT again.
#
# Why clock_timestamp() and not now(): now() is the start of the transaction, which for this
# autocommit call is the start of the statement, before any wait for a row lock. A claim that
# queued behind 63 others on one key would judge leases, and stamp new ones, with a time up to
# that wait in the past: it could call a lease that ran out while it waited still live, or grant
# a lease shorter than asked. clock_timestamp() is the time at which the decision is taken, and
# stays right even if someone calls the function inside a long transaction. The clock is read
# once per decision (v_now) so that every comparison and timestamp of one answer agrees.
#
# Parameters are p_*, results o_*, and columns always qualified by the alias t, so that no name
# in the body can mean two things (plpgsql would raise "ambiguous column" or pick wrongly).
_CLAIM_BODY = """
DECLARE
    v_now   timestamptz;
    v_row   {table}%ROWTYPE;
    v_tries integer := 0;
BEGIN
    -- The retry loop below relies on each statement seeing rows committed after the previous
    -- one; under REPEATABLE READ or SERIALIZABLE it could not, so refuse to run there. (Also
    -- before the read below: an old transaction snapshot would answer from a stale record.)
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'idempo claim needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;

    -- Read first, without a lock. A live record that answers the claim without a write (a
    -- replay, a refused duplicate under a live lease, a mismatch) is answered from this read:
    -- no row lock, hence no transaction id, no WAL and no commit flush. The answer is what a
    -- claim taken at the instant of this read would have given, and a record completed,
    -- released, deleted or taken over just after it changes nothing that a claim a moment
    -- earlier could not equally have seen. A concurrent uncommitted insert is invisible here,
    -- so its rivals go on to the INSERT below, which waits for it. Every decision to WRITE
    -- (absent, expired, lease run out) is taken below, under the row lock, on a fresh read.
    SELECT t.* INTO v_row FROM {table} AS t
    WHERE t.scope = p_scope AND t.key = p_key;
    IF FOUND THEN
        v_now := clock_timestamp();
        IF v_row.expires_at > v_now THEN
            IF v_row.fingerprint <> p_fingerprint THEN
                o_status := 'mismatch';
            ELSIF v_row.state = 'completed' THEN
                o_status := 'completed';
            ELSIF v_row.lease_until > v_now THEN
                o_status := 'in_progress';
            END IF;
        END IF;
    END IF;

    LOOP
        -- Answered by the read above.
        EXIT WHEN o_status IS NOT NULL;
        v_tries := v_tries + 1;
        IF v_tries > 100 THEN
            -- Only a record deleted and re-created a hundred times in a row gets here.
            RAISE EXCEPTION 'idempo claim: record kept vanishing under concurrent deletes';
        END IF;

        -- Absent: create it. ON CONFLICT DO NOTHING waits for a concurrent uncommitted insert
        -- of the same key to end, so of 64 simultaneous claimers exactly one inserts.
        v_now := clock_timestamp();
        INSERT INTO {table} AS t
            (scope, key, fingerprint, state, token, lease_until,
             created_at, expires_at, format)
        VALUES
            (p_scope, p_key, p_fingerprint, 'in_progress', p_token,
             v_now + make_interval(secs => p_lease),
             v_now, v_now + make_interval(secs => greatest(p_ttl, p_lease)), {format})
        ON CONFLICT (scope, key) DO NOTHING
        RETURNING t.* INTO v_row;
        IF FOUND THEN
            o_status := 'acquired';
            o_takeover := false;
            EXIT;
        END IF;

        -- Present: lock it, so that the decision and any write below are one atomic step
        -- against every other claimer and against complete/extend/release.
        SELECT t.* INTO v_row FROM {table} AS t
        WHERE t.scope = p_scope AND t.key = p_key
        FOR UPDATE;
        -- Deleted between the INSERT and the SELECT: start over.
        CONTINUE WHEN NOT FOUND;
        -- Read the clock after the lock wait: the decision is taken now, not before it.
        v_now := clock_timestamp();

        IF v_row.expires_at <= v_now THEN
            -- Expired counts as absent: overwrite it as a brand-new record (new created_at,
            -- no outcome, no recovery point), not as a takeover.
            UPDATE {table} AS t SET
                fingerprint = p_fingerprint,
                state = 'in_progress',
                token = p_token,
                lease_until = v_now + make_interval(secs => p_lease),
                outcome = NULL,
                recovery_point = NULL,
                created_at = v_now,
                expires_at = v_now + make_interval(secs => greatest(p_ttl, p_lease)),
                format = {format}
            WHERE t.scope = p_scope AND t.key = p_key
            RETURNING t.* INTO v_row;
            o_status := 'acquired';
            o_takeover := false;
        ELSIF v_row.fingerprint <> p_fingerprint THEN
            -- Another request under the same key, whatever its state, even with an expired
            -- lease: taking over with a different request would mix two operations' effects.
            o_status := 'mismatch';
        ELSIF v_row.state = 'completed' THEN
            o_status := 'completed';
        ELSIF v_row.lease_until > v_now THEN
            o_status := 'in_progress';
        ELSE
            -- The holder's lease ran out (it crashed or stalled): take over with the new
            -- token, which fences the old holder out of complete/extend/release. created_at
            -- and the recovery point stay: a multi-step operation resumes where it stopped.
            UPDATE {table} AS t SET
                token = p_token,
                lease_until = v_now + make_interval(secs => p_lease),
                expires_at = greatest(t.expires_at, v_now + make_interval(secs => p_lease))
            WHERE t.scope = p_scope AND t.key = p_key
            RETURNING t.* INTO v_row;
            o_status := 'acquired';
            o_takeover := true;
        END IF;
        EXIT;
    END LOOP;

    o_now := extract(epoch FROM v_now)::float8;
    o_fingerprint := v_row.fingerprint;
    o_state := v_row.state;
    -- Only the new holder learns the token: the token never leaves the server otherwise.
    o_token := CASE WHEN o_status = 'acquired' THEN v_row.token END;
    o_lease_until := extract(epoch FROM v_row.lease_until)::float8;
    o_outcome := v_row.outcome;
    o_recovery_point := v_row.recovery_point;
    o_created_at := extract(epoch FROM v_row.created_at)::float8;
    o_expires_at := extract(epoch FROM v_row.expires_at)::float8;
    o_format := v_row.format;
END
"""

# The signature is part of the function's identity: changing OUT parameters needs a DROP
# FUNCTION in a migration (CREATE OR REPLACE cannot change a result type). SECURITY INVOKER (the
# default): callers need privileges on the table themselves, and the body names its table fully
# qualified, so no search_path can point it elsewhere.
_CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION {function}(
    p_scope text, p_key text, p_fingerprint text, p_token text,
    p_lease double precision, p_ttl double precision,
    OUT o_status text, OUT o_takeover boolean, OUT o_now double precision,
    OUT o_fingerprint text, OUT o_state text, OUT o_token text,
    OUT o_lease_until double precision, OUT o_outcome bytea, OUT o_recovery_point bytea,
    OUT o_created_at double precision, OUT o_expires_at double precision,
    OUT o_format smallint)
LANGUAGE plpgsql
VOLATILE
AS {body}
"""

CLAIM_ARGS = "(text, text, text, text, double precision, double precision)"

_CLAIM = "SELECT * FROM {function}(%s::text, %s::text, %s::text, %s::text, %s::float8, %s::float8)"

# Finishing and extending a claim share one shape: a single UPDATE that succeeds only for the
# current token of a live in_progress record (the same test as transitions.require_holder), and,
# when it matched nothing, the reason (a transitions.LostReason code; NULL: no row at all), read
# in the same statement for the LeaseLostError message.
# The data-modifying CTE always runs to completion; the outer SELECT sees the table as it was
# before it (one snapshot per statement), which is what the reason should describe. The CASE is
# evaluated lazily, so the success path costs no second lookup.
#
# The clock is read once (CTE c, materialised) so that the liveness test and the new timestamps
# agree; clock_timestamp() rather than now() for the reason given at _CLAIM_BODY.
_HOLDER_UPDATE = """
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now),
held AS (
    UPDATE {table} AS t SET {assignments}
    FROM c
    WHERE t.scope = %(scope)s AND t.key = %(key)s
      AND t.state = 'in_progress' AND t.token = %(token)s
      AND t.expires_at > c.now
    RETURNING extract(epoch FROM t.lease_until)::float8 AS lease_until
)
SELECT
    EXISTS (SELECT FROM held),
    (SELECT lease_until FROM held),
    CASE WHEN NOT EXISTS (SELECT FROM held) THEN (
        SELECT CASE
            WHEN r.expires_at <= c.now THEN 'gone'
            WHEN r.state = 'completed' THEN 'completed'
            ELSE 'taken_over'
        END
        FROM {table} AS r, c
        WHERE r.scope = %(scope)s AND r.key = %(key)s
    ) END
"""

# complete: the holder may finish even after its lease ran out, as long as nobody took over
# (fencing is by token, not by lease). The TTL now runs from completion.
_COMPLETE_SET = """
    state = 'completed', token = NULL, lease_until = NULL, outcome = %(outcome)s,
    expires_at = c.now + make_interval(secs => %(ttl)s::float8)
"""

# extend and set_recovery_point: the lease restarts now; the record lives at least as long as
# the lease. A NULL recovery point (extend) keeps the stored one.
_EXTEND_SET = """
    lease_until = c.now + make_interval(secs => %(lease)s::float8),
    expires_at = greatest(t.expires_at, c.now + make_interval(secs => %(lease)s::float8)),
    recovery_point = coalesce(%(recovery_point)s::bytea, t.recovery_point)
"""

# release: only the current holder deletes, and only a live record (an expired one is absent).
# A completed record has no token, so it is never released.
_RELEASE = """
DELETE FROM {table} AS t
WHERE t.scope = %s AND t.key = %s AND t.state = 'in_progress' AND t.token = %s
  AND t.expires_at > clock_timestamp()
RETURNING true
"""

# get: the live record, without its token (the token is never selected).
_GET = """
SELECT t.fingerprint, t.state, NULL::text,
    extract(epoch FROM t.lease_until)::float8,
    t.outcome, t.recovery_point,
    extract(epoch FROM t.created_at)::float8,
    extract(epoch FROM t.expires_at)::float8,
    t.format
FROM {table} AS t
WHERE t.scope = %s AND t.key = %s AND t.expires_at > clock_timestamp()
"""

# delete: removes the record whatever its state (an expired one too, as cleanup), and reports
# whether a live record was removed, since an expired record counts as absent.
_DELETE = """
DELETE FROM {table} AS t
WHERE t.scope = %s AND t.key = %s
RETURNING t.expires_at > clock_timestamp()
"""

# purge_expired: one batch of at most %s expired rows, found through the expires_at index.
# FOR UPDATE SKIP LOCKED passes over rows a claimer holds locked (it may be reviving an expired
# key right now), so a purge never waits for live traffic nor makes it wait. Rows are picked by
# ctid: "= ANY (ARRAY(...))" makes a TID scan (an IN-subquery could be planned as a join over the
# table). The outer condition re-checks expiry on the row actually deleted, so a row revived
# between the pick and the delete survives. The clock is read once, in an InitPlan, so that the
# index condition is a plain parameter (a volatile call per row could not use the index).
_PURGE = """
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
DELETE FROM {table} AS t
USING c
WHERE t.ctid = ANY (ARRAY(
        SELECT e.ctid FROM {table} AS e
        WHERE e.expires_at <= (SELECT now FROM c)
        LIMIT %s
        FOR UPDATE SKIP LOCKED))
  AND t.expires_at <= c.now
"""

# auto-migration's cheap probe: is the table there and the claim function at SCHEMA_VERSION?
IS_CURRENT = """
SELECT to_regclass(%s) IS NOT NULL
   AND coalesce(obj_description(to_regprocedure(%s), 'pg_proc') = %s, false)
"""


def marker() -> str:
    return f"idempo schema {SCHEMA_VERSION}"


def _check_identifier(what: str, name: str, room: int) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"the PostgreSQL {what} name must be a non-empty str, not {name!r}")
    if "\x00" in name or len(name.encode()) > room:
        raise ValueError(
            f"the PostgreSQL {what} name {name!r} must be at most {room} bytes without NUL"
        )
    return name


def _text(statement: sql.Composed) -> str:
    # Quoted without a connection (psycopg's own identifier quoting, the same as libpq's); the
    # text is encoded to each connection's encoding when it is sent.
    return statement.as_string(None)


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of one (schema, table), composed once with quoted identifiers."""

    schema: sql.Identifier
    table: sql.Composed  # "schema"."table"
    index: sql.Identifier  # indexes live in the table's schema: name unqualified
    function: sql.Composed  # "schema"."table_claim"
    # The statements of every operation, rendered to text once: psycopg would otherwise compose
    # a Composed afresh on every execute, and a str is also the key under which the store
    # remembers what each connection has prepared (see the store's _execute).
    claim: str
    complete: str
    extend: str
    release: str
    get: str
    delete: str
    purge: str
    in_progress_index: sql.Identifier


def statements(schema: str, table: str) -> Statements:
    _check_identifier("schema", schema, _MAX_IDENTIFIER)
    _check_identifier("table", table, _MAX_IDENTIFIER - len(_LONGEST_SUFFIX))
    qualified = sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(table)])
    function = sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(f"{table}_claim")])

    def holder(assignments: str) -> str:
        return _text(
            sql.SQL(_HOLDER_UPDATE).format(table=qualified, assignments=sql.SQL(assignments))
        )

    return Statements(
        schema=sql.Identifier(schema),
        table=qualified,
        index=sql.Identifier(f"{table}_expires_at_idx"),
        function=function,
        claim=_text(sql.SQL(_CLAIM).format(function=function)),
        complete=holder(_COMPLETE_SET),
        extend=holder(_EXTEND_SET),
        release=_text(sql.SQL(_RELEASE).format(table=qualified)),
        get=_text(sql.SQL(_GET).format(table=qualified)),
        delete=_text(sql.SQL(_DELETE).format(table=qualified)),
        purge=_text(sql.SQL(_PURGE).format(table=qualified)),
        in_progress_index=sql.Identifier(f"{table}{_IN_PROGRESS_SUFFIX}"),
    )


# scan: one page, read by one statement. The clock is read once (an InitPlan: a plain value
# for the index condition); the page is at most %(limit)s rows after the cursor in (scope, key)
# order, through the primary key or, for in-progress records, the partial index (the state is
# a literal so that a generic plan can use it). The page is LEFT JOINed to the clock so that an
# empty page still tells the time. Expiry and age are judged by the caller on the rows
# examined, so a page's work is bounded however few rows match. No token, no outcome.
_SCAN = """
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT extract(epoch FROM c.now)::float8, w.*
FROM c LEFT JOIN LATERAL (
    SELECT t.scope, t.key, t.fingerprint, t.state,
        extract(epoch FROM t.lease_until)::float8, t.recovery_point,
        extract(epoch FROM t.created_at)::float8, extract(epoch FROM t.expires_at)::float8,
        t.format
    FROM {table} AS t
    WHERE {where}
    ORDER BY t.scope, t.key
    LIMIT %(limit)s
) AS w ON true
ORDER BY w.scope, w.key
"""

# stats: one statement; each count reads only what it needs (the in-progress counts the partial
# index, the expired count the expires_at index); the completed count is a scan of the table.
_STATS = """
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT
    (SELECT count(*) FROM {table} AS t, c
      WHERE t.state = 'in_progress' AND t.expires_at > c.now),
    (SELECT count(*) FROM {table} AS t, c
      WHERE t.state = 'completed' AND t.expires_at > c.now),
    (SELECT count(*) FROM {table} AS t WHERE t.expires_at <= (SELECT now FROM c)),
    (SELECT count(*) FROM {table} AS t, c
      WHERE t.state = 'in_progress' AND t.expires_at > c.now AND t.lease_until <= c.now),
    (SELECT extract(epoch FROM min(t.created_at))::float8 FROM {table} AS t, c
      WHERE t.state = 'in_progress' AND t.expires_at > c.now),
    (SELECT extract(epoch FROM now)::float8 FROM c)
"""


def scan_statement(s: Statements, state: str | None, scoped: bool) -> sql.Composed:
    """The page statement for one filter shape (parameters ``scope``, ``key``, ``limit``)."""
    where = (
        "t.scope = %(scope)s AND t.key > %(key)s"
        if scoped
        else ("(t.scope, t.key) > (%(scope)s, %(key)s)")
    )
    if state is not None:
        where += f" AND t.state = {sql.quote(state)}"
    return sql.SQL(_SCAN).format(table=s.table, where=sql.SQL(where))


def stats_statement(s: Statements) -> sql.Composed:
    return sql.SQL(_STATS).format(table=s.table)


def migration(s: Statements) -> list[sql.Composed]:
    """The DDL, in order; run it in one transaction after taking the migration lock."""
    # The function body is a string constant. It is passed as a quoted literal rather than
    # between $$ dollar quotes, because a user-chosen identifier inside the body could contain
    # the closing dollar quote and end the body early.
    body = sql.SQL(_CLAIM_BODY).format(table=s.table, format=sql.Literal(RECORD_FORMAT))
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(schema=s.schema),
        sql.SQL(_TABLE).format(table=s.table),
        sql.SQL(_INDEX).format(index=s.index, table=s.table),
        sql.SQL(_IN_PROGRESS_INDEX).format(index=s.in_progress_index, table=s.table),
        sql.SQL(_CLAIM_FUNCTION).format(
            function=s.function, body=sql.Literal(body.as_string(None))
        ),
        # The marker auto-migration checks to skip all of the above when it is current.
        sql.SQL("COMMENT ON FUNCTION {function}{args} IS {marker}").format(
            function=s.function, args=sql.SQL(CLAIM_ARGS), marker=sql.Literal(marker())
        ),
    ]


def migration_sql(schema: str = "public", table: str = "idempo_records") -> str:
    """The migration as an SQL script, for teams that apply DDL with their own tools.

    ``store.migrate()`` runs the same statements in one transaction under an advisory lock.
    """
    lock = sql.SQL("SELECT pg_advisory_xact_lock({key})").format(key=sql.Literal(MIGRATE_LOCK))
    parts = [lock, *migration(statements(schema, table))]
    lines = ["BEGIN;", *(p.as_string(None).strip() + ";" for p in parts), "COMMIT;"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def store_errors(operation: str) -> Iterator[None]:
    """The one place where driver errors become idempo errors.

    Connection trouble (psycopg.OperationalError, which covers a broken or refused connection,
    an administrator shutdown, and the pool's PoolTimeout/PoolClosed) means the store cannot be
    reached: StoreUnavailableError. Any other database error means it answered wrongly (schema
    missing, permission denied, constraint broken): StoreError.
    """
    try:
        yield
    except (PoolTimeout, psycopg.OperationalError) as exc:
        raise StoreUnavailableError(
            f"PostgreSQL store unreachable during {operation}: {exc}"
        ) from exc
    except psycopg.Error as exc:
        hint = ""
        if exc.sqlstate in ("42P01", "42883", "3F000"):  # undefined table / function / schema
            hint = " (has the schema been created? call store.migrate())"
        raise StoreError(f"PostgreSQL store failed during {operation}: {exc}{hint}") from exc
