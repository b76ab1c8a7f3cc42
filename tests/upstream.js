// A test upstream in another language than the gateway: plain Node `http`, no packages.
// It counts executions per Idempotency-Key, so tests can tell a replay from a re-run.
//   node tests/upstream.js PORT     prints "listening PORT" once it accepts connections.
"use strict";
const http = require("http");

const port = Number(process.argv[2] || 0);
const counts = new Map(); // key -> executions
const held = new Map(); // key -> [resolve] of requests waiting for /release
const arrivals = new Map(); // key -> [resolve] of /arrived waiters
let total = 0;
let delayMs = 0;

function json(res, status, body, headers = {}) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { "content-type": "application/json", "content-length": data.length, ...headers });
  res.end(data);
}

function arrive(key) {
  for (const resolve of arrivals.get(key) || []) resolve();
  arrivals.delete(key);
}

function execute(req, body) {
  const key = req.headers["idempotency-key"] || "";
  const n = (counts.get(key) || 0) + 1;
  counts.set(key, n);
  total += 1;
  return { key, n, total, method: req.method, path: req.url, body: body.toString("utf8") };
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const url = new URL(req.url, "http://x");
    const p = url.pathname;
    if (p === "/_stats") return json(res, 200, { total, counts: Object.fromEntries(counts) });
    if (p === "/_delay") { delayMs = Number(url.searchParams.get("ms")); return json(res, 200, { delayMs }); }
    if (p === "/_release") {
      const key = url.searchParams.get("key");
      const waiting = held.get(key) || [];
      held.delete(key);
      waiting.forEach((resolve) => resolve());
      return json(res, 200, { released: waiting.length });
    }
    if (p === "/_arrived") {
      // Answers once a request with this key reached /hold (at once if one already has).
      const key = url.searchParams.get("key");
      if (held.has(key) || counts.has(key)) return json(res, 200, { arrived: true });
      const list = arrivals.get(key) || [];
      list.push(() => json(res, 200, { arrived: true }));
      arrivals.set(key, list);
      return;
    }
    if (p === "/echo") {
      const out = execute(req, body);
      return json(res, 200, { ...out, headers: req.headers });
    }
    if (p.startsWith("/status/")) {
      const out = execute(req, body);
      return json(res, Number(p.split("/")[2]), out);
    }
    if (p === "/hold") {
      // Executes, then answers only once /_release?key= is called: a request "still running".
      const out = execute(req, body);
      const list = held.get(out.key) || [];
      list.push(() => json(res, 201, out));
      held.set(out.key, list);
      arrive(out.key);
      return;
    }
    if (p === "/big") {
      const size = Number(url.searchParams.get("bytes"));
      execute(req, body);
      res.writeHead(200, { "content-type": "application/octet-stream" }); // chunked: no length
      const piece = Buffer.alloc(16384, 120);
      let left = size;
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, piece.length);
          left -= n;
          if (!res.write(piece.subarray(0, n))) return res.once("drain", pump);
        }
        res.end();
      };
      return pump();
    }
    if (p === "/headers") {
      execute(req, body);
      res.writeHead(200, { "x-big": "y".repeat(Number(url.searchParams.get("bytes"))), "content-length": 0 });
      return res.end();
    }
    // Anything else: an order, created.
    const answer = () => {
      const out = execute(req, body);
      json(res, 201, out, {
        "set-cookie": "sid=first-client; Path=/",
        "x-order": String(out.total),
        "connection": "keep-alive, x-hop",
        "x-hop": "per-connection",
      });
    };
    if (delayMs > 0) setTimeout(answer, delayMs);
    else answer();
  });
});
server.keepAliveTimeout = 60000;
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on("SIGTERM", () => process.exit(0));
