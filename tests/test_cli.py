"""The ``idempo`` operator commands over a store URL: what they print, and how they fail.

A failure of the store (unreachable, a bad URL, a missing schema) is a one-line ``Error: ...``
and exit status 1, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from idempo import open_store
from idempo.cli import main

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
]


def invoke(command: list[str], store: str) -> Result:
    args = [*command, "--store", store]
    if command[0] == "keys":
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
