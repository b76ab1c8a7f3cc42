"""The shared row reader of the SQL stores (and of Redis, once decoded)."""

from __future__ import annotations

from typing import Any

import pytest

from idempo.core.records import State
from idempo.errors import StoreError
from idempo.stores._rows import RECORD_FORMAT, record


def _row(state: Any) -> tuple[Any, ...]:
    return ("fp", state, None, None, b"out", None, 1.0, 2.0, RECORD_FORMAT)


@pytest.mark.parametrize("state", list(State))
def test_known_states_become_members(state: State) -> None:
    got = record("s", "k", _row(state.value))
    assert got.state is state
    assert got.outcome == b"out"


@pytest.mark.parametrize("state", ["bogus", b"completed", None, ["completed"], bytearray(b"x")])
def test_any_other_state_is_a_store_error(state: Any) -> None:
    with pytest.raises(StoreError, match="corrupt record"):
        record("s", "k", _row(state))
