"""``idempo check URL`` against real servers over real sockets on 127.0.0.1.

Three kinds of target: a raw upstream written in Node.js that knows nothing of keys (it fails
``replay``), the test app behind idempo's own middleware in every adapter (it passes), and an
app whose handler holds until its duplicates were answered, so that 409s are certain. The
gateway's row is added where ``idempo gateway`` lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import idempo.asgi
from idempo.check import Answer, Target, plan
from idempo.cli import main
from idempo.stores.memory import AsyncMemoryStore, MemoryStore
from tests.http_rig import ADAPTERS, StoreSpec, serve_asgi, serve_http

IDEMPO = str(Path(sys.executable).with_name("idempo"))
BODY = '{"amount": 5}'

# A service that knows nothing of idempotency keys: every request runs. It logs what it
# received, served on /__requests (which it does not log), so a test can see exactly what the
# checker sent.
RAW_UPSTREAM_JS = r"""
const http = require("http");
const log = [];
let orders = 0;
const server = http.createServer((req, res) => {
  if (req.url === "/__requests") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(log));
    return;
  }
  let body = "";
  req.on("data", (chunk) => { body += chunk; });
  req.on("end", () => {
    log.push({ method: req.method, url: req.url, key: req.headers["idempotency-key"] ?? null,
               body });
    if (req.url === "/hang") return;  // never answers
    if (req.url === "/denied") {
      res.writeHead(401, { "content-type": "application/json" });
      res.end('{"error": "no credentials"}');
      return;
    }
    if (req.url === "/same") {  // the same answer every time, but no replay marker
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"ok": true}');
      return;
    }
    orders += 1;
    res.writeHead(201, { "content-type": "application/json" });
    res.end(JSON.stringify({ order: orders }));
  });
});
server.listen(0, "127.0.0.1", () => { console.log(server.address().port); });
"""


class RawUpstream:
    def __init__(self, base: str) -> None:
        self.base = base

    def requests(self) -> list[dict[str, Any]]:
        """Every request the upstream received so far, in order."""
        log: list[dict[str, Any]] = httpx.get(f"{self.base}/__requests", timeout=10).json()
        return log


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawUpstream]:
    """The Node.js upstream, on an ephemeral port it prints once listening."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the raw upstream is written in JavaScript")
    script = tmp_path_factory.mktemp("raw") / "upstream.js"
    script.write_text(RAW_UPSTREAM_JS)
    proc = subprocess.Popen([node, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield RawUpstream(f"http://127.0.0.1:{port}")
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def check(*args: str) -> Result:
    return CliRunner().invoke(main, ["check", *args])


def scorecard(result: Result) -> dict[str, Any]:
    card: dict[str, Any] = json.loads(result.stdout)
    return card


def probes(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in card["probes"]}


ANNOUNCED = sum(step.requests for step in plan(Target("http://x/", concurrency=10)))


# -- the raw upstream: no idempotency at all ---------------------------------------------------


def test_raw_upstream_fails_replay_and_exits_1(raw: RawUpstream) -> None:
    """An API that ignores keys fails replay, concurrent, mismatch and malformed-key; exit 1."""
    result = check(f"{raw.base}/orders", "--json", BODY, "--yes", "--format", "json")
    assert result.exit_code == 1, result.output
    card = scorecard(result)
    assert card["url"] == f"{raw.base}/orders"
    assert card["passed"] is False
    by_name = probes(card)
    assert {"replay", "concurrent", "mismatch", "malformed-key"} <= set(by_name)
    for name in ("replay", "concurrent", "mismatch", "malformed-key"):
        assert by_name[name]["passed"] is False, by_name[name]
    assert "executed again" in by_name["replay"]["detail"]
    assert "10 executed" in by_name["concurrent"]["detail"]
    assert "executed it (201)" in by_name["mismatch"]["detail"]
    assert by_name["missing-key"]["passed"] is True  # an optional key is a documented policy
    assert by_name["retry-after"] == {
        "name": "retry-after",
        "passed": True,
        "detail": by_name["retry-after"]["detail"],
        "observed": False,
    }
    assert by_name["problem+json"]["observed"] is False


def test_sends_only_what_it_announces_to_the_url_given(raw: RawUpstream) -> None:
    """The upstream receives exactly the announced number of requests, all to the one URL."""
    before = len(raw.requests())
    result = check(f"{raw.base}/orders?x=1", "--json", BODY, "--yes", "--format", "json")
    assert result.exit_code == 1, result.output
    received = raw.requests()[before:]
    assert len(received) == ANNOUNCED == scorecard(result)["requests"]
    assert {(r["method"], r["url"]) for r in received} == {("POST", "/orders?x=1")}
    keys = Counter(r["key"] for r in received)
    assert keys[None] == 2  # missing-key
    assert sum(n for key, n in keys.items() if key and key.endswith('-concurrent"')) == 10
    mismatch = [r["body"] for r in received if r["key"] and r["key"].endswith('-mismatch"')]
    assert len(mismatch) == 2
    assert json.loads(mismatch[0]) == {"amount": 5}
    assert json.loads(mismatch[1]) != {"amount": 5}  # another document, not a reformatting
    assert "Keys start with idempo-check-" in result.stderr
    assert f"will send {ANNOUNCED} POST requests to {raw.base}/orders?x=1" in result.stderr


def test_same_body_without_the_marker_fails_replay(raw: RawUpstream) -> None:
    """Identical answers are not enough: without Idempotent-Replayed a client cannot tell."""
    result = check(f"{raw.base}/same", "--yes", "--format", "json")
    assert result.exit_code == 1, result.output
    replay = probes(scorecard(result))["replay"]
    assert replay["passed"] is False
    assert "no 'Idempotent-Replayed: true'" in replay["detail"]


def test_table_is_the_default_format(raw: RawUpstream) -> None:
    """Without --format the scorecard is a table naming each probe and its result."""
    result = check(f"{raw.base}/orders", "--json", BODY, "--yes", "--no-color")
    assert result.exit_code == 1, result.output
    for name in ("replay", "concurrent", "mismatch", "malformed-key", "missing-key"):
        assert name in result.stdout
    assert "FAIL" in result.stdout
    assert "probes failed" in result.stdout


# -- could not run: exit 2 ---------------------------------------------------------------------


def test_no_terminal_and_no_yes_sends_nothing(raw: RawUpstream) -> None:
    """Without a terminal to confirm on and without --yes, it refuses (exit 2), sending nothing."""
    before = len(raw.requests())
    result = check(f"{raw.base}/orders", "--json", BODY, "--format", "json")
    assert result.exit_code == 2
    assert "pass --yes" in result.stderr
    assert "real effects" in result.stderr  # the plan was still shown
    assert result.stdout == ""
    assert len(raw.requests()) == before


def test_unreachable_exits_2() -> None:
    """A refused connection is a clear one-line error and exit 2."""
    result = check("http://127.0.0.1:1/orders", "--yes", "--format", "json")
    assert result.exit_code == 2
    assert "cannot reach http://127.0.0.1:1/orders" in result.stderr
    assert "(1 request sent)" in result.stderr
    assert "Traceback" not in result.output


def test_no_answer_in_time_exits_2(raw: RawUpstream) -> None:
    """An API that does not answer within --timeout: exit 2, saying so."""
    result = check(f"{raw.base}/hang", "--yes", "--timeout", "0.3")
    assert result.exit_code == 2
    assert f"no answer from {raw.base}/hang within 0.3s" in result.stderr


def test_refused_request_stops_after_one(raw: RawUpstream) -> None:
    """If the request itself is refused (401 here), nothing is judged and nothing more sent."""
    before = len(raw.requests())
    result = check(f"{raw.base}/denied", "--yes", "--format", "json")
    assert result.exit_code == 2
    assert "answered 401" in result.stderr
    assert "-H" in result.stderr
    assert len(raw.requests()) == before + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://127.0.0.1/x"], "http:// or https://"),
        (["http://127.0.0.1:1/x", "--json", "{nope"], "not JSON"),
        (["http://127.0.0.1:1/x", "-H", "Idempotency-Key: mine"], "sets Idempotency-Key itself"),
        (["http://127.0.0.1:1/x", "-H", "no colon"], "use 'Name: value'"),
        (["http://127.0.0.1:1/x", "--json", "{}", "--data", "x"], "not both"),
        (["http://127.0.0.1:1/x", "--concurrency", "1000"], "--concurrency"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    """A bad URL, body, header or bound is a usage error (exit 2) before anything is sent."""
    result = check(*args, "--yes")
    assert result.exit_code == 2
    assert message in result.stderr


# -- on a terminal -----------------------------------------------------------------------------


@contextlib.contextmanager
def on_terminal(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``idempo check`` run as a user would, its stdin, stdout and stderr on a pseudo-terminal."""
    master, slave = os.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [IDEMPO, "check", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    try:
        yield proc, master
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        os.close(master)


def read_until(master: int, text: bytes, seen: bytearray) -> None:
    """Read the terminal until ``text`` shows (or fail after a generous bound)."""
    deadline = time.monotonic() + 30
    while text not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{text!r} never came; got {bytes(seen)!r}"
        ready, _, _ = select.select([master], [], [], remaining)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            assert chunk, f"{text!r} never came; got {bytes(seen)!r}"
            seen += chunk


def read_rest(master: int, seen: bytearray) -> None:
    with contextlib.suppress(OSError):
        while chunk := os.read(master, 4096):
            seen += chunk


def test_terminal_asks_first_and_a_no_sends_nothing(raw: RawUpstream) -> None:
    """On a terminal it shows the plan and asks; answering no sends nothing and exits 2."""
    before = len(raw.requests())
    seen = bytearray()
    with on_terminal(f"{raw.base}/orders", "--json", BODY) as (proc, master):
        read_until(master, b"Send them? [y/N]", seen)
        assert b"real effects" in seen
        os.write(master, b"n\n")
        read_until(master, b"nothing was sent", seen)
        assert proc.wait(30) == 2
    assert len(raw.requests()) == before


def test_terminal_end_of_input_at_the_prompt_is_a_no(raw: RawUpstream) -> None:
    """Ctrl-D at the prompt declines like a no: exit 2, nothing sent (not click's exit 1)."""
    before = len(raw.requests())
    seen = bytearray()
    with on_terminal(f"{raw.base}/orders", "--json", BODY) as (proc, master):
        read_until(master, b"Send them?", seen)
        os.write(master, b"\x04")
        read_until(master, b"nothing was sent", seen)
        assert proc.wait(30) == 2
    assert len(raw.requests()) == before


def test_terminal_yes_runs_the_probes(raw: RawUpstream) -> None:
    """Answering yes on the terminal runs the check and prints the table."""
    before = len(raw.requests())
    seen = bytearray()
    with on_terminal(f"{raw.base}/orders", "--json", BODY) as (proc, master):
        read_until(master, b"Send them?", seen)
        os.write(master, b"y\n")
        read_until(master, b"probes failed", seen)
        read_rest(master, seen)
        assert proc.wait(30) == 1
    assert b"replay" in seen
    assert len(raw.requests()) == before + ANNOUNCED


# -- behind idempo's middleware ----------------------------------------------------------------

STORES = [
    pytest.param("memory", marks=pytest.mark.memory),
    pytest.param("redis", marks=pytest.mark.redis),
]


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_app_behind_the_middleware_passes(adapter: str, kind: str, tmp_path: Path) -> None:
    """The test app behind each adapter's middleware passes every probe, and its handler runs
    only as often as the plan says an API that honours keys may (5 times)."""
    store = StoreSpec.of(kind, tmp_path)
    try:
        with serve_http(adapter, store, lease=5) as http:
            http.fresh()
            result = check(f"{http.base}/charges", "--json", BODY, "--yes", "--format", "json")
            executions = sum(http.effects.by_key.values())
    finally:
        store.cleanup()
    assert result.exit_code == 0, result.output
    card = scorecard(result)
    assert card["passed"] is True
    assert all(p["passed"] for p in card["probes"]), card
    by_name = probes(card)
    assert by_name["mismatch"]["detail"] == "the key reused with another body: 422"
    assert "runs without a key" in by_name["missing-key"]["detail"]
    assert by_name["problem+json"]["observed"] is True
    assert executions == sum(step.executes for step in plan(Target("http://x/")))


def test_required_key_policy_passes_missing_key() -> None:
    """A route that requires the key answers 400 without one: the documented policy, a pass."""
    store = StoreSpec.of("memory", Path("."))
    with serve_http("asgi", store, required=True) as http:
        http.fresh()
        result = check(f"{http.base}/charges", "--json", BODY, "--yes", "--format", "json")
    assert result.exit_code == 0, result.output
    missing = probes(scorecard(result))["missing-key"]
    assert missing == {
        "name": "missing-key",
        "passed": True,
        "detail": "the key is required: 400",
        "observed": True,
    }


def held_app(duplicates: int) -> Any:
    """An app behind the ASGI middleware whose handler, for the concurrent probe's key, holds
    until the middleware has answered the ``duplicates`` others (so they certainly got 409)."""
    answered: Counter[str] = Counter()
    done: dict[str, asyncio.Event] = {}

    def event(key: str) -> asyncio.Event:
        return done.setdefault(key, asyncio.Event())

    async def charge(request: Request) -> Response:
        key = request.headers.get("idempotency-key", "")
        if key.endswith('-concurrent"'):
            await asyncio.wait_for(event(key).wait(), 10)
        return JSONResponse({"charged": (await request.json())["amount"]}, status_code=201)

    inner = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
    inner.add_middleware(idempo.asgi.IdempotencyMiddleware, store=AsyncMemoryStore(MemoryStore()))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()

        async def counting_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered[key] += 1
                if answered[key] >= duplicates:
                    event(key).set()

        await inner(scope, receive, counting_send)

    return app


def test_duplicates_in_flight_get_409_with_retry_after() -> None:
    """Duplicates arriving while the first runs get 409 with Retry-After, as problem+json."""
    with serve_asgi(held_app(duplicates=4)) as base:
        result = check(
            f"{base}/charges", "--json", BODY, "--concurrency", "5", "--yes", "--format", "json"
        )
    assert result.exit_code == 0, result.output
    by_name = probes(scorecard(result))
    assert by_name["concurrent"]["detail"] == ("5 at once: 1 executed, 0 replayed, 4 answered 409")
    assert by_name["retry-after"] == {
        "name": "retry-after",
        "passed": True,
        "detail": "every 409 (4) has Retry-After",
        "observed": True,
    }
    assert by_name["problem+json"]["passed"] is True
    assert by_name["problem+json"]["detail"] == "every refusal (7) is problem+json with a type"


# -- behind the gateway ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def gateway_in_front_of(upstream: str, tmp_path: Path) -> Iterator[str]:
    """``idempo gateway`` in front of ``upstream`` on a SQLite store, once /readyz answers."""
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    store = f"sqlite:///{tmp_path / 'gateway.db'}"
    args = ["gateway", "--upstream", upstream, "--store", store]
    proc = subprocess.Popen([IDEMPO, *args, "--listen", listen, "--admin", admin])
    try:
        deadline = time.monotonic() + 30
        while True:  # another process: nothing to wait on but its listener
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "the gateway never became ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://{admin}/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(0.05)
        yield f"http://{listen}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_gateway_in_front_of_the_raw_upstream_passes(raw: RawUpstream, tmp_path: Path) -> None:
    """The raw Node.js upstream that fails alone passes every probe behind idempo gateway."""
    pytest.importorskip("idempo.gateway", reason="idempo gateway is not on this branch yet")
    before = len(raw.requests())
    with gateway_in_front_of(raw.base, tmp_path) as base:
        result = check(f"{base}/orders", "--json", BODY, "--yes", "--format", "json")
    assert result.exit_code == 0, result.output
    assert all(p["passed"] for p in scorecard(result)["probes"])
    executed = raw.requests()[before:]
    assert len(executed) == sum(step.executes for step in plan(Target("http://x/")))


# -- the parts, without a server ---------------------------------------------------------------


def test_other_body_is_another_document() -> None:
    """The mismatch probe's body differs in content, not only in formatting."""
    obj = Target("http://x/", body=b'{"a": 1}', content_type="application/json")
    assert json.loads(obj.other_body()[0]) == {"a": 1, "idempo_check": "another body"}
    listed = Target("http://x/", body=b"[1]", content_type="application/json")
    assert json.loads(listed.other_body()[0]) == {"idempo_check": "another body", "value": [1]}
    raw = Target("http://x/", body=b"abc", content_type="text/plain")
    assert raw.other_body()[0] != b"abc"
    assert raw.other_body()[1] == "text/plain"
    empty = Target("http://x/")
    assert empty.other_body() == (b'{"idempo_check": "another body"}', "application/json")


def test_keys_are_strings_unless_bare() -> None:
    """Keys go as RFC 9651 Strings (the IETF draft), or as bare tokens with --bare-key."""
    assert Target("http://x/").key("k") == '"k"'
    assert Target("http://x/", bare_keys=True).key("k") == "k"


def test_replay_marker_is_read_case_insensitively() -> None:
    """``Idempotent-Replayed: True`` counts as the marker; any other value does not."""
    assert Answer(201, httpx.Headers({"Idempotent-Replayed": "True"}), b"").replayed
    assert not Answer(201, httpx.Headers({"Idempotent-Replayed": "yes"}), b"").replayed


def test_the_command_line_does_not_load_httpx_or_rich() -> None:
    """``idempo`` starts without the checker's client: httpx and rich load only when it runs."""
    code = "import sys, idempo.cli; print(sorted({'httpx', 'rich'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
