-- POST /charges with a new Idempotency-Key on every request: "<seed>-<thread>-<counter>".
--   wrk -t1 -c16 -d10s -s bench/wrk/new_keys.lua http://127.0.0.1:PORT/charges -- SEED
-- SEED (random, from bench_http.py) keeps keys unique across runs; the thread number keeps
-- them unique across wrk threads, each of which has its own Lua state and counter.

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")

local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_number", next_thread)
end

local prefix
local counter = 0

function init(args)
  local seed = args[1] or string.format("%d%06d", os.time(), math.random(0, 999999))
  prefix = "new-" .. seed .. "-" .. tostring(thread_number or 0) .. "-"
  wrk.method = "POST"
  wrk.body = '{"amount":1000,"currency":"eur"}'
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. counter
  return wrk.format()
end
