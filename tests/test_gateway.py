"""The gateway end to end: every DESIGN section 6 row, and the proxying, over real sockets in
front of a Node upstream that counts its executions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_rig import Gateway, Upstream, free_port, gateway, upstream

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[timeouts]
read = 1.0

[limits]
max_request_bytes = 65536
max_stored_bytes = 1048576
max_response_bytes = 4194304
max_header_bytes = 8192

[[routes]]
path = "/required/*"
required = true
"""


@pytest.fixture(scope="module")
def node() -> Iterator[Upstream]:
    with upstream() as up:
        yield up


@pytest.fixture(scope="module")
def gw(node: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway(node.url, "memory://", tmp_path=tmp_path_factory.mktemp("gw"), config=CONFIG) as g:
        yield g


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        yield c


def new_key() -> str:
    return uuid.uuid4().hex


def problem(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == response.status_code
    assert str(body["type"]).startswith("urn:idempo:problem:")
    assert body["title"]
    return dict(body)


# -- DESIGN section 6, row by row ----------------------------------------------------------


def test_new_key_executes_and_answers_normally(client: httpx.Client, node: Upstream) -> None:
    """A POST with a new key runs on the upstream once and gets the upstream's answer."""
    key = new_key()
    r = client.post("/orders", headers={"Idempotency-Key": key}, json={"amount": 5})
    assert r.status_code == 201
    assert r.json()["key"] == key
    assert "idempotent-replayed" not in r.headers
    assert node.executions(key) == 1


def test_completed_key_replays_status_body_and_safe_headers(
    client: httpx.Client, node: Upstream
) -> None:
    """The same key and body again is replayed with the marker, without running again."""
    key = new_key()
    first = client.post("/orders", headers={"Idempotency-Key": key}, json={"amount": 5})
    again = client.post("/orders", headers={"Idempotency-Key": key}, json={"amount": 5})
    assert again.status_code == first.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-order"] == first.headers["x-order"]
    assert "set-cookie" in first.headers
    assert "set-cookie" not in again.headers  # never replayed from storage
    assert "date" in again.headers
    assert node.executions(key) == 1


def test_key_in_flight_gets_409_with_retry_after(client: httpx.Client, node: Upstream) -> None:
    """A duplicate while the first request still runs gets 409, Retry-After and problem+json."""
    key = new_key()
    results: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: results.append(
            client.post("/hold", headers={"Idempotency-Key": key}, content=b"x")
        )
    )
    first.start()
    node.control(f"/_arrived?key={key}")
    try:
        dup = client.post("/hold", headers={"Idempotency-Key": key}, content=b"x")
        assert dup.status_code == 409
        assert int(dup.headers["retry-after"]) >= 1
        problem(dup)
    finally:
        node.control(f"/_release?key={key}")
        first.join(20)
    assert results[0].status_code == 201
    assert node.executions(key) == 1


def test_key_in_flight_waits_when_configured(node: Upstream, tmp_path: Path) -> None:
    """With wait set, a duplicate in flight waits for the first and gets its replay."""
    key = new_key()
    with gateway(node.url, "memory://", tmp_path=tmp_path, config="wait = 20\n") as g:
        results: list[httpx.Response] = []

        def post() -> None:
            results.append(
                httpx.post(g.url + "/hold", headers={"Idempotency-Key": key}, timeout=30)
            )

        first = threading.Thread(target=post)
        first.start()
        node.control(f"/_arrived?key={key}")
        second = threading.Thread(target=post)
        second.start()
        node.control(f"/_release?key={key}")
        first.join(30)
        second.join(30)
    assert sorted(r.status_code for r in results) == [201, 201]
    assert sorted(r.headers.get("idempotent-replayed", "") for r in results) == ["", "true"]
    assert node.executions(key) == 1


def test_same_key_other_body_gets_422(client: httpx.Client, node: Upstream) -> None:
    """The same key with another body is refused with 422 problem+json."""
    key = new_key()
    client.post("/orders", headers={"Idempotency-Key": key}, json={"amount": 5})
    other = client.post("/orders", headers={"Idempotency-Key": key}, json={"amount": 6})
    assert other.status_code == 422
    problem(other)
    assert node.executions(key) == 1


def test_missing_key_on_a_required_route_gets_400(client: httpx.Client, node: Upstream) -> None:
    """A route the file marks required answers 400 problem+json to a POST without a key."""
    before = node.stats()["total"]
    r = client.post("/required/charge", json={})
    assert r.status_code == 400
    problem(r)
    assert node.stats()["total"] == before
    assert client.post("/orders", json={}).status_code == 201  # elsewhere: optional


@pytest.mark.parametrize("value", ["", "k" * 256, "ab\x7fc", "caf\xe9", "ab\x01c", '"a', "a,b"])
def test_malformed_key_gets_400(client: httpx.Client, node: Upstream, value: str) -> None:
    """Empty, too long, non-printable and otherwise malformed keys are refused with 400."""
    before = node.stats()["total"]
    r = client.post("/orders", headers=[(b"Idempotency-Key", value.encode("latin-1"))], json={})
    assert r.status_code == 400
    if not any(c in value for c in "\x01\x7f"):  # the HTTP parser refuses these, first
        problem(r)
    assert node.stats()["total"] == before


def test_structured_field_key_with_parameters_is_accepted(
    client: httpx.Client, node: Upstream
) -> None:
    """A Structured Field string with parameters names the same key as the bare one."""
    key = new_key()
    client.post("/orders", headers={"Idempotency-Key": f'"{key}";v=1'}, json={})
    again = client.post("/orders", headers={"Idempotency-Key": key}, json={})
    assert again.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_upstream_5xx_is_not_kept(client: httpx.Client, node: Upstream, status: int) -> None:
    """A 5xx from the upstream releases the key: the retry executes again."""
    key = new_key()
    for _ in range(2):
        r = client.post(f"/status/{status}", headers={"Idempotency-Key": key}, json={})
        assert r.status_code == status
        assert "idempotent-replayed" not in r.headers
    assert node.executions(key) == 2


@pytest.mark.parametrize("status", [401, 403, 408, 409, 425, 429])
def test_transient_and_auth_answers_are_not_kept(
    client: httpx.Client, node: Upstream, status: int
) -> None:
    """Auth, throttling and transient answers do not poison a key."""
    key = new_key()
    for _ in range(2):
        r = client.post(f"/status/{status}", headers={"Idempotency-Key": key}, json={})
        assert r.status_code == status
    assert node.executions(key) == 2


def test_4xx_other_than_transient_is_kept(client: httpx.Client, node: Upstream) -> None:
    """A definite client error (400) is an outcome: replayed, not run again."""
    key = new_key()
    client.post("/status/400", headers={"Idempotency-Key": key}, json={})
    again = client.post("/status/400", headers={"Idempotency-Key": key}, json={})
    assert again.headers["idempotent-replayed"] == "true"
    assert node.executions(key) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
def test_idempotent_methods_pass_through(client: httpx.Client, node: Upstream, method: str) -> None:
    """GET, HEAD, PUT, DELETE and OPTIONS are relayed every time, key or not."""
    key = new_key()
    for _ in range(2):
        r = client.request(method, "/echo", headers={"Idempotency-Key": key})
        assert r.status_code == 200
        assert "idempotent-replayed" not in r.headers
    assert node.executions(key) == 2


def test_store_down_answers_503_with_retry_after(node: Upstream, tmp_path: Path) -> None:
    """With the store unreachable, a guarded request gets 503 and Retry-After (fail closed)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with gateway(node.url, dead, tmp_path=tmp_path) as g:
        key = new_key()
        r = httpx.post(g.url + "/orders", headers={"Idempotency-Key": key}, json={}, timeout=20)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        problem(r)
        assert httpx.get(g.admin + "/readyz", timeout=20).status_code == 503
        assert httpx.get(g.admin + "/healthz").status_code == 200
    assert node.executions(key) == 0


# -- proxying ------------------------------------------------------------------------------


def test_hop_by_hop_headers_are_removed_and_forwarded_added(client: httpx.Client) -> None:
    """Connection and the headers it names stay on their hop; Forwarded and X-Forwarded-* go."""
    r = client.get(
        "/echo",
        headers={
            "Connection": "keep-alive, x-secret-hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-Forwarded-For": "203.0.113.9",
            "Forwarded": "for=203.0.113.9",
            "X-Custom": "kept",
            "User-Agent": "probe/1",
            "Accept-Encoding": "identity",
        },
    )
    seen = r.json()["headers"]
    assert "x-secret-hop" not in seen
    assert "keep-alive" not in seen
    assert "te" not in seen
    assert seen["x-custom"] == "kept"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == client.base_url.netloc.decode()
    assert seen["forwarded"].startswith("for=203.0.113.9, for=127.0.0.1;proto=http;host=")
    # The proxy's client library adds or replaces none of its own.
    assert (seen["user-agent"], seen["accept-encoding"]) == ("probe/1", "identity")
    assert "cookie" not in seen


def test_response_hop_by_hop_headers_are_removed(client: httpx.Client) -> None:
    """A header the upstream's Connection names is not relayed to the client."""
    r = client.post("/orders", json={})
    assert r.status_code == 201
    assert "x-hop" not in r.headers


def test_upstream_cookies_are_never_sent_to_another_client(client: httpx.Client) -> None:
    """The proxy keeps no cookie jar: one client's Set-Cookie never reaches the next request."""
    client.post("/orders", json={})
    with httpx.Client(base_url=client.base_url) as other:
        seen = other.get("/echo").json()["headers"]
    assert "cookie" not in seen


def test_upstream_host_by_default(client: httpx.Client, node: Upstream) -> None:
    """The upstream sees its own Host by default, the client's in X-Forwarded-Host."""
    seen = client.get("/echo").json()["headers"]
    assert seen["host"] == node.url.removeprefix("http://")


def test_client_host_when_configured(node: Upstream, tmp_path: Path) -> None:
    """host = "client" passes the client's Host header to the upstream."""
    with gateway(node.url, "memory://", tmp_path=tmp_path, config='host = "client"\n') as g:
        seen = httpx.get(g.url + "/echo", headers={"Host": "shop.example"}).json()["headers"]
    assert seen["host"] == "shop.example"


def test_large_responses_stream_through_and_are_not_kept(
    client: httpx.Client, node: Upstream
) -> None:
    """A response over the stored limit reaches the client whole; a retry gets a clear 409."""
    key = new_key()
    size = 3 * 1024 * 1024
    with client.stream(
        "POST", "/big", params={"bytes": size}, headers={"Idempotency-Key": key}
    ) as r:
        assert r.status_code == 200
        received = sum(len(c) for c in r.iter_bytes())
    assert received == size
    again = client.post("/big", params={"bytes": size}, headers={"Idempotency-Key": key})
    assert again.status_code == 409
    problem(again)
    assert node.executions(key) == 1


def test_request_body_over_the_limit_gets_413(client: httpx.Client, node: Upstream) -> None:
    """Bodies over max_request_bytes are refused with 413, guarded or not."""
    before = node.stats()["total"]
    big = b"x" * 70000
    guarded = client.post("/orders", headers={"Idempotency-Key": new_key()}, content=big)
    assert guarded.status_code == 413
    problem(guarded)
    unguarded = client.put("/echo", content=big)
    assert unguarded.status_code == 413
    problem(unguarded)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 10000

    streamed = client.put("/echo", content=chunks())  # no Content-Length: counted as it comes
    assert streamed.status_code == 413
    assert node.stats()["total"] <= before + 1  # the streamed one may have reached it


def test_request_headers_over_the_limit_get_431(client: httpx.Client, node: Upstream) -> None:
    """Request headers over max_header_bytes are refused before the upstream sees them."""
    r = client.get("/echo", headers={"X-Big": "z" * 9000})
    assert r.status_code == 431
    problem(r)


def test_upstream_headers_over_the_limit_get_502(client: httpx.Client) -> None:
    """An upstream answer whose headers are over the limit is not relayed."""
    r = client.get("/headers", params={"bytes": 9000})
    assert r.status_code == 502
    problem(r)


# -- upstream failures ---------------------------------------------------------------------


def test_upstream_down_gets_502_not_kept_and_retry_executes(tmp_path: Path) -> None:
    """An unreachable upstream answers 502; once it is up, the same key executes."""
    port = free_port()
    with gateway(f"http://127.0.0.1:{port}", "memory://", tmp_path=tmp_path) as g:
        key = new_key()
        down = httpx.post(g.url + "/orders", headers={"Idempotency-Key": key}, json={})
        assert down.status_code == 502
        assert problem(down)["type"] == "urn:idempo:problem:gateway-upstream-unavailable"
        with upstream(port) as node:
            up = httpx.post(g.url + "/orders", headers={"Idempotency-Key": key}, json={})
            assert up.status_code == 201
            assert "idempotent-replayed" not in up.headers
            assert node.executions(key) == 1


def test_slow_upstream_gets_504_not_kept(client: httpx.Client, node: Upstream) -> None:
    """An upstream slower than the read timeout answers 504; the retry is not refused."""
    key = new_key()
    node.control("/_delay?ms=3000")
    try:
        slow = client.post("/orders", headers={"Idempotency-Key": key}, json={})
    finally:
        node.control("/_delay?ms=0")
    assert slow.status_code == 504
    assert problem(slow)["type"] == "urn:idempo:problem:gateway-upstream-timeout"
    retry = client.post("/orders", headers={"Idempotency-Key": key}, json={})
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers


def test_admin_listener(gw: Gateway, client: httpx.Client) -> None:
    """/healthz, /readyz and /metrics answer on the admin port, and only there."""
    assert httpx.get(gw.admin + "/healthz").text == "ok\n"
    assert httpx.get(gw.admin + "/readyz").status_code == 200
    client.post("/orders", headers={"Idempotency-Key": new_key()}, json={})
    metrics = httpx.get(gw.admin + "/metrics").text
    assert "idempo_operations_total" in metrics
    assert httpx.get(gw.admin + "/orders").status_code == 404
