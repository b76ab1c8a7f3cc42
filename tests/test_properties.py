"""Property tests: key validation, fingerprint canonicalization, and the record state machine
(stateful, against the memory store with a fake clock and against real servers)."""

from __future__ import annotations

import inspect
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from idempo.core.fingerprint import canonical_json, fingerprint, fingerprint_call
from idempo.core.keys import MAX_KEY_LENGTH, validate_key
from idempo.core.records import ClaimStatus, State
from idempo.errors import InvalidKeyError, LeaseLostError
from idempo.stores.base import Store
from idempo.stores.memory import MemoryStore
from tests.conftest import cleanup, require_service, store_url

# -- keys -------------------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_key_valid_iff_1_to_255_printable_ascii(key: str) -> None:
    """validate_key accepts exactly the 1-255 character strings of printable ASCII."""
    expected = 1 <= len(key) <= MAX_KEY_LENGTH and all(0x20 <= ord(c) <= 0x7E for c in key)
    if expected:
        assert validate_key(key) == key
    else:
        with pytest.raises(InvalidKeyError):
            validate_key(key)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1))
def test_printable_keys_up_to_the_limit_are_accepted(key: str) -> None:
    """Every printable ASCII string is a key, truncated to the limit."""
    key = key[:MAX_KEY_LENGTH]
    assert validate_key(key) == key


# -- fingerprints -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def _shuffled(value: Any, rnd: random.Random) -> Any:
    """The same JSON value with every object's members in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@given(json_values, st.randoms(use_true_random=False), st.sampled_from([None, 0, 2, "\t"]))
def test_fingerprint_ignores_member_order_and_whitespace(
    value: Any, rnd: random.Random, indent: int | str | None
) -> None:
    """Re-serializing a document with other member order and spacing keeps its fingerprint."""
    text = json.dumps(_shuffled(value, rnd), indent=indent, ensure_ascii=rnd.random() < 0.5)
    assert fingerprint(json.loads(text)) == fingerprint(value)


@given(json_values)
def test_fingerprint_of_integral_floats_equals_ints(value: Any) -> None:
    """1.0 and 1 are the same number (RFC 8785), wherever they appear."""

    def floatify(v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and abs(v) < 2**53:
            return float(v)
        if isinstance(v, dict):
            return {k: floatify(x) for k, x in v.items()}
        if isinstance(v, list):
            return [floatify(x) for x in v]
        return v

    assert fingerprint(floatify(value)) == fingerprint(value)


@given(json_values, json_values)
def test_different_documents_get_different_fingerprints(a: Any, b: Any) -> None:
    """Canonical forms are equal only for equal documents (numbers compared as numbers)."""
    if canonical_json(a) == canonical_json(b):
        assert json.loads(canonical_json(a)) == json.loads(canonical_json(b))
    else:
        assert fingerprint(a) != fingerprint(b)


@given(st.integers(), st.text(), st.booleans())
def test_call_fingerprint_ignores_how_arguments_are_passed(a: int, b: str, c: bool) -> None:
    """Positional, keyword and default-filled calls of one signature fingerprint alike."""

    def f(a: int, b: str, c: bool = False) -> None: ...

    sig = inspect.signature(f)
    forms = [
        ((a, b, c), {}),
        ((a,), {"b": b, "c": c}),
        ((), {"c": c, "b": b, "a": a}),
    ]
    if c is False:
        forms.append(((a, b), {}))
    prints = {fingerprint_call(sig, args, kwargs) for args, kwargs in forms}
    assert len(prints) == 1


def test_bool_and_int_are_different() -> None:
    """true is not 1: JSON says so, and so do we."""
    assert fingerprint(True) != fingerprint(1)
    assert fingerprint({"a": True}) != fingerprint({"a": 1})


# -- the record state machine -----------------------------------------------------------------

LONG = 60.0
SHORT = 0.15  # a lease or TTL the `wait` rule outlives
WAIT = 0.2
KEYS = ["k1", "k2", "k3"]
FINGERPRINTS = ["fp-a", "fp-b"]


@dataclass
class ModelRecord:
    fingerprint: str
    state: State
    token: str | None
    short_lease: bool
    lease_expired: bool = False
    short_ttl: bool = False
    expired: bool = False
    outcome: bytes | None = None
    recovery_point: bytes | None = None
    old_tokens: list[str] = field(default_factory=list)


class RecordMachine(RuleBasedStateMachine):
    """Drives a store and a model of the contract side by side; they must agree at each step.

    Time moves only in the ``wait`` rule, past every short lease and TTL: the model then marks
    them expired. Subclasses provide the store and how to move its clock.
    """

    def make_store(self) -> Store:
        raise NotImplementedError

    def advance(self) -> None:
        raise NotImplementedError

    def teardown_store(self) -> None:
        self.store.close()

    def __init__(self) -> None:
        super().__init__()
        self.scope = f"sm-{uuid.uuid4().hex[:8]}"
        self.model: dict[str, ModelRecord] = {}
        self.stale_tokens: dict[str, list[str]] = {k: [] for k in KEYS}
        self.store = self.make_store()

    def teardown(self) -> None:
        self.teardown_store()

    def _live(self, key: str) -> ModelRecord | None:
        record = self.model.get(key)
        return None if record is None or record.expired else record

    def _pick_token(self, key: str, which: str) -> str:
        record = self._live(key)
        if which == "current" and record is not None and record.token is not None:
            return record.token
        if which == "stale" and self.stale_tokens[key]:
            return self.stale_tokens[key][-1]
        return uuid.uuid4().hex

    @rule(key=st.sampled_from(KEYS), fp=st.sampled_from(FINGERPRINTS), short=st.booleans())
    def claim(self, key: str, fp: str, short: bool) -> None:
        token = uuid.uuid4().hex
        result = self.store.claim(
            self.scope, key, fp, token, lease=SHORT if short else LONG, ttl=LONG
        )
        current = self._live(key)
        if current is None:
            assert result.status is ClaimStatus.ACQUIRED
            assert not result.takeover
            self.model[key] = ModelRecord(fp, State.IN_PROGRESS, token, short)
        elif current.fingerprint != fp:
            assert result.status is ClaimStatus.MISMATCH
            assert result.record.token is None
        elif current.state is State.COMPLETED:
            assert result.status is ClaimStatus.COMPLETED
            assert result.record.outcome == current.outcome
        elif not current.lease_expired:
            assert result.status is ClaimStatus.IN_PROGRESS
            assert result.record.token is None
        else:
            assert result.status is ClaimStatus.ACQUIRED
            assert result.takeover
            assert result.record.recovery_point == current.recovery_point
            assert current.token is not None
            self.stale_tokens[key].append(current.token)
            current.token, current.short_lease, current.lease_expired = token, short, False

    @rule(
        key=st.sampled_from(KEYS),
        which=st.sampled_from(["current", "stale", "random"]),
        short_ttl=st.booleans(),
    )
    def complete(self, key: str, which: str, short_ttl: bool) -> None:
        token = self._pick_token(key, which)
        outcome = f"outcome-{uuid.uuid4().hex[:6]}".encode()
        current = self._live(key)
        holds = (
            current is not None and current.state is State.IN_PROGRESS and current.token == token
        )
        if holds:
            assert current is not None
            self.store.complete(self.scope, key, token, outcome, ttl=SHORT if short_ttl else LONG)
            current.state, current.outcome, current.short_ttl = State.COMPLETED, outcome, short_ttl
            current.token = None
        else:
            with pytest.raises(LeaseLostError):
                self.store.complete(self.scope, key, token, outcome, ttl=LONG)

    @rule(key=st.sampled_from(KEYS), which=st.sampled_from(["current", "stale", "random"]))
    def extend(self, key: str, which: str) -> None:
        token = self._pick_token(key, which)
        current = self._live(key)
        holds = (
            current is not None and current.state is State.IN_PROGRESS and current.token == token
        )
        if holds:
            assert current is not None
            self.store.set_recovery_point(
                self.scope, key, token, b"rp-" + token[:4].encode(), lease=LONG
            )
            current.short_lease, current.lease_expired = False, False
            current.recovery_point = b"rp-" + token[:4].encode()
        else:
            with pytest.raises(LeaseLostError):
                self.store.extend(self.scope, key, token, lease=LONG)

    @rule(key=st.sampled_from(KEYS), which=st.sampled_from(["current", "stale", "random"]))
    def release(self, key: str, which: str) -> None:
        token = self._pick_token(key, which)
        current = self._live(key)
        holds = (
            current is not None and current.state is State.IN_PROGRESS and current.token == token
        )
        assert self.store.release(self.scope, key, token) is holds
        if holds:
            del self.model[key]

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        assert self.store.delete(self.scope, key) is (self._live(key) is not None)
        self.model.pop(key, None)

    @rule()
    def wait(self) -> None:
        self.advance()
        for record in self.model.values():
            if record.state is State.IN_PROGRESS and record.short_lease:
                record.lease_expired = True
            if record.state is State.COMPLETED and record.short_ttl:
                record.expired = True

    @invariant()
    def records_agree(self) -> None:
        for key in KEYS:
            stored = self.store.get(self.scope, key)
            expected = self._live(key)
            if expected is None:
                assert stored is None, (key, stored)
                continue
            assert stored is not None, key
            assert stored.state is expected.state
            assert stored.fingerprint == expected.fingerprint
            assert stored.outcome == expected.outcome
            assert stored.token is None
            if expected.state is State.IN_PROGRESS:
                assert stored.recovery_point == expected.recovery_point


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class MemoryRecordMachine(RecordMachine):
    def make_store(self) -> Store:
        self.clock = FakeClock()
        return MemoryStore(clock=self.clock)

    def advance(self) -> None:
        self.clock.now += WAIT


TestMemoryRecordMachine = MemoryRecordMachine.TestCase
TestMemoryRecordMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def _real_machine(kind: str) -> type[RecordMachine]:
    class RealRecordMachine(RecordMachine):
        """Against the real server: time moves by sleeping past the short durations."""

        def make_store(self) -> Store:
            from idempo import open_store

            self.tmp = Path(f"/tmp/idempo-sm-{uuid.uuid4().hex}")
            self.tmp.mkdir()
            url, self.options = store_url(kind, self.tmp)
            return open_store(url, **self.options)

        def advance(self) -> None:
            time.sleep(WAIT)

        def teardown_store(self) -> None:
            self.store.close()
            cleanup(kind, self.options)
            for p in self.tmp.iterdir():
                p.unlink()
            self.tmp.rmdir()

    RealRecordMachine.__name__ = f"{kind.title()}RecordMachine"
    return RealRecordMachine


_REAL_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_record_machine_on_real_store(kind: str) -> None:
    """The stateful model agrees with the real store, sleeping real time past short leases."""
    require_service(kind)
    case = _real_machine(kind).TestCase
    case.settings = _REAL_SETTINGS
    case().runTest()


# HTTP bodies come from JSON parsing alone, so no tagged type can occur in them and the fast path
# needs no "$" escaping; compare it with the general fingerprint on documents without "$" keys.
http_json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=8).filter(lambda k: not k.startswith("$")), children, max_size=5
        )
    ),
    max_leaves=30,
)


@given(http_json_values, st.randoms(use_true_random=False))
def test_request_fingerprint_matches_the_canonical_fingerprint(
    value: Any, rnd: random.Random
) -> None:
    """The HTTP fast path (numbers canonicalized while parsing) gives exactly the fingerprint
    of the general canonicalizer, for any document and any serialization of it."""
    from idempo.core.http import fingerprint_request

    body = json.dumps(_shuffled(value, rnd), indent=rnd.choice([None, 2])).encode()
    expected = fingerprint(
        {"method": "POST", "path": "/p", "query": "a=1&b=2", "body": {"json": value}}
    )
    assert fingerprint_request("post", "/p", "b=2&a=1", body, "application/json") == expected


@pytest.mark.parametrize(
    "body",
    [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e999}', b'"\\ud800"', b"\xff\xfe", b"[" * 5000],
)
def test_request_fingerprint_never_fails_on_odd_json(body: bytes) -> None:
    """Bodies that are not strict JSON are fingerprinted by their bytes, never an error."""
    from idempo.core.http import fingerprint_request

    a = fingerprint_request("POST", "/p", "", body, "application/json")
    assert a == fingerprint_request("POST", "/p", "", body, "application/json")
    assert a != fingerprint_request("POST", "/p", "", body + b" ", "application/json")


def test_tagged_types_and_dollar_keys_do_not_collide() -> None:
    """bytes and a dict that spells its tag are different; so are {1: a} and {"1": a}
    merged; a self-containing value is a clear error."""
    from idempo.errors import FingerprintError

    assert fingerprint(b"a") != fingerprint({"$bytes": "YQ=="})
    assert fingerprint({"$set": [1]}) != fingerprint({1})
    with pytest.raises(FingerprintError, match="two keys"):
        fingerprint({1: "a", "1": "b"})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(FingerprintError, match="contains itself"):
        fingerprint(loop)


@given(
    st.sampled_from(["post", "PATCH", "pOsT"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=3),
    http_json_values,
)
def test_request_fingerprint_spells_method_path_and_query_canonically(
    method: str, path: str, query: list[tuple[str, str]], value: Any
) -> None:
    """The HTTP fast path builds the outer document by hand: any path (quotes, backslashes,
    control characters, non-ASCII) and query give the general canonicalizer's fingerprint."""
    from urllib.parse import parse_qsl, urlencode

    from idempo.core.http import fingerprint_request

    raw_query = urlencode(query)
    canonical_query = (
        urlencode(sorted(parse_qsl(raw_query, keep_blank_values=True))) if raw_query else ""
    )
    body = json.dumps(value).encode()
    request = {"method": method.upper(), "path": path, "query": canonical_query}
    expected = fingerprint({**request, "body": {"json": value}})
    assert fingerprint_request(method, path, raw_query, body, "application/json") == expected
