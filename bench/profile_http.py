"""The in-process hot path on the memory store, without a network: for profilers and callgrind.

    python bench/profile_http.py asgi-new N        # N ASGI requests, each with a new key
    python bench/profile_http.py asgi-replay N     # N replays of one key
    python bench/profile_http.py wsgi-new N        # the same through the WSGI middleware
    python bench/profile_http.py wsgi-replay N
    python bench/profile_http.py decorator N       # N pairs: a new key, then its replay
    python bench/profile_http.py asgi-new N --cprofile    # cProfile, sorted by tottime

Instruction counts: run it under ``valgrind --tool=callgrind`` with N and 2N and take the
difference over N (start-up cancels): ``bench/callgrind_http.sh`` does that for every case.

The ASGI app is a plain ASGI callable answering 201 with a small JSON body (as
``bench/http_app.py`` does, without Starlette), driven by a hand-made scope/receive/send loop on
one event loop. The WSGI app answers the same through ``idempo.wsgi``.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import sys
from collections.abc import Callable
from typing import Any

from idempo import Idempotency
from idempo.asgi import IdempotencyMiddleware
from idempo.wsgi import IdempotencyMiddleware as WsgiIdempotencyMiddleware

BODY = b'{"amount": 1000, "currency": "eur", "customer": "cus_1"}'
ANSWER = b'{"id":"ch_1","object":"charge","amount":1000,"currency":"eur","size":56}'


async def _app(scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "http.request"
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                (b"content-length", str(len(ANSWER)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def _scope(key: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/charges",
        "raw_path": b"/charges",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"idempotency-key", key),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


def asgi_runner(replay: bool) -> Callable[[int], None]:
    mw = IdempotencyMiddleware(_app, store="memory://")
    request = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run(n: int) -> None:
        if replay:
            await mw(_scope(b'"replayed"'), receive, send)
            for _ in range(n):
                await mw(_scope(b'"replayed"'), receive, send)
        else:
            for i in range(n):
                await mw(_scope(b'"k-%d"' % i), receive, send)
        assert set(statuses) == {201}, set(statuses)

    return lambda n: asyncio.run(run(n))


def wsgi_runner(replay: bool) -> Callable[[int], None]:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response(
            "201 Created",
            [("Content-Length", str(len(ANSWER))), ("Content-Type", "application/json")],
        )
        return [ANSWER]

    mw = WsgiIdempotencyMiddleware(app, store="memory://")

    def call(key: str) -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/charges",
            "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(BODY)),
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_USER_AGENT": "wrk",
            "HTTP_IDEMPOTENCY_KEY": key,
            "wsgi.input": io.BytesIO(BODY),
            "wsgi.url_scheme": "http",
        }
        status: list[str] = []
        body = mw(environ, lambda s, h, exc_info=None: status.append(s))
        try:
            b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        assert status[0].startswith("201"), status

    def run(n: int) -> None:
        if replay:
            call('"replayed"')
            for _ in range(n):
                call('"replayed"')
        else:
            for i in range(n):
                call(f'"k-{i}"')

    return run


def decorator_runner() -> Callable[[int], None]:
    idem = Idempotency("memory://", ttl=600, lease=30)

    @idem.idempotent(key=lambda order_id, amount: order_id, name="bench")
    def charge(order_id: str, amount: int) -> dict[str, int]:
        return {"amount": amount}

    def run(n: int) -> None:
        for i in range(n):
            charge(f"o-{i}", 1)
            charge(f"o-{i}", 1)

    return run


CASES: dict[str, Callable[[], Callable[[int], None]]] = {
    "asgi-new": lambda: asgi_runner(False),
    "asgi-replay": lambda: asgi_runner(True),
    "wsgi-new": lambda: wsgi_runner(False),
    "wsgi-replay": lambda: wsgi_runner(True),
    "decorator": decorator_runner,
}


def main(argv: list[str]) -> int:
    case, n = argv[0], int(argv[1])
    run = CASES[case]()
    if "--cprofile" in argv:
        profiler = cProfile.Profile()
        profiler.enable()
        run(n)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(35)
        print(out.getvalue())
    else:
        run(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
