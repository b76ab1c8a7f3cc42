-- POST /charges with one fixed Idempotency-Key on every request: after the first, every
-- request is a replay. bench_http.py sends that first request itself before wrk starts.
--   wrk -t1 -c16 -d10s -s bench/wrk/replay.lua http://127.0.0.1:PORT/charges -- KEY
-- The request is built once (no request() function), as wrk does for a static request.

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")

function init(args)
  wrk.method = "POST"
  wrk.body = '{"amount":1000,"currency":"eur"}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Idempotency-Key"] = args[1] or "replay-key"
end
