"""The ``idempo`` operator commands over a store URL: what they print, and how they fail.

A failure of the store (unreachable, a bad URL, a missing schema) is a one-line ``Error: ...``
and exit status 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from idempo import open_store
from idempo.cli import main
from idempo.stores.base import Store
from tests import stalled_target
from tests.conftest import STORE_KINDS, cleanup, store_url

UNREACHABLE = "mysql://root@127.0.0.1:1/test"  # nothing listens on port 1: refused at once


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A migrated SQLite store holding one completed record, key ``k-1`` in scope ``s``."""
    url = f"sqlite:///{tmp_path / 'idempo.db'}"
    store = open_store(url)
    try:
        store.migrate()
        store.claim("s", "k-1", "fp", "token", lease=30, ttl=3600)
        store.complete("s", "k-1", "token", b"outcome", ttl=3600)
    finally:
        store.close()
    return url


def test_migrate(url: str) -> None:
    """``migrate`` creates the schema (again: it is idempotent) and says so."""
    result = run("migrate", "--store", url)
    assert result.exit_code == 0, result.output
    assert result.output == "migrated\n"


def test_keys_show(url: str) -> None:
    """``keys show`` prints the record's fields."""
    result = run("keys", "show", "--store", url, "--scope", "s", "k-1")
    assert result.exit_code == 0, result.output
    assert "key:          k-1" in result.output
    assert "scope:        s" in result.output
    assert "outcome:      7 bytes" in result.output


def test_keys_show_and_delete_of_a_missing_key(url: str) -> None:
    """A key with no record is a clean error for both ``show`` and ``delete``."""
    for command in ("show", "delete"):
        result = run("keys", command, "--store", url, "nope")
        assert result.exit_code == 1
        assert result.output == "Error: no record for key 'nope' in scope ''\n"


def test_keys_delete(url: str) -> None:
    """``keys delete`` removes the record; a second delete finds nothing."""
    result = run("keys", "delete", "--store", url, "--scope", "s", "k-1")
    assert result.exit_code == 0, result.output
    assert result.output == "deleted\n"
    assert run("keys", "delete", "--store", url, "--scope", "s", "k-1").exit_code == 1


def test_purge(url: str) -> None:
    """``purge`` reports how many expired records it deleted (none here: the record is live)."""
    result = run("purge", "--store", url, "--batch", "10")
    assert result.exit_code == 0, result.output
    assert result.output == "purged 0 expired records\n"


COMMANDS = [
    pytest.param(["migrate"], id="migrate"),
    pytest.param(["keys", "show"], id="keys-show"),
    pytest.param(["keys", "delete"], id="keys-delete"),
    pytest.param(["purge"], id="purge"),
    pytest.param(["keys", "list"], id="keys-list"),
    pytest.param(["stats"], id="stats"),
    pytest.param(["stats", "--format", "json"], id="stats-json"),
    pytest.param(["recover", "--call", "tests.stalled_target:ship", "--stalled"], id="recover"),
]


def invoke(command: list[str], store: str) -> Result:
    args = [*command, "--store", store]
    if command[:2] in (["keys", "show"], ["keys", "delete"]):
        args.append("k-1")
    return run(*args)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("store", "reason"),
    [
        (UNREACHABLE, "cannot connect to the MariaDB store"),
        ("sqlite:////nonexistent-dir/idempo.db", "cannot use SQLite file"),
        ("bogus://x", "unknown store URL scheme"),
    ],
)
def test_store_failure_is_one_clean_line(command: list[str], store: str, reason: str) -> None:
    """An unreachable store or a URL no store takes: ``Error: <reason>``, exit 1, no traceback."""
    result = invoke(command, store)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    assert result.output.startswith(f"Error: {reason}")
    assert result.output.count("\n") == 1


def test_a_file_that_is_no_database_is_one_clean_line(tmp_path: Path) -> None:
    """A store URL naming a file that is not a SQLite database fails cleanly too."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database, " * 100)
    result = run("keys", "show", "--store", f"sqlite:///{path}", "k")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: ")
    assert result.output.count("\n") == 1


def test_unreachable_store_from_a_real_process() -> None:
    """As an operator runs it: stderr is exactly one line, stdout is empty, the status is 1."""
    code = "import sys; from idempo.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "purge", "--store", UNREACHABLE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("Error: cannot connect to the MariaDB store")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


# -- every command prints JSON too ------------------------------------------------------------


def test_keys_show_as_json(url: str) -> None:
    """``keys show --format json``: the record's fields, times in Unix seconds, no token."""
    result = run("keys", "show", "--store", url, "--scope", "s", "k-1", "--format", "json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["scope"] == "s"
    assert shown["key"] == "k-1"
    assert shown["state"] == "completed"
    assert shown["outcome_bytes"] == 7
    assert shown["lease_until"] is None
    assert shown["created_at"] == pytest.approx(time.time(), abs=60)
    assert shown["expires_at"] == pytest.approx(shown["created_at"] + 3600, abs=1)
    assert "token" not in shown


def test_keys_delete_purge_and_migrate_as_json(url: str) -> None:
    """``keys delete``, ``purge`` and ``migrate`` print one JSON object each with --format json."""
    result = run("keys", "delete", "--store", url, "--scope", "s", "k-1", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"deleted": True, "scope": "s", "key": "k-1"}
    result = run("purge", "--store", url, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"purged": 0}
    result = run("migrate", "--store", url, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"migrated": True}


def test_a_store_error_in_json_format_is_still_one_clean_line() -> None:
    """With --format json a failure prints nothing on stdout: one ``Error:`` line, exit 1."""
    result = run("stats", "--store", UNREACHABLE, "--format", "json")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot connect to the MariaDB store")


# -- keys list and stats, on every store --------------------------------------------------------


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The kind of store under test, one of conftest.STORE_KINDS."""
    return str(request.param)


@pytest.fixture
def populated(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """An isolated store of ``kind`` that the CLI opens for any URL; it holds, in scopes cli-a
    and cli-b: in progress a-1, a-2 (its lease run out, with a recovery point) and b-3;
    completed a-4 and b-5; and b-6 expired (completed with a 50 ms TTL, waited out)."""
    url, options = store_url(kind, tmp_path)
    store = open_store(url, **options)
    # The CLI takes a URL; the test's isolation (a prefix, a schema, a table) is an option, so
    # whatever URL it is given (UNDER_TEST) the CLI opens this store, options included (the
    # in-process memory store: this very object).
    if kind == "memory":
        monkeypatch.setattr("idempo.cli.open_store", lambda _url: store)
    else:
        monkeypatch.setattr("idempo.cli.open_store", lambda _url: open_store(url, **options))
    try:
        claims = {
            ("cli-a", "a-1"): 30.0,
            ("cli-a", "a-2"): 0.05,
            ("cli-b", "b-3"): 30.0,
            ("cli-a", "a-4"): 30.0,
            ("cli-b", "b-5"): 30.0,
            ("cli-b", "b-6"): 30.0,
        }
        for (scope, key), lease in claims.items():
            store.claim(scope, key, "fp", f"t-{key}", lease=lease, ttl=3600)
        store.set_recovery_point("cli-a", "a-2", "t-a-2", b'{"v":1,"results":{}}', lease=0.05)
        for scope, key in (("cli-a", "a-4"), ("cli-b", "b-5")):
            store.complete(scope, key, f"t-{key}", b"done", ttl=3600)
        store.complete("cli-b", "b-6", "t-b-6", b"done", ttl=0.05)
        time.sleep(0.2)  # b-6 expires and a-2's lease runs out, by the store's clock
        yield store
    finally:
        store.close()
        cleanup(kind, options)


UNDER_TEST = "store://under-test"  # the populated fixture's store, whatever this says
LIVE = {
    ("cli-a", "a-1", "in_progress"),
    ("cli-a", "a-2", "in_progress"),
    ("cli-b", "b-3", "in_progress"),
    ("cli-a", "a-4", "completed"),
    ("cli-b", "b-5", "completed"),
}


def listed(*args: str) -> list[dict[str, Any]]:
    result = run("keys", "list", "--store", UNDER_TEST, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    items: list[dict[str, Any]] = json.loads(result.output)
    return items


def test_keys_list_as_json_on_every_store(populated: Store) -> None:
    """``keys list --format json``: every live record once, with DESIGN §7's fields."""
    items = listed()
    assert {(i["scope"], i["key"], i["state"]) for i in items} == LIVE
    assert len(items) == len(LIVE)
    now = time.time()
    for item in items:
        assert item["created_at"] == pytest.approx(now, abs=60)
        assert item["expires_at"] == pytest.approx(item["created_at"] + 3600, abs=1)
        assert "token" not in item
        assert "outcome" not in item
    (stalled,) = [i for i in items if i["key"] == "a-2"]
    assert stalled["recovery_point"] is True
    assert stalled["lease_until"] < now + 1


def test_keys_list_filters_on_every_store(populated: Store) -> None:
    """--state, --scope and --limit narrow the listing (--limit 0 lists everything)."""
    done = {(i["scope"], i["key"]) for i in listed("--state", "completed")}
    assert done == {("cli-a", "a-4"), ("cli-b", "b-5")}
    flight = {(i["scope"], i["key"]) for i in listed("--state", "in_progress", "--scope", "cli-a")}
    assert flight == {("cli-a", "a-1"), ("cli-a", "a-2")}
    assert {i["key"] for i in listed("--scope", "cli-b")} == {"b-3", "b-5"}
    assert len(listed("--limit", "2")) == 2
    assert len(listed("--limit", "0")) == len(LIVE)
    assert listed("--scope", "nobody") == []
    assert listed("--older-than", "3600") == []


def test_keys_list_as_a_table_on_every_store(populated: Store) -> None:
    """The table for people: one row per record, the stalled lease shown as run out."""
    result = run("keys", "list", "--store", UNDER_TEST)
    assert result.exit_code == 0, result.output
    for scope, key, state in LIVE:
        line = next(line for line in result.output.splitlines() if f" {key} " in line)
        assert scope in line
        assert state in line
    assert "b-6" not in result.output  # expired
    (stalled,) = [line for line in result.output.splitlines() if " a-2 " in line]
    assert "ran out" in stalled
    assert "yes" in stalled  # the recovery point


def test_keys_list_says_when_it_stopped_at_the_limit(populated: Store) -> None:
    """A table cut at --limit says so on stderr (a script reading stdout is not disturbed)."""
    result = CliRunner().invoke(main, ["keys", "list", "--store", UNDER_TEST, "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "the first 2" in result.stderr
    assert "the first 2" not in result.stdout


def test_stats_on_every_store(kind: str, populated: Store) -> None:
    """``stats --format json``: DESIGN §7's counts, exact on an isolated store."""
    result = run("stats", "--store", UNDER_TEST, "--format", "json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert counts["in_progress"] == 3
    assert counts["stalled"] == 1
    assert counts["completed"] == 2
    if kind == "redis":  # Redis may have deleted the expired key already
        assert counts["expired"] in (0, 1)
    else:
        assert counts["expired"] == 1
    assert 0.15 <= counts["oldest_in_progress_age"] < 60
    table = run("stats", "--store", UNDER_TEST)
    assert table.exit_code == 0, table.output
    assert "stalled" in table.output
    (line,) = [line for line in table.output.splitlines() if "completed" in line]
    assert " 2 " in line


# -- recover --stalled ------------------------------------------------------------------------


# A memory store dies with its process: there is nothing to recover from one.
DURABLE_KINDS = [p for p in STORE_KINDS if p.values != ("memory",)]


@pytest.fixture(params=DURABLE_KINDS)
def stalled_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, Any]]]:
    """tests.stalled_target's store (URL, options), from which the CLI finds stalled ones."""
    kind = str(request.param)
    url, options = store_url(kind, tmp_path)
    monkeypatch.setenv("IDEMPO_STALLED_STORE", url)
    monkeypatch.setenv("IDEMPO_STALLED_OPTIONS", json.dumps(options))
    monkeypatch.setattr("idempo.cli.open_store", lambda u: open_store(u, **options))
    stalled_target.RUNS.clear()
    try:
        yield url, options
    finally:
        cleanup(kind, options)


def test_recover_stalled_on_every_store(
    stalled_env: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recover --stalled`` finds the operations whose second phase failed, in every scope,
    and resumes each after its first phase; a second run finds nothing."""
    monkeypatch.setenv("IDEMPO_STALLED_FAIL", "1")
    for scope, key in (("", "o-1"), ("tenant", "o-2")):
        with pytest.raises(RuntimeError, match="courier"):
            stalled_target.ship(key, scope=scope)
    url, options = stalled_env
    with contextlib.closing(open_store(url, **options)) as store:
        store.claim("", "busy", "fp", "t", lease=30, ttl=60)  # in flight, live: not stalled
    monkeypatch.setenv("IDEMPO_STALLED_FAIL", "0")
    target = "tests.stalled_target:ship"
    result = run("recover", "--call", target, "--stalled", "--store", url, "--format", "json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.output)
    assert sorted((d["scope"], d["key"], d["done"]) for d in done) == [
        ("", "o-1", True),
        ("tenant", "o-2", True),
    ]
    assert {d["result"] for d in done} == {"shipped o-1", "shipped o-2"}
    assert stalled_target.RUNS["charge /o-1"] == 1  # resumed after the recovery point
    assert stalled_target.RUNS["charge tenant/o-2"] == 1
    assert stalled_target.RUNS["send /o-1"] == 2
    again = run("recover", "--call", target, "--stalled", "--store", url)
    assert again.exit_code == 0, again.output
    assert again.output == "no stalled operations\n"


def test_recover_stalled_keeps_to_the_scope_a_function_can_serve(
    stalled_env: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function without ``scope=`` serves the empty scope (or --scope's) only: the stalled
    operation of another scope is left alone, never run under the wrong scope."""
    monkeypatch.setenv("IDEMPO_STALLED_FAIL", "1")
    for scope, key in (("", "o-1"), ("tenant", "o-2")):
        with pytest.raises(RuntimeError):
            stalled_target.ship(key, scope=scope)
    monkeypatch.setenv("IDEMPO_STALLED_FAIL", "0")
    url, _ = stalled_env
    target = "tests.stalled_target:ship_unscoped"
    result = run("recover", "--call", target, "--stalled", "--store", url)
    assert result.exit_code == 0, result.output
    assert result.output == "o-1: done: 'shipped o-1'\n"
    assert stalled_target.RUNS["send tenant/o-2"] == 1  # not run again


def test_recover_stalled_reports_failures(
    stalled_env: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operation that fails again is reported (JSON: done false and the error), exit 1."""
    monkeypatch.setenv("IDEMPO_STALLED_FAIL", "1")
    with pytest.raises(RuntimeError):
        stalled_target.ship("o-1")
    url, _ = stalled_env
    target = "tests.stalled_target:ship"
    result = run("recover", "--call", target, "--stalled", "--store", url, "--format", "json")
    assert result.exit_code == 1
    first, error = result.output.splitlines()
    (report,) = json.loads(first)
    assert report["done"] is False
    assert "courier API down" in report["error"]
    assert error == "Error: 1 of 1 operations did not complete"


def test_recover_passes_scope_only_when_asked(
    stalled_env: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Named KEYs: fn(key) as before; with --scope, fn(key, scope=S), refused (exit 2) for a
    function that takes no scope."""
    monkeypatch.setenv("IDEMPO_STALLED_FAIL", "1")
    with pytest.raises(RuntimeError):
        stalled_target.ship("o-2", scope="tenant")
    monkeypatch.setenv("IDEMPO_STALLED_FAIL", "0")
    target = "tests.stalled_target:ship"
    result = run("recover", "--call", target, "--scope", "tenant", "o-2")
    assert result.exit_code == 0, result.output
    assert result.output == "o-2: done: 'shipped o-2'\n"
    assert stalled_target.RUNS["charge tenant/o-2"] == 1
    refused = run("recover", "--call", "tests.stalled_target:ship_unscoped", "--scope", "t", "k")
    assert refused.exit_code == 2
    assert "takes no scope= argument" in refused.output


def test_recover_needs_keys_or_stalled_and_a_store() -> None:
    """KEYs and --stalled exclude each other; --stalled needs --store: usage errors, exit 2."""
    target = "tests.stalled_target:ship"
    for args, message in [
        ([], "name the KEYs to recover, or pass --stalled"),
        (["--stalled", "--store", "memory://", "k"], "not both"),
        (["--stalled"], "--stalled needs --store URL"),
    ]:
        result = run("recover", "--call", target, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output


# -- as an operator runs it ---------------------------------------------------------------------


def test_keys_list_and_stats_from_a_real_process(url: str) -> None:
    """The installed entry point in a real process: stdout is the JSON alone, exit 0."""
    code = "import sys; from idempo.cli import main; sys.exit(main())"
    outputs = []
    for command in (["keys", "list"], ["stats"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *command, "--store", url, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        outputs.append(json.loads(done.stdout))
    records, counts = outputs
    assert [(r["scope"], r["key"], r["state"]) for r in records] == [("s", "k-1", "completed")]
    assert (counts["in_progress"], counts["completed"], counts["expired"]) == (0, 1, 0)
