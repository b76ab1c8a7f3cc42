"""Every file in examples/ runs and prints what its guide says it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "decorator.py": ["effects: 1", "refused:"],
    "transactional_sqlite.py": ["rows: 1"],
    "phases_sqlite.py": ["first attempt failed", "provider charges: 1", "orders: 1"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    """The example exits 0 and shows exactly-once effects."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for line in EXPECTED[name]:
        assert line in out.stdout


def test_every_example_is_tested() -> None:
    """No example goes untested."""
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)
