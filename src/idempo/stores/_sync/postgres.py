# DO NOT EDIT: generated from src/idempo/stores/_async/postgres.py by scripts/unasync.py
"""The PostgreSQL store on psycopg 3 (``_sync/postgres.py`` is generated from ``_async/``).

Every contract operation is one statement, sent in one round trip (see ``_execute``), atomic on
its own:

* ``claim`` calls a plpgsql function that ``migrate()`` installs next to the table (see
  ``_CLAIM_BODY`` for why a function and not a single CTE);
* ``complete``, ``extend``, ``set_recovery_point``, ``release``, ``delete`` are one
  ``UPDATE``/``DELETE ... RETURNING`` each, guarded by the token in their ``WHERE`` clause;
* ``get`` is one ``SELECT``; ``purge_expired`` one batched ``DELETE``.

Time is the server's ``clock_timestamp()`` everywhere (see ``_CLAIM_BODY``), returned to Python
as float epoch seconds. Identifiers (schema and table names come from users) are always quoted by
:mod:`psycopg.sql`, never formatted into SQL text by hand.

Connections must be in autocommit mode: in a transaction the statement would need a ``BEGIN``
and a ``COMMIT`` round trip around it, and a pool rolls back what a connection returns
mid-transaction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import Connection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from idempo._primitives import sync_sleep
from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError

__all__ = ["SCHEMA_VERSION", "BoundPostgresStore", "PostgresStore", "migration_sql"]

# The version of the DDL below. Bump it whenever a table column, index or function changes:
# auto-migration compares it with the marker comment on the claim function to skip the DDL (and
# the privileges it needs) when the schema is already current.
SCHEMA_VERSION = 1
# The record layout this code writes and reads (column ``format``): a newer idempo that changes
# what the bytes mean writes a higher number, and this code refuses to misread it.
RECORD_FORMAT = 1
# pg_advisory_xact_lock key serialising migrations across processes ("idempo" in ASCII).
_MIGRATE_LOCK = 0x6964656D706F
# Whether libpq can pipeline (libpq >= 14): see _execute.
_PIPELINE = psycopg.capabilities.has_pipeline()
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
    -- one; under REPEATABLE READ or SERIALIZABLE it could not, so refuse to run there.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'idempo claim needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    LOOP
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

_CLAIM_ARGS = "(text, text, text, text, double precision, double precision)"

_CLAIM = "SELECT * FROM {function}(%s::text, %s::text, %s::text, %s::text, %s::float8, %s::float8)"

# Finishing and extending a claim share one shape: a single UPDATE that succeeds only for the
# current token of a live in_progress record (the same test as transitions.require_holder), and,
# when it matched nothing, the reason, read in the same statement for the LeaseLostError message.
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
            WHEN r.expires_at <= c.now THEN 'expired'
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
_IS_CURRENT = """
SELECT to_regclass(%s) IS NOT NULL
   AND coalesce(obj_description(to_regprocedure(%s), 'pg_proc') = %s, false)
"""


def _marker() -> str:
    return f"idempo schema {SCHEMA_VERSION}"


def _check_identifier(what: str, name: str, room: int) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"the PostgreSQL {what} name must be a non-empty str, not {name!r}")
    if "\x00" in name or len(name.encode()) > room:
        raise ValueError(
            f"the PostgreSQL {what} name {name!r} must be at most {room} bytes without NUL"
        )
    return name


@dataclass(frozen=True, slots=True)
class _Statements:
    """Every statement of one (schema, table), composed once with quoted identifiers."""

    schema: sql.Identifier
    table: sql.Composed  # "schema"."table"
    index: sql.Identifier  # indexes live in the table's schema: name unqualified
    function: sql.Composed  # "schema"."table_claim"
    claim: sql.Composed
    complete: sql.Composed
    extend: sql.Composed
    release: sql.Composed
    get: sql.Composed
    delete: sql.Composed
    purge: sql.Composed


def _statements(schema: str, table: str) -> _Statements:
    _check_identifier("schema", schema, _MAX_IDENTIFIER)
    _check_identifier("table", table, _MAX_IDENTIFIER - len(_LONGEST_SUFFIX))
    qualified = sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(table)])
    function = sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(f"{table}_claim")])

    def holder(assignments: str) -> sql.Composed:
        return sql.SQL(_HOLDER_UPDATE).format(table=qualified, assignments=sql.SQL(assignments))

    return _Statements(
        schema=sql.Identifier(schema),
        table=qualified,
        index=sql.Identifier(f"{table}_expires_at_idx"),
        function=function,
        claim=sql.SQL(_CLAIM).format(function=function),
        complete=holder(_COMPLETE_SET),
        extend=holder(_EXTEND_SET),
        release=sql.SQL(_RELEASE).format(table=qualified),
        get=sql.SQL(_GET).format(table=qualified),
        delete=sql.SQL(_DELETE).format(table=qualified),
        purge=sql.SQL(_PURGE).format(table=qualified),
    )


def _migration(statements: _Statements) -> list[sql.Composed]:
    """The DDL, in order; run it in one transaction after taking the migration lock."""
    s = statements
    # The function body is a string constant. It is passed as a quoted literal rather than
    # between $$ dollar quotes, because a user-chosen identifier inside the body could contain
    # the closing dollar quote and end the body early.
    body = sql.SQL(_CLAIM_BODY).format(table=s.table, format=sql.Literal(RECORD_FORMAT))
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(schema=s.schema),
        sql.SQL(_TABLE).format(table=s.table),
        sql.SQL(_INDEX).format(index=s.index, table=s.table),
        sql.SQL(_CLAIM_FUNCTION).format(
            function=s.function, body=sql.Literal(body.as_string(None))
        ),
        # The marker auto-migration checks to skip all of the above when it is current.
        sql.SQL("COMMENT ON FUNCTION {function}{args} IS {marker}").format(
            function=s.function, args=sql.SQL(_CLAIM_ARGS), marker=sql.Literal(_marker())
        ),
    ]


def migration_sql(schema: str = "public", table: str = "idempo_records") -> str:
    """The migration as an SQL script, for teams that apply DDL with their own tools.

    ``store.migrate()`` runs the same statements in one transaction under an advisory lock.
    """
    lock = sql.SQL("SELECT pg_advisory_xact_lock({key})").format(key=sql.Literal(_MIGRATE_LOCK))
    parts = [lock, *_migration(_statements(schema, table))]
    lines = ["BEGIN;", *(p.as_string(None).strip() + ";" for p in parts), "COMMIT;"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _store_errors(operation: str) -> Iterator[None]:
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
        lease_until=lease_until,
        outcome=None if outcome is None else bytes(outcome),
        created_at=created,
        expires_at=expires,
        recovery_point=None if recovery_point is None else bytes(recovery_point),
    )


_LOST = {
    None: "the idempotency record is gone (released, deleted or expired)",
    "expired": "the idempotency record is gone (released, deleted or expired)",
    "completed": "the idempotency record is already completed",
    "taken_over": "the lease was taken over by another execution",
}


class PostgresStore:
    """An :class:`~idempo.stores.base.Store` in a PostgreSQL table.

    Build it from a URL (the store then owns its connection pool and closes it)::

        store = PostgresStore.from_url("postgresql://app@db/app", schema="idempo")
        store.migrate()

    or hand it a psycopg_pool pool of autocommit connections that you open and close yourself
    (``kwargs={"autocommit": True}``)::

        store = PostgresStore(pool, schema="idempo")

    ``migrate()`` creates the schema, table, index and claim function idempotently, and is safe
    to run from several processes at once. With ``auto_migrate=True`` (the default) the first
    operation of each store object runs it if the schema is missing or older than this code.
    In production, run ``migrate()`` explicitly at deploy time with a role that may create
    objects, and pass ``auto_migrate=False`` so that a missing or outdated schema is a loud
    StoreError instead of DDL at runtime. Once migrated, the application role needs only USAGE
    on the schema and SELECT, INSERT, UPDATE, DELETE on the table (EXECUTE on the claim
    function is granted to PUBLIC by default).

    The table name must be at most 48 bytes (PostgreSQL truncates longer identifiers, which its
    index and function names are derived from).
    """

    def __init__(
        self,
        pool: ConnectionPool[Connection[TupleRow]],
        *,
        schema: str = "public",
        table: str = "idempo_records",
        auto_migrate: bool = True,
        owns_pool: bool = False,
    ) -> None:
        self._sql = _statements(schema, table)
        self._schema_name = schema
        self._table_name = table
        self._pool = pool
        self._owns_pool = owns_pool
        self._auto_migrate = auto_migrate
        self._ready = False
        self._closed = False
        # Guards the lazy first-use step (open the pool, auto-migrate). A threading.Lock is used
        # in both twins, taken without blocking and polled (see _ensure_ready), because the same
        # source must serve threads and tasks and idempo._primitives offers no lock pair.
        self._init_lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        schema: str = "public",
        table: str = "idempo_records",
        min_size: int = 1,
        max_size: int = 10,
        auto_migrate: bool = True,
        pool_timeout: float = 10.0,
        **connect_kwargs: Any,
    ) -> PostgresStore:
        """A store with its own pool of ``min_size``..``max_size`` autocommit connections.

        Callers beyond ``max_size`` queue for a connection for up to ``pool_timeout`` seconds,
        then get StoreUnavailableError. ``connect_kwargs`` go to ``psycopg.connect`` (for
        example ``connect_timeout``, default 5 seconds unless the URL sets it,
        ``application_name``, or ``prepare_threshold=None`` behind a pgbouncer that cannot keep
        prepared statements). The pool opens on first use.
        """
        _statements(schema, table)  # refuse bad names before a pool exists
        kwargs = dict(connect_kwargs)
        kwargs["autocommit"] = True
        if "connect_timeout" not in kwargs and "connect_timeout" not in conninfo_to_dict(url):
            # libpq waits forever by default: a black-holed server would stall the pool.
            kwargs["connect_timeout"] = 5
        pool = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            timeout=pool_timeout,
            name=f"idempo:{schema}.{table}",
            # Opened on first use, in _ensure_ready: psycopg_pool deprecates opening in the
            # constructor, and an asyncio pool can only open inside a running event loop.
            open=False,
        )
        return cls(pool, schema=schema, table=table, auto_migrate=auto_migrate, owns_pool=True)

    # -- lifecycle ------------------------------------------------------------------------

    def _open_pool(self) -> None:
        if self._closed:
            raise StoreError("this PostgreSQL store is closed")
        if self._owns_pool:
            with _store_errors("open"):
                self._pool.open()  # a no-op once open

    def _ensure_ready(self) -> None:
        """Open the pool and auto-migrate, once per store object, before the first operation.

        Concurrent first callers must not race through it: the first takes the lock, the others
        poll until it is done (a one-time wait). The lock is taken without blocking because a
        task blocking on it would stall its event loop. If the first caller fails (server down),
        the next one tries again, so a store recovers with its server.
        """
        if self._closed:
            raise StoreError("this PostgreSQL store is closed")
        while not self._ready:
            if self._init_lock.acquire(blocking=False):
                try:
                    if not self._ready:
                        self._open_pool()
                        if self._auto_migrate and not self._is_current():
                            self._migrate()
                        self._ready = True
                finally:
                    self._init_lock.release()
            else:
                sync_sleep(0.005)

    def _is_current(self) -> bool:
        """Whether the table exists and the claim function is at SCHEMA_VERSION."""
        function = sql.Composed([self._sql.function, sql.SQL(_CLAIM_ARGS)]).as_string(None)
        rows, _ = self._execute(
            "auto-migrate",
            sql.SQL(_IS_CURRENT),
            (self._sql.table.as_string(None), function, _marker()),
        )
        return bool(rows[0][0])

    def migrate(self) -> None:
        """Create or upgrade the schema, table, index and claim function (idempotent).

        One transaction under ``pg_advisory_xact_lock``: two processes migrating at once run one
        after the other (concurrent CREATE ... IF NOT EXISTS can otherwise fail on the catalog's
        unique indexes, and concurrent CREATE OR REPLACE FUNCTION with "tuple concurrently
        updated"), and a failed migration leaves nothing half-made.
        """
        self._open_pool()
        self._migrate()
        self._ready = True  # the pool is open and the schema current: skip the first-use check

    def _migrate(self) -> None:
        with _store_errors("migrate"):
            with self._pool.connection() as conn:
                self._check_autocommit(conn)
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                    for statement in _migration(self._sql):
                        conn.execute(statement)

    def close(self) -> None:
        """Close the pool if this store created it (from_url); a pool passed in stays open."""
        self._closed = True
        if self._owns_pool:
            self._pool.close()

    def bind(self, conn: Connection[Any]) -> BoundPostgresStore:
        """This store's operations on ``conn``, inside the caller's transaction.

        Transactional mode: every statement runs on ``conn`` and commits or rolls back with the
        caller's own writes; idempo never commits. A concurrent duplicate's claim waits on the
        row's unique key until this transaction ends, then sees the completed record (or, after
        a rollback, claims it afresh). ``conn`` must not be in autocommit mode and must use READ
        COMMITTED (PostgreSQL's default). The schema is migrated, if needed, through this
        store's own pool.
        """
        return BoundPostgresStore(self, conn)

    # -- one statement each -------------------------------------------------------------------

    @staticmethod
    def _check_autocommit(conn: Connection[TupleRow]) -> None:
        if not conn.autocommit:
            raise StoreError(
                "the PostgreSQL store needs autocommit connections "
                '(create the pool with kwargs={"autocommit": True})'
            )

    def _execute(
        self,
        operation: str,
        query: sql.SQL | sql.Composed,
        params: Sequence[Any] | Mapping[str, Any],
    ) -> tuple[list[TupleRow], int]:
        """Run one statement on a pooled connection: one round trip, its own transaction.

        Returns the rows (if any) and the row count. The statement is sent in a pipeline so
        that it is one flight of messages ending in one Sync even when psycopg prepares it
        (from its 5th use on a connection psycopg sends a named Parse first; outside a pipeline
        that Parse is a round trip of its own). Prepared statements save the server parsing and
        planning every call. Without libpq pipeline support (libpq < 14) the statement is sent
        plainly, and each statement costs one extra round trip, once per connection.
        """
        with _store_errors(operation):
            with self._pool.connection() as conn:
                self._check_autocommit(conn)
                if _PIPELINE:
                    with conn.pipeline():
                        cursor = conn.execute(query, params)
                else:
                    cursor = conn.execute(query, params)
                rows = cursor.fetchall() if cursor.description is not None else []
                return rows, cursor.rowcount

    def _run(
        self,
        operation: str,
        query: sql.SQL | sql.Composed,
        params: Sequence[Any] | Mapping[str, Any],
    ) -> list[TupleRow]:
        self._ensure_ready()
        rows, _ = self._execute(operation, query, params)
        return rows

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        rows = self._run(
            "claim", self._sql.claim, (scope, key, fingerprint, token, lease, ttl)
        )
        if len(rows) != 1:
            raise StoreError(f"the claim function returned {len(rows)} rows, not 1")
        status, takeover, now, *record = rows[0]
        return ClaimResult(
            ClaimStatus(status), _record(scope, key, record), now, takeover=bool(takeover)
        )

    def _hold(
        self, operation: str, query: sql.Composed, params: dict[str, Any]
    ) -> float | None:
        rows = self._run(operation, query, params)
        held, lease_until, reason = rows[0]
        if not held:
            raise LeaseLostError(_LOST.get(reason, _LOST[None]))
        return None if lease_until is None else float(lease_until)

    def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        params = {"scope": scope, "key": key, "token": token, "outcome": outcome, "ttl": ttl}
        self._hold("complete", self._sql.complete, params)

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        params = {"scope": scope, "key": key, "token": token, "lease": lease}
        until = self._hold("extend", self._sql.extend, {**params, "recovery_point": None})
        assert until is not None  # an in_progress record always has a lease
        return until

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        params = {
            "scope": scope,
            "key": key,
            "token": token,
            "lease": lease,
            "recovery_point": recovery_point,
        }
        until = self._hold("set_recovery_point", self._sql.extend, params)
        assert until is not None
        return until

    def release(self, scope: str, key: str, token: str) -> bool:
        rows = self._run("release", self._sql.release, (scope, key, token))
        return bool(rows)

    def get(self, scope: str, key: str) -> Record | None:
        rows = self._run("get", self._sql.get, (scope, key))
        return _record(scope, key, rows[0]) if rows else None

    def delete(self, scope: str, key: str) -> bool:
        rows = self._run("delete", self._sql.delete, (scope, key))
        return bool(rows and rows[0][0])

    def purge_expired(self, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        self._ensure_ready()
        _, count = self._execute("purge_expired", self._sql.purge, (limit,))
        return max(count, 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schema={self._schema_name!r}, table={self._table_name!r})"


class BoundPostgresStore(PostgresStore):
    """An :class:`PostgresStore` whose statements run on the caller's connection, in the
    caller's transaction (see :meth:`PostgresStore.bind`)."""

    def __init__(self, parent: PostgresStore, conn: Connection[Any]) -> None:
        super().__init__(
            parent._pool,
            schema=parent._schema_name,
            table=parent._table_name,
            auto_migrate=parent._auto_migrate,
            owns_pool=False,
        )
        self._parent = parent
        self._conn = conn

    def _ensure_ready(self) -> None:
        self._parent._ensure_ready()  # migrations go through the parent's own pool

    def _execute(
        self,
        operation: str,
        query: sql.SQL | sql.Composed,
        params: Sequence[Any] | Mapping[str, Any],
    ) -> tuple[list[TupleRow], int]:
        if (
            self._conn.autocommit
            and self._conn.info.transaction_status != TransactionStatus.INTRANS
        ):
            raise StoreError(
                "transactional mode needs a connection in a transaction: autocommit off, or "
                "inside `with conn.transaction():`"
            )
        with _store_errors(operation):
            # A plain tuple cursor, whatever row factory the caller's connection defaults to.
            cursor = self._conn.cursor(row_factory=tuple_row)
            cursor.execute(query, params)
            rows = cursor.fetchall() if cursor.description is not None else []
            return rows, cursor.rowcount

    def close(self) -> None:
        """The connection is the caller's: nothing to close."""
