"""HTTP semantics in core, without a server: the key header (an RFC 9651 Item), scopes,
replayed headers and problem+json answers."""

from __future__ import annotations

import json

import pytest

from idempo.core.http import (
    HeaderFilter,
    HttpConfig,
    ResponseCapture,
    decode_response,
    encode_response,
    outcome_for,
    parse_key_header,
    problem,
    scope_from_credentials,
)
from idempo.core.outcome import Keep, decode
from idempo.errors import (
    IdempoError,
    IncompleteBodyError,
    InProgressError,
    InvalidKeyError,
    KeyReuseError,
    LeaseLostError,
    MissingKeyError,
    OutcomeNotStoredError,
    RequestTooLargeError,
    StoreError,
    StoreUnavailableError,
)


@pytest.mark.parametrize(
    ("wire", "key"),
    [
        ('"k1"', "k1"),
        ('"k1";v=1', "k1"),  # parameters are valid RFC 9651 and ignored
        ('"k1";a;b="x"', "k1"),
        ('  "k1"\t', "k1"),
        (r'"a\"b\\c"', 'a"b\\c'),  # escapes undone
        ("k1", "k1"),  # bare, leniently
        ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
        ("7", "7"),
    ],
)
def test_keys_that_parse(wire: str, key: str) -> None:
    """Strings (with or without parameters and escapes) and bare keys give the key."""
    assert parse_key_header([wire]) == key


@pytest.mark.parametrize(
    "wire",
    [
        '"',  # a lone quote was accepted as the key '"'
        '"a',  # unterminated
        '"a" b',  # text after the string
        '"a";',  # a dangling parameter delimiter
        '""',  # empty
        'a"b',  # a bare key with a quote: `"abc"` and `abc` would be ambiguous
        "a,b",  # two values joined by a WSGI server
        '"' + "x" * 256 + '"',  # too long
        '"caf\xe9"',  # not ASCII
        "",
    ],
)
def test_keys_that_are_refused(wire: str) -> None:
    """Malformed fields are InvalidKeyError (400), never a key."""
    with pytest.raises(InvalidKeyError):
        parse_key_header([wire])


def test_absent_and_repeated_headers() -> None:
    """No header is no key; two headers are malformed."""
    assert parse_key_header([]) is None
    with pytest.raises(InvalidKeyError):
        parse_key_header(['"a"', '"b"'])


# -- scopes --------------------------------------------------------------------------------


def test_session_cookies_isolate_principals_by_default() -> None:
    """Two users of a cookie-session app (Starlette/Flask ``session``, Django ``sessionid``) with
    no Authorization header get different scopes; credentials win over cookies; other cookies
    do not move a request into another scope."""
    scope = scope_from_credentials("s3cret", cookies=("session", "sessionid"))
    alice = scope({"cookie": "session=alice; theme=dark"})
    bob = scope({"cookie": "session=bob"})
    assert alice != bob
    assert alice.startswith("principal:")
    assert scope({"cookie": "theme=light; session=alice"}) == alice  # other cookies ignored
    assert scope({"cookie": "sessionid=carol"}) not in (alice, bob, "anonymous")
    assert scope({"cookie": "theme=dark"}) == "anonymous"
    assert scope({}) == "anonymous"
    token = scope({"authorization": "Bearer t", "cookie": "session=alice"})
    assert token == scope({"authorization": "Bearer t"})  # credentials first
    assert "alice" not in alice
    assert "s3cret" not in alice


def test_scope_secret_keys_the_hash() -> None:
    """The same credentials under another secret are another scope (offline guessing needs
    the secret)."""
    headers = {"authorization": "Basic dXNlcjpwYXNz"}
    one = scope_from_credentials("s3cret")(headers)
    assert one == scope_from_credentials(b"s3cret")(headers)
    assert one != scope_from_credentials("other")(headers)


# -- replayed headers -------------------------------------------------------------------------


def kept_headers(filter_: HeaderFilter, headers: list[tuple[str, str]]) -> list[str]:
    stored = decode_response(encode_response(201, headers, b"{}", filter_))
    return [name for name, _ in stored.headers]


HANDLER_HEADERS = [
    ("Content-Type", "application/json"),
    ("X-Charge-Id", "ch_1"),
    ("X-Secret-Token", "tok_live_123"),
    ("Set-Cookie", "session=a"),
    ("Date", "Tue, 01 Dec 2026 10:00:00 GMT"),
    ("X-Request-Id", "r1"),
    ("Connection", "keep-alive"),
    ("Location", "/charges/ch_1"),
]


def test_secrets_and_per_response_headers_are_not_replayed_by_default() -> None:
    """A handler's secret-looking and per-response headers are never stored; its own
    application headers are."""
    assert kept_headers(HeaderFilter(), HANDLER_HEADERS) == [
        "Content-Type",
        "X-Charge-Id",
        "Location",
    ]


def test_deny_and_allow_lists_are_configurable() -> None:
    """replay_deny replaces the default deny list; replay_allow keeps only what it names;
    cookies and hop-by-hop headers are never stored either way."""
    deny = HttpConfig.of({"replay_deny": ["x-charge-*"]}).headers_kept
    assert "X-Charge-Id" not in kept_headers(deny, HANDLER_HEADERS)
    assert "X-Secret-Token" in kept_headers(deny, HANDLER_HEADERS)
    allow = HttpConfig.of({"replay_allow": ["content-type", "set-cookie", "connection"]})
    assert kept_headers(allow.headers_kept, HANDLER_HEADERS) == ["Content-Type"]
    with pytest.raises(TypeError):
        HttpConfig.of({"replay_deny": "x-secret"})


def test_a_kept_response_drops_secrets_at_the_store() -> None:
    """The filter applies when the response is recorded: the secret never reaches the store."""
    capture = ResponseCapture(1000)
    capture.start(201, HANDLER_HEADERS)
    capture.add(b"{}")
    outcome = outcome_for(HttpConfig(), capture)
    assert isinstance(outcome, Keep)
    assert b"tok_live_123" not in outcome.data


# -- problem+json ---------------------------------------------------------------------------


CASES: list[tuple[IdempoError, int, str]] = [
    (InvalidKeyError("x"), 400, "invalid-key"),
    (MissingKeyError("x"), 400, "key-required"),
    (IncompleteBodyError("x"), 400, "incomplete-body"),
    (RequestTooLargeError("x"), 413, "request-too-large"),
    (KeyReuseError("x"), 422, "key-reused"),
    (InProgressError("x", retry_after=2.5), 409, "in-progress"),
    (OutcomeNotStoredError("x"), 409, "response-not-stored"),
    (StoreUnavailableError("x"), 503, "store-unavailable"),
    (StoreError("x"), 500, "store-error"),
    (LeaseLostError("x"), 500, "lease-lost"),
]


@pytest.mark.parametrize(("error", "status", "name"), CASES, ids=[c[2] for c in CASES])
def test_each_problem_has_its_own_type_and_a_stable_title(
    error: IdempoError, status: int, name: str
) -> None:
    """RFC 9457: about:blank would mean the title is the status phrase; each case has a type URI
    of its own instead (base configurable), and a title that does not vary with the detail."""
    response = problem(error, instance="/charges")
    doc = json.loads(response.body)
    assert response.status == doc["status"] == status
    assert doc["type"] == f"urn:idempo:problem:{name}"
    assert doc["title"] == type(error).title
    assert doc["instance"] == "/charges"
    assert ("content-type", "application/problem+json") in response.headers
    custom = json.loads(problem(error, type_base="https://api.example/problems/").body)
    assert custom["type"] == f"https://api.example/problems/{name}"


def test_problems_that_say_when_to_retry_carry_retry_after() -> None:
    """409 in progress and 503 store unavailable tell the client when to come back."""
    assert ("retry-after", "3") in problem(InProgressError("x", retry_after=2.5)).headers
    assert ("retry-after", "1") in problem(StoreUnavailableError("x")).headers
    assert not any(k == "retry-after" for k, _ in problem(KeyReuseError("x")).headers)
    final = problem(OutcomeNotStoredError("x")).headers  # a 409 that cannot change
    assert not any(k == "retry-after" for k, _ in final)
    assert ("stripe-should-retry", "false") in final
    assert not any(k == "stripe-should-retry" for k, _ in problem(InProgressError("x")).headers)


def test_outcome_envelope_round_trip() -> None:
    """A kept response decodes back to status, kept headers and body."""
    capture = ResponseCapture(1000)
    capture.start(201, [("content-type", "application/json")])
    capture.add(b'{"ok":1}')
    outcome = outcome_for(HttpConfig(), capture)
    assert isinstance(outcome, Keep)
    from idempo.core.http import RESPONSE_SERIALIZER

    stored = decode_response(decode(RESPONSE_SERIALIZER, outcome.data))
    assert (stored.status, stored.headers, stored.body) == (
        201,
        [("content-type", "application/json")],
        b'{"ok":1}',
    )
