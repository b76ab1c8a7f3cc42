"""A fake payment provider for the atomic-phases crash tests: it dedupes by Idempotency-Key and
counts the charges it really made, per key.

    python -m tests.fake_provider     # prints its port, then serves on 127.0.0.1 until killed
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

charges: dict[str, dict[str, str]] = {}
made: dict[str, int] = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        key = self.headers.get("Idempotency-Key", "")
        with lock:
            if key not in charges:  # a new key charges the card; a repeat gets the same charge
                charges[key] = {"charge_id": f"ch_{uuid.uuid4().hex[:10]}"}
                made[key] = made.get(key, 0) + 1
            self._reply(200, charges[key])

    def do_GET(self) -> None:
        key = parse_qs(urlsplit(self.path).query).get("key", [""])[0]
        with lock:
            self._reply(200, {"charges": made.get(key, 0)})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
